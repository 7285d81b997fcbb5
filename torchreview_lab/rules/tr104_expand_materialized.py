from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._torch import method_call
from .base import Invalid, Rule

_COPYING = {"contiguous", "clone", "copy"}


class ExpandMaterialized(Rule):
    """A broadcast view is turned into a full copy (``expand(...).contiguous()``, ``repeat``).

    What it does:
        Flags ``x.expand(...).contiguous()`` / ``.clone()``, and ``x.repeat(...)`` whose result is
        used directly in an element-wise arithmetic operation, where broadcasting would do.

    Why is this bad:
        ``expand`` is free (stride 0), but ``contiguous()``/``clone()``/``repeat`` allocate the
        full expanded tensor: repeating a (B, 1, C) tensor over T positions costs B*T*C memory
        and bandwidth that broadcasting avoids, and it grows with the sequence length.

    Example:
        bias = b[:, None, :].repeat(1, T, 1)
        y = x + bias

    Use instead:
        y = x + b[:, None, :]          # broadcasting: no copy
    """

    code = "TR104"
    title = "Broadcast materialized by repeat/expand+contiguous"
    category = "memory-complexity"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "def f(x, b):\n    return x + b[:, None, :]\n",
        "def f(b, T):\n    return b.expand(-1, T, -1)\n",
        "def f(b, T):\n    idx = b.repeat(1, T)\n    return idx\n",
    ]
    INVALID = [
        Invalid("def f(b, T):\n    return b.expand(-1, T, -1).contiguous()\n", line=2),
        Invalid("def f(x, b, T):\n    return x + b[:, None, :].repeat(1, T, 1)\n", line=2),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if not mc:
            return
        recv, name = mc
        if name in _COPYING and isinstance(recv, cst.Call) and method_call(recv) and method_call(recv)[1] in (
                "expand", "expand_as"):
            self._report(node, f"`{self.code_for(node)}` copies an expanded (stride-0) view into a full tensor.",
                         self.code_for(recv))
        elif name == "repeat" and node.args and not any(q.startswith(("itertools", "numpy")) for q in self.qnames(node.func)):
            p = self.parent(node)
            if isinstance(p, cst.BinaryOperation) and isinstance(p.operator, (cst.Add, cst.Subtract, cst.Multiply, cst.Divide)):
                self._report(node, f"`{self.code_for(node)}` copies `{self.code_for(recv)}` only to combine it "
                                   f"element-wise, which broadcasting does without a copy.", self.code_for(recv))

    def _report(self, node, problem: str, after: str) -> None:
        self.report(
            node, problem=problem,
            impact="The copy allocates the full broadcast size (e.g. B*T*C) and grows with the sequence length.",
            fix=Fix(before=self.code_for(node), after=f"{after}  # rely on broadcasting; keep the view"),
        )
