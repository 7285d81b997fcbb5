from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import is_method_call, method_call, names_in, torch_function
from .base import Invalid, Rule

_COUNTISH = ("mask", "valid", "count", "length", "lens", "weight", "n_tokens", "ntokens", "num_", "nonpad", "keep")
_SAFE = {"clamp", "clamp_min", "clip", "maximum", "max", "add", "where"}


class DivideByPossiblyZeroCount(Rule):
    """A masked mean divides by a count that can be zero.

    What it does:
        Flags ``x / mask.sum()`` and ``x / lengths.sum(...)``-style divisions whose denominator is
        a reduction of a mask, a count or a weight (or of a comparison), with no ``clamp``,
        ``clamp_min``, ``+ eps`` or ``torch.where`` guard.

    Why is this bad:
        A batch in which every position is masked (an all-padding sequence, an empty bucket, a
        filtered-out class) makes the denominator 0: the loss becomes NaN (0/0) or Inf, and one
        NaN step poisons every parameter through the optimizer.

    Example:
        loss = (token_loss * mask).sum() / mask.sum()

    Use instead:
        loss = (token_loss * mask).sum() / mask.sum().clamp_min(1)
    """

    code = "TR209"
    title = "Division by a mask/count reduction that can be zero"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    autofix = True
    VALID = [
        "def f(weight_orig, weight):\n    return weight_orig / weight\n",
        "def f(loss, mask):\n    return (loss * mask).sum() / mask.sum().clamp_min(1)\n",
        "def f(loss, mask):\n    return (loss * mask).sum() / (mask.sum() + 1e-8)\n",
        "def f(x):\n    return x / x.sum(-1, keepdim=True)\n",
        "import torch\ndef f(loss, mask):\n    return (loss * mask).sum() / torch.clamp(mask.sum(), min=1)\n",
    ]
    INVALID = [
        Invalid("def f(loss, mask):\n    return (loss * mask).sum() / mask.sum()\n", line=2,
                expected_fix="def f(loss, mask):\n    return (loss * mask).sum() / mask.sum().clamp_min(1)\n"),
        Invalid("def f(x, lengths):\n    return x.sum(1) / lengths.float()\n", line=2,
                expected_fix="def f(x, lengths):\n    return x.sum(1) / lengths.float().clamp_min(1)\n"),
        Invalid("import torch\ndef f(x, labels):\n    valid = labels != -100\n    return x[valid].sum() / torch.sum(valid)\n", line=4,
                expected_fix="import torch\ndef f(x, labels):\n    valid = labels != -100\n    return x[valid].sum() / torch.sum(valid).clamp_min(1)\n"),
    ]

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        if not isinstance(node.operator, cst.Divide):
            return
        den = node.right
        if isinstance(den, (cst.Integer, cst.Float)) or not self._count_reduction(den):
            return
        self.report(
            den,
            problem=(f"`{self.code_for(node)}` divides by `{self.code_for(den)}`, a mask, count or weight total that is 0 when every "
                     "position is masked or the selection is empty."),
            impact="0/0 gives NaN (x/0 gives Inf); one NaN loss poisons every parameter at the next optimizer step.",
            replacement=cst.Call(func=cst.Attribute(value=den, attr=cst.Name("clamp_min")),
                                 args=[cst.Arg(cst.Integer("1"))]),
        )

    def _count_reduction(self, expr: cst.BaseExpression) -> bool:
        if isinstance(expr, cst.Call):
            tf = torch_function(self, expr)
            if tf is not None:
                return tf in ("sum", "count_nonzero") and bool(expr.args) and self._countish(expr.args[0].value)
            mc = method_call(expr)
            if mc and mc[1] in ("float", "to", "type_as", "double"):  # lengths.float()
                return self._countish(mc[0], lengths_only=True)
            if mc and mc[1] in ("sum", "count_nonzero"):
                return self._countish(mc[0])
        return False

    def _countish(self, expr: cst.BaseExpression, lengths_only: bool = False) -> bool:
        if isinstance(expr, cst.Comparison):
            return True
        if isinstance(expr, cst.Call):
            mc = method_call(expr)
            if mc and mc[1] in ("float", "long", "int", "to", "bool"):
                return self._countish(mc[0])
            return False
        if isinstance(expr, (cst.Name, cst.Attribute)):
            name = (expr.value if isinstance(expr, cst.Name) else expr.attr.value).lower()
            hints = ("length", "lens", "count", "n_tokens", "ntokens") if lengths_only else _COUNTISH
            return any(h in name for h in hints)
        return False
