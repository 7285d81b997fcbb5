from __future__ import annotations

from typing import Dict, Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._syncs import sync_method
from ._torch import in_loop_body, module_functions, walk_own
from .base import Invalid, Rule


class SyncViaHelperInLoop(Rule):
    """A helper that forces a host-device sync is called on every loop step.

    What it does:
        Follows calls into the document's own functions (across notebook cells): when a loop body
        calls a function that, directly or through the functions it calls, runs ``.item()``,
        ``.tolist()``, ``.numpy()``, ``.cpu()`` or ``nonzero``, the call site is reported. The sync
        itself, seen inside the helper, is not in a loop, so no lexical rule can see it.

    Why is this bad:
        On CUDA each call blocks the host until the GPU queue drains and copies a value back: once
        per step, the GPU idles between steps. Moving the helper into another cell hides the cost
        but does not remove it.

    Example:
        def log_norm(h):
            return h.norm().item()

        for step in range(steps):
            norms.append(log_norm(h))

    Use instead:
        Return tensors from the helper (``h.norm().detach()``), collect them on the device, and
        convert once after the loop (``torch.stack(norms).tolist()``).
    """

    code = "TR406"
    title = "Helper that syncs with the host called once per loop step"
    category = "performance-patterns"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "def norm(h):\n    return h.norm().detach()\n\ndef run(hs):\n    return [norm(h) for h in hs]\n",
        "def norm(h):\n    return h.norm().item()\n\ndef run(h):\n    return norm(h)\n",
        "def norm(h):\n    return h.norm().item()\n\ndef norm2(h):\n    return norm(h)\n",
    ]
    INVALID = [
        Invalid("def norm(h):\n    return h.norm().item()\n\ndef run(hs):\n    out = []\n    for h in hs:\n"
                "        out.append(norm(h))\n    return out\n", line=7),
        Invalid("def inner(x):\n    return x.cpu().numpy()\n\ndef outer(x):\n    return inner(x) * 2\n\n"
                "for step in range(10):\n    v = outer(step)\n", line=8),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        self._functions = module_functions(self)
        self._memo: Dict[str, Optional[Tuple[str, str]]] = {}

    def _syncs(self, name: str, depth: int = 0) -> Optional[Tuple[str, str]]:
        """(function, call text) of a sync reached from ``name``, or None."""
        if name in self._memo:
            return self._memo[name]
        self._memo[name] = None  # recursion guard
        fn = self._functions.get(name)
        found = None
        if fn is not None and depth < 5:
            for call in walk_own(fn.body, cst.Call):
                if sync_method(self, call):
                    found = (name, self.code_for(call))
                    break
                callee = call.func.value if isinstance(call.func, cst.Name) else None
                if callee in self._functions and callee != name:
                    found = self._syncs(callee, depth + 1)
                    if found:
                        break
        self._memo[name] = found
        return found

    def visit_Call(self, node: cst.Call) -> None:
        if not isinstance(node.func, cst.Name) or node.func.value not in self._functions:
            return
        if not in_loop_body(self, node):
            return
        hit = self._syncs(node.func.value)
        if hit is None:
            return
        where, call = hit
        via = "" if where == node.func.value else f" (through `{where}`)"
        self.report(
            node,
            problem=(f"`{node.func.value}(...)` is called on every loop step and forces a host-device sync "
                     f"inside it{via}: `{call}`."),
            impact=("Each step blocks the host until the GPU queue drains and copies a value back; the GPU idles "
                    "between steps, and the cost is invisible where the loop is written."),
            fix=Fix(before=self.code_for(node),
                    after=f"# make `{where}` return a tensor (drop `.item()`/`.cpu()`), collect on the device,\n"
                          f"# and convert once after the loop"),
            evidence={"helper": where, "sync": call},
        )
