from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._flow import is_centring_call
from ._torch import assigned_values, enclosing_function, is_method_call, method_call, positional, torch_function, walk
from .base import Invalid, Rule


class CentringOnePathOnly(Rule):
    """One path cumsums zero-centred values, a sibling path cumsums the same quantity raw.

    What it does:
        Collects the prefix sums (``cumsum``) of each function in a module and the quantity they
        accumulate. When one function centres a quantity first (``x - x.mean(...)``) and another
        function cumsums the same quantity raw, the raw site is reported.

    Why is this bad:
        The two paths are meant to agree (a streaming and an exact implementation, a training and a
        decoding path), but only one keeps float32 precision over long sequences: at T = 400,000
        their window sums differ by ~0.2 while tests on short inputs show them equal. Comparisons
        and cached results drift apart silently.

    Example:
        def exact(x):   c = torch.cumsum(x - x.mean(1, keepdim=True), 1)
        def stream(x):  c = torch.cumsum(x, 1)

    Use instead:
        Centre on both paths (one shared helper), adding back ``k * mean`` where absolute window
        sums are needed.
    """

    code = "TR903"
    title = "Zero-centring applied on one of two paths only"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef a(x):\n    return torch.cumsum(x - x.mean(1, keepdim=True), 1)\ndef b(x):\n    return torch.cumsum(x - x.mean(1, keepdim=True), 1)\n",
        "import torch\ndef a(x):\n    return torch.cumsum(x - x.mean(1, keepdim=True), 1)\ndef b(lengths):\n    return torch.cumsum(lengths, 0)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef exact(scores):\n    c = torch.cumsum(scores - scores.mean(1, keepdim=True), 1)\n    return c\n"
                "def stream(scores):\n    c = torch.cumsum(scores, 1)\n    return c\n", line=6),
        Invalid("def a(x):\n    xc = x - x.mean(-1, keepdim=True)\n    return xc.cumsum(-1)\ndef b(x):\n    return x.cumsum(-1)\n", line=5),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        self._sites: List[Tuple[str, bool, str, cst.Call]] = []

    def visit_Call(self, node: cst.Call) -> None:
        if torch_function(self, node) == "cumsum":
            pos = positional(node)
            arg = pos[0].value if pos else None
        elif is_method_call(self, node, {"cumsum"}):
            arg = method_call(node)[0]
        else:
            return
        if arg is None:
            return
        fn = enclosing_function(self, node)
        q = self._quantity(arg, fn)
        if q is not None:
            self._sites.append((q[0], q[1], fn.name.value if fn is not None else "<module>", node))

    def leave_Module(self, original_node: cst.Module) -> None:
        centred: Dict[str, str] = {q: f for q, c, f, _ in self._sites if c}
        for q, c, f, node in self._sites:
            if c or q not in centred or centred[q] == f:
                continue
            self.report(
                node,
                problem=(f"`{self.code_for(node)}` in `{f}` accumulates `{q}` raw, while `{centred[q]}` zero-centres "
                         f"the same quantity before its cumsum."),
                impact=("The two paths disagree by float32 rounding that grows with T (~0.2 in window sums at "
                        "T = 400,000), while short tests show them equal."),
                fix=Fix(before=self.code_for(node), after=f"centre `{q}` here too (share one helper with `{centred[q]}`)"),
            )

    def _quantity(self, arg, fn, depth: int = 0) -> Optional[Tuple[str, bool]]:
        """(name of the accumulated quantity, centred?)"""
        if isinstance(arg, cst.BinaryOperation) and isinstance(arg.operator, cst.Subtract) and isinstance(arg.left, cst.Name):
            if any(is_centring_call(self, c) for c in walk(arg.right, cst.Call)):
                return arg.left.value, True
            return None
        if isinstance(arg, cst.Name):
            vals = assigned_values(self, fn, arg.value)
            if len(vals) == 1 and depth < 2:
                inner = self._quantity(vals[0], fn, depth + 1)
                if inner is not None:
                    return inner
            if not vals:
                return arg.value, False
        return None
