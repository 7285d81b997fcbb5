"""What an ``all_reduce`` argument holds on each rank (TR622): a per-rank mean or ratio (``correct / total``,
``x.mean()``, a mean-reduced torch loss), or a stack of them (``torch.stack([loss_sum / n, correct / n])``,
``torch.tensor([avg_loss, acc])``), followed through the one binding of a name that reaches it."""
from __future__ import annotations

from typing import Optional

import libcst as cst

from ._bindings import reaching_value
from ._context import construction_of
from ._torch import kwarg, last_part, method_call, torch_function

_MEANS = frozenset({"mean", "nanmean"})
_KEEPING = frozenset({"float", "double", "detach", "clone", "item", "to", "cuda", "view", "reshape", "squeeze"})
_PACKS = frozenset({"stack", "cat", "tensor", "as_tensor", "Tensor", "FloatTensor", "hstack"})
_LOSSES = frozenset({"cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
                     "binary_cross_entropy", "binary_cross_entropy_with_logits"})


def mean_kind(rule, fn, value: Optional[cst.BaseExpression], depth: int = 0) -> Optional[str]:
    """``"a ratio"`` for ``a / b``, ``"a mean"`` for ``x.mean()``/``torch.mean(x)``/a mean-reduced torch loss (also
    ``.float()``-cast), ``"a stack of per-rank means"`` for ``torch.stack([a / n, b / n])`` / ``torch.tensor([...])``
    holding one, following a name to the one value that reaches it."""
    while isinstance(value, cst.Call) and (method_call(value) or (None, ""))[1] in _KEEPING:
        value = method_call(value)[0]
    if isinstance(value, cst.Name) and depth < 3:
        return mean_kind(rule, fn, reaching_value(rule, fn, value.value, value), depth + 1)
    if isinstance(value, cst.BinaryOperation) and isinstance(value.operator, cst.Divide):
        return "a ratio (a per-rank mean)"
    if not isinstance(value, cst.Call):
        return None
    tf, mc = torch_function(rule, value), method_call(value)
    red = kwarg(value, "reduction")
    if tf in _MEANS or tf is None and mc and mc[1] in _MEANS:
        return "a mean"
    built = construction_of(rule, fn, value.func) if tf is None and not mc else None
    loss = last_part(tf) in _LOSSES or built is not None and last_part(torch_function(rule, built)).endswith("Loss")
    red = red or kwarg(built, "reduction") if built is not None else red
    if loss and (red is None or rule.code_for(red.value).strip("'\"") == "mean"):
        return "a mean (a mean-reduced loss)"
    if last_part(tf) in _PACKS and value.args and depth < 3:
        first = value.args[0].value
        parts = [e.value for e in first.elements] if isinstance(first, (cst.List, cst.Tuple)) else [first]
        if any(mean_kind(rule, fn, e, depth + 1) for e in parts):
            return "a stack of per-rank means"
    return None
