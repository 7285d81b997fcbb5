from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import assigned_values, enclosing_function, kwarg, method_call, positional, torch_function
from .base import Invalid, Rule

_LOW = {"half": "float16", "bfloat16": "bfloat16"}
_LOW_DTYPES = {"torch.float16", "torch.half", "torch.bfloat16"}
_LONG_REDUCTIONS = {"sum", "cumsum", "prod", "cumprod", "mean", "var", "std", "nansum"}


class HalfPrecisionReduction(Rule):
    """A long sum or prefix sum accumulates in float16/bfloat16.

    What it does:
        Flags ``x.half().sum()``, ``x.to(torch.bfloat16).cumsum(1)``, ``torch.cumsum(x.half(), 1)``
        and reductions on tensors created with ``dtype=torch.float16``, when no wider ``dtype=``
        is passed to the reduction.

    Why is this bad:
        float16 has 11 significant bits (bfloat16: 8): once a running sum reaches 2048 (bf16: 256),
        adding 1 changes nothing. Prefix sums over long sequences stall and window differences
        become pure rounding error; float16 also overflows at 65,504.

    Example:
        c = x.half().cumsum(dim=1)

    Use instead:
        c = x.half().cumsum(dim=1, dtype=torch.float32)   # accumulate wide, store narrow if needed
    """

    code = "TR207"
    title = "Long reduction accumulated in half precision"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef f(x):\n    return x.half().cumsum(1, dtype=torch.float32)\n",
        "import torch\ndef f(x):\n    return x.float().sum()\n",
        "import torch\ndef f(x):\n    return x.half() * 2\n",
    ]
    INVALID = [
        Invalid("def f(x):\n    return x.half().cumsum(dim=1)\n", line=2),
        Invalid("import torch\ndef f(x):\n    return torch.sum(x.to(torch.bfloat16), dim=-1)\n", line=3),
        Invalid("import torch\ndef f(x):\n    return x.to(dtype=torch.float16).sum()\n", line=3),
        Invalid("def f(x):\n    y = x.half()\n    return y.sum(-1)\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if kwarg(node, "dtype") is not None:
            return
        tf = torch_function(self, node)
        mc = method_call(node)
        if tf in _LONG_REDUCTIONS and positional(node):
            src, op = positional(node)[0].value, tf
        elif tf is None and mc and mc[1] in _LONG_REDUCTIONS:
            src, op = mc[0], mc[1]
        else:
            return
        low = self._low_precision(src)
        if not low and isinstance(src, cst.Name):
            vals = assigned_values(self, enclosing_function(self, node), src.value)
            low = self._low_precision(vals[0]) if len(vals) == 1 else None
        if not low:
            return
        self.report(
            node,
            problem=f"`{self.code_for(node)}` accumulates a `{op}` in {low}.",
            impact=("float16 keeps 11 significant bits (bfloat16: 8): a running sum stalls once it is ~2048 (bf16: ~256) "
                    "times larger than the terms, so long reductions silently lose the small contributions."),
            fix=Fix(before=self.code_for(node), after=f"{self.code_for(node)[:-1]}, dtype=torch.float32)"
                    if node.args else f"{self.code_for(node)[:-1]}dtype=torch.float32)"),
        )

    def _low_precision(self, e) -> Optional[str]:
        mc = method_call(e) if isinstance(e, cst.Call) else None
        if not mc:
            return None
        if mc[1] in _LOW and not e.args:
            return _LOW[mc[1]]
        if mc[1] == "to":
            for a in e.args:
                if self.code_for(a.value).replace(" ", "") in _LOW_DTYPES:
                    return self.code_for(a.value).split(".")[-1]
        return None
