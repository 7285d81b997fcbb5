from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._numerics import FP16_MAX, float_constant, fp16_context, is_float16
from ._torch import atom_code, enclosing_function, is_method_call, method_call, positional, torch_function
from .base import Invalid, Rule

_FILLS = {"masked_fill", "masked_fill_"}


class MaskFillOverflowsFloat16(Rule):
    """A mask fill value such as ``-1e9`` on scores that are float16.

    What it does:
        Flags ``x.masked_fill(mask, -1e9)`` / ``masked_fill_`` / ``torch.masked_fill`` whose fill value
        is a constant beyond float16's range (|v| > 65504: ``-1e9``, ``float("-1e10")``, a module
        constant ``NEG_INF = -1e9``) when the scores are float16: made so explicitly (``.half()``,
        ``.to(torch.float16)``), or the function's or class's documentation says they run under fp16
        autocast / half precision, or the document uses ``autocast``, a ``GradScaler`` or ``.half()``
        (``bfloat16`` has float32's range and is not flagged).

    Why is this bad:
        float16 tops out at 65504. ``masked_fill`` refuses the value: under fp16 autocast the linear
        and matmul outputs are float16 and the call raises "value cannot be converted to type
        at::Half without overflow", so the model works in float32 tests and crashes as soon as
        mixed precision is switched on (other paths turn the constant into ``-inf`` and a fully
        masked row into NaN).

    Example:
        scores = scores.masked_fill(~valid, -1e9)   # scores are float16 under autocast

    Use instead:
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
    """

    code = "TR212"
    title = "Mask fill value overflows float16"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef f(s, m):\n    return s.masked_fill(m, torch.finfo(s.dtype).min)\n",
        "def f(s, m):\n    \"\"\"Runs under fp16 autocast.\"\"\"\n    return s.masked_fill(m, -1e4)\n",
        "def f(s, m):\n    return s.masked_fill(m, -1e9)\n",  # nothing says the scores are float16
        "import torch\ndef f(s, m):\n    return s.to(torch.bfloat16).masked_fill(m, -1e9)\n",
        "def f(s, m):\n    \"\"\"Runs under fp16 autocast.\"\"\"\n    return s.masked_fill(m, float('-inf'))\n",
    ]
    INVALID = [
        Invalid("def f(s, m):\n    \"\"\"Scores under fp16 autocast.\"\"\"\n    return s.masked_fill(~m, -1e9)\n", line=3),
        Invalid("import torch\nNEG = -1e9\ndef f(s, m):\n    return s.half().masked_fill_(m, NEG)\n", line=4),
        Invalid("import torch\nclass A(torch.nn.Module):\n    def forward(self, q, k, m):\n"
                "        s = q @ k.T\n        return s.masked_fill(m, float('-1e10'))\n"
                "def fit(model, q, k, m):\n    with torch.autocast('cuda'):\n        return model(q, k, m)\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if is_method_call(self, node, _FILLS) and len(node.args) >= 2:
            scores, value = method_call(node)[0], node.args[1].value
        elif torch_function(self, node) == "masked_fill" and len(positional(node)) >= 3:
            scores, value = positional(node)[0].value, positional(node)[2].value
        else:
            return
        fn = enclosing_function(self, node)
        v = float_constant(self, fn, value)
        if v is None or abs(v) <= FP16_MAX or v != v or abs(v) == float("inf"):
            return
        if self._bfloat16(scores):
            return
        why = "the scores are made float16 here" if is_float16(self, fn, scores) else fp16_context(self, node)
        if why is None:
            return
        s = atom_code(self, scores)
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` fills with `{self.code_for(value)}`, beyond float16's range "
                     f"(max 65504), and {why}."),
            impact=("On float16 scores masked_fill raises \"value cannot be converted to type at::Half without "
                    "overflow\": the model crashes as soon as mixed precision is on (elsewhere the constant becomes "
                    "-inf and a fully masked row NaN)."),
            fix=Fix(before=self.code_for(node),
                    after=f"{self.code_for(node.func)}({self.code_for(node.args[0].value)}, torch.finfo({s}.dtype).min)"),
            evidence={"value": v, "why": why},
        )

    def _bfloat16(self, scores) -> bool:
        while isinstance(scores, cst.Call) and method_call(scores):
            if "bfloat16" in "".join(self.code_for(a.value) for a in scores.args):
                return True
            scores = method_call(scores)[0]
        return False
