from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import assigned_values, dotted_name, enclosing_function, is_method_call, method_call, names_in, torch_function
from .base import Invalid, Rule

_COUNTISH = ("mask", "valid", "count", "length", "lens", "weight", "n_tokens", "ntokens", "num_", "nonpad", "keep")
_SAFE = {"clamp", "clamp_min", "clip", "maximum", "max", "add", "where"}
_SCATTER_COUNTS = frozenset({"index_add_", "index_add", "scatter_add_", "scatter_add", "bincount", "degree",
                             "in_degree", "out_degree"})
_RESHAPES = frozenset({"unsqueeze", "view", "reshape", "float", "to", "type_as", "double", "expand_as", "view_as"})


class DivideByPossiblyZeroCount(Rule):
    """A masked mean divides by a count that can be zero.

    What it does:
        Flags ``x / mask.sum()`` and ``x / lengths.sum(...)``-style divisions whose denominator is
        a reduction of a mask, a count or a weight (or of a comparison), per-index counts built by
        scattering (node degrees from ``index_add_``/``scatter_add``/``bincount``), or a standard
        deviation taken on the batch (``(r - r.mean()) / r.std()``), with no ``clamp``,
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
        "def standardize(rets):\n    return (rets - rets.mean()) / (rets.std() + 1e-8)\n",
        "import torch\ndef mean_aggr(agg, dst, N):\n    deg = torch.zeros(N).index_add_(0, dst, torch.ones(dst.numel()))\n"
        "    return agg / deg.clamp_min(1).unsqueeze(-1)\n",
        "def normalize(x, mean, std):\n    return (x - mean) / std\n",
    ]
    INVALID = [
        Invalid("import torch\ndef mean_aggr(x, src, dst, N):\n    agg = torch.zeros(N, x.size(1)).index_add_(0, dst, x[src])\n"
                "    deg = torch.zeros(N).index_add_(0, dst, torch.ones(dst.numel()))\n    return agg / deg.unsqueeze(-1)\n", line=5),
        Invalid("def standardize(rets):\n    return (rets - rets.mean()) / rets.std()\n", line=2,
                expected_fix="def standardize(rets):\n    return (rets - rets.mean()) / (rets.std() + 1e-8)\n"),
        Invalid("def f(loss, mask):\n    return (loss * mask).sum() / mask.sum()\n", line=2,
                expected_fix="def f(loss, mask):\n    return (loss * mask).sum() / mask.sum().clamp_min(1)\n"),
        Invalid("def f(x, lengths):\n    return x.sum(1) / lengths.float()\n", line=2,
                expected_fix="def f(x, lengths):\n    return x.sum(1) / lengths.float().clamp_min(1)\n"),
        Invalid("def gc(is_gc, pad_mask):\n    return is_gc.sum(-1) / (~pad_mask).sum(-1)\n", line=2),
        Invalid("import torch\ndef f(x, labels):\n    valid = labels != -100\n    return x[valid].sum() / torch.sum(valid)\n", line=4,
                expected_fix="import torch\ndef f(x, labels):\n    valid = labels != -100\n    return x[valid].sum() / torch.sum(valid).clamp_min(1)\n"),
    ]

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        if not isinstance(node.operator, cst.Divide) or isinstance(node.right, (cst.Integer, cst.Float)):
            return
        den = node.right
        std = isinstance(den, cst.Call) and (torch_function(self, den) == "std" or is_method_call(self, den, {"std"}))
        if not std and not self._count_reduction(den) and not self._scattered_count(den):
            return
        self.report(
            den,
            problem=(f"`{self.code_for(node)}` divides by `{self.code_for(den)}`, " + (
                "a standard deviation computed on the batch: 0 when every value is equal (all-zero returns, a "
                "constant feature) and NaN for a single element." if std else
                "a mask, count or weight total that is 0 when every position is masked or the selection is empty "
                "(per-node degrees: an isolated node).")),
            impact="0/0 gives NaN (x/0 gives Inf); one NaN loss poisons every parameter at the next optimizer step.",
            replacement=cst.parse_expression(f"({self.code_for(den)} + 1e-8)") if std else
            cst.Call(func=cst.Attribute(value=den, attr=cst.Name("clamp_min")), args=[cst.Arg(cst.Integer("1"))]),
            title="Division by a batch standard deviation that can be zero" if std else None,
        )

    def _scattered_count(self, expr: cst.BaseExpression, depth: int = 0) -> bool:
        """Per-index counts built by scattering (``zeros(N).index_add_(0, dst, ones)``, ``bincount``,
        ``scatter_add``, a ``degree(...)`` helper), possibly reshaped: an index nobody hits counts 0."""
        while isinstance(expr, cst.Subscript) or is_method_call(self, expr, _RESHAPES):
            expr = expr.value if isinstance(expr, cst.Subscript) else method_call(expr)[0]
        if isinstance(expr, cst.Name) and depth < 3:
            fn = enclosing_function(self, expr)
            vals = assigned_values(self, fn, expr.value) if fn is not None else []
            return len(vals) == 1 and self._scattered_count(vals[0], depth + 1)
        if not isinstance(expr, cst.Call):
            return False
        name = (torch_function(self, expr) or (method_call(expr) or (None, ""))[1] or dotted_name(expr.func) or "")
        return name.split(".")[-1] in _SCATTER_COUNTS

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
        if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.BitInvert):
            return True  # (~pad).sum(-1): a negated boolean mask counts the unpadded positions
        if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Subtract) and \
                isinstance(expr.left, cst.Integer) and expr.left.value == "1":
            return self._countish(expr.right)  # (1 - pad_mask).sum(-1)
        if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.BitAnd, cst.BitOr)):
            return self._countish(expr.left) or self._countish(expr.right)  # (a != pad) & keep
        if isinstance(expr, cst.Call):
            mc = method_call(expr)
            if mc and mc[1] == "logical_not":
                return True
            if mc and mc[1] in ("float", "long", "int", "to", "bool"):
                return self._countish(mc[0])
            return False
        if isinstance(expr, (cst.Name, cst.Attribute)):
            name = (expr.value if isinstance(expr, cst.Name) else expr.attr.value).lower()
            hints = ("length", "lens", "count", "n_tokens", "ntokens") if lengths_only else _COUNTISH
            return any(h in name for h in hints)
        return False
