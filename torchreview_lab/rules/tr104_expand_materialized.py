from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._torch import assigned_name, dotted_name, enclosing_function, method_call, walk_own
from .base import Invalid, Rule

_COPYING = {"contiguous", "clone", "copy"}


class ExpandMaterialized(Rule):
    """A broadcast view is turned into a full copy (``expand(...).contiguous()``, ``repeat``).

    What it does:
        Flags ``x.expand(...).contiguous()`` / ``.clone()``, and ``x.repeat(...)`` whose result is
        used directly in an element-wise arithmetic operation, where broadcasting would do. A copy that
        is then written in place (``m = mask.expand(...).clone(); m[0] = False``) needs its memory.

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
        "def band(mask, n, w):\n    allowed = mask.expand(n, w, 2 * w).clone()\n    allowed[0, :, :w] = False\n    return allowed\n",
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
                "expand", "expand_as") and not self._written_later(node):
            self._report(node, f"`{self.code_for(node)}` copies an expanded (stride-0) view into a full tensor.",
                         self.code_for(recv))
        elif name == "repeat" and node.args and not any(q.startswith(("itertools", "numpy")) for q in self.qnames(node.func)):
            p = self.parent(node)
            if isinstance(p, cst.BinaryOperation) and isinstance(p.operator, (cst.Add, cst.Subtract, cst.Multiply, cst.Divide)):
                self._report(node, f"`{self.code_for(node)}` copies `{self.code_for(recv)}` only to combine it "
                                   f"element-wise, which broadcasting does without a copy.", self.code_for(recv))

    def _written_later(self, node: cst.Call) -> bool:
        """The copy is bound to a name that is then written in place (``m[0] = False``, ``m.masked_fill_``,
        ``m |= ...``): a view cannot take the write, so the copy is needed."""
        name = assigned_name(self, node)
        scope = enclosing_function(self, node) or self.ctx.module
        if name is None:
            return False
        for n in walk_own(scope):
            if isinstance(n, cst.Assign) and any(isinstance(t.target, cst.Subscript) and dotted_name(t.target.value) == name
                                                 for t in n.targets):
                return True
            if isinstance(n, cst.AugAssign) and dotted_name(n.target) == name:
                return True
            mc = method_call(n)
            if mc and mc[1].endswith("_") and not mc[1].startswith("_") and dotted_name(mc[0]) == name:
                return True
        return False

    def _report(self, node, problem: str, after: str) -> None:
        self.report(
            node, problem=problem,
            impact="The copy allocates the full broadcast size (e.g. B*T*C) and grows with the sequence length.",
            fix=Fix(before=self.code_for(node), after=f"{after}  # rely on broadcasting; keep the view"),
        )
