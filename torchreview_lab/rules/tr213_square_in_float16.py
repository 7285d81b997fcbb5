from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._flow import const_int
from ._numerics import is_float16
from ._torch import atom_code, enclosing_function, is_method_call, method_call, positional, torch_function
from .base import Invalid, Rule


class SquareInFloat16(Rule):
    """Squares (or a mean of squares) computed on a tensor cast to float16.

    What it does:
        Flags ``x.half().pow(2)``, ``h ** 2``, ``h * h`` and ``torch.square(h)`` where ``h`` is made
        float16 explicitly (``.half()``, ``.to(torch.float16)``, a factory with ``dtype=torch.half``,
        followed through names and elementwise maths): typically the statistics of an RMSNorm /
        LayerNorm / variance "taken in half precision to save memory". bfloat16 (float32's range) and
        values cast back with ``.float()`` first are not flagged.

    Why is this bad:
        float16's largest value is 65504, so any |x| > 256 squares to ``inf``. One large activation
        makes the mean of squares ``inf``, ``rsqrt(inf) = 0`` and the normalised row collapses to 0
        (a variance gives ``inf``/NaN). Activations above 256 are common in large models (outlier
        features), so the norm fails silently on exactly the inputs that matter.

    Example:
        ms = x.half().pow(2).mean(dim=-1, keepdim=True)

    Use instead:
        ms = x.float().pow(2).mean(dim=-1, keepdim=True)   # statistics in float32, cast the output
    """

    code = "TR213"
    title = "Square computed in float16 overflows"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "def rms(x):\n    return x.float().pow(2).mean(-1, keepdim=True)\n",
        "import torch\ndef f(x):\n    return x.to(torch.bfloat16).pow(2).mean(-1)\n",
        "def f(x):\n    h = x.half()\n    return (h.float() ** 2).sum(-1)\n",
        "def f(x):\n    return x.half().pow(3)\n",
        "def f(x):\n    return x.pow(2).mean(-1).half()\n",
    ]
    INVALID = [
        Invalid("def rms(x):\n    return x.half().pow(2).mean(dim=-1, keepdim=True)\n", line=2),
        Invalid("import torch\ndef var(x):\n    h = x.to(torch.float16)\n    d = h - h.mean(-1, keepdim=True)\n"
                "    return (d * d).mean(-1)\n", line=5),
        Invalid("import torch\ndef f(x):\n    return torch.square(x.half()).sum()\n", line=3),
        Invalid("def f(x):\n    return (x.half() ** 2).mean()\n", line=2),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        base = self._squared(node)
        if base is not None:
            self._check(node, base)

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        if isinstance(node.operator, cst.Power) and const_int(node.right) == 2:
            self._check(node, node.left)
        elif isinstance(node.operator, cst.Multiply) and self.code_for(node.left) == self.code_for(node.right):
            self._check(node, node.left)

    def _squared(self, call: cst.Call) -> Optional[cst.BaseExpression]:
        tf = torch_function(self, call)
        pos = positional(call)
        if tf == "square" and pos:
            return pos[0].value
        if tf == "pow" and len(pos) == 2 and const_int(pos[1].value) == 2:
            return pos[0].value
        if tf is None and is_method_call(self, call, {"square", "square_"}) and not call.args:
            return method_call(call)[0]
        if tf is None and is_method_call(self, call, {"pow", "pow_"}) and len(call.args) == 1 \
                and const_int(call.args[0].value) == 2:
            return method_call(call)[0]
        return None

    def _check(self, node: cst.CSTNode, base: cst.BaseExpression) -> None:
        if isinstance(base, (cst.Integer, cst.Float)) or not is_float16(self, enclosing_function(self, node), base):
            return
        b = atom_code(self, base)
        self.report(
            node,
            problem=f"`{self.code_for(node)}` squares `{b}`, which is float16: any |value| > 256 squares to inf "
                    "(float16 max 65504).",
            impact=("One large activation makes the sum/mean of squares inf: rsqrt gives 0 and the normalised row "
                    "collapses to 0 (a variance or norm becomes inf/NaN), silently, on exactly the large inputs."),
            fix=Fix(before=self.code_for(node),
                    after=self.code_for(node).replace(".half()", ".float()").replace(
                        "torch.float16", "torch.float32") + "  # statistics in float32; cast the result if needed"),
        )
