"""Padding descriptions and the reductions they should mask (TR629).

``padding_params`` names the parameters of a function that describe padding (``lengths``, ``seq_lens``,
``attention_mask``, ``src_key_padding_mask``, ``valid``...) and have no default or a non-None one
(``mask=None`` in a library layer is usually an API-compatibility slot). ``position_reductions`` lists
the calls of a function body whose result padding changes: reductions over a dimension (``mean``,
``sum``, ``max``, ``logsumexp``, ``softmax``...; not prefix ops such as ``cumsum``, which right padding
leaves unchanged at the real positions), pooling (``F.avg_pool1d``, adaptive pools,
``nn`` pooling modules called), attention (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``,
transformer encoders called) and losses (``F.cross_entropy``, ``nn.MSELoss()``...).

Private module (not a rule).
"""
from __future__ import annotations

import re
from typing import List, Tuple

import libcst as cst

from ._context import construction_of
from ._flow import const_int
from ._torch import dotted_name, is_none, kwarg, last_part, method_call, positional, torch_function, walk_own

_MASK = re.compile(
    r"^(?:(?:src|tgt|memory|encoder|decoder|enc|dec|self|cross)_)?(?:key_)?"
    r"(?:(?:padding|pad|attention|attn|key|query|seq|sequence|length|lengths|token|tokens|word|input|src|tgt|x|"
    r"nonpad|non_pad|valid|frame|time|node|text|txt|audio|speech|memory)_)?masks?$")
_LENGTHS = re.compile(r"^(?:\w+_)?(?:lengths|lens)$|^(?:seq|sequence|valid)_(?:lens?|lengths?)$|^valid$")

# Reductions whose ``dim`` argument is positional argument 0 of the method (1 of the torch function). Not the
# cumulative ops (``cumsum``...): a prefix at a real position never sees right padding, and the consumer that
# reads them up to ``lengths`` (a segment CRF, say) is where padding matters.
REDUCTIONS = frozenset({"mean", "sum", "nansum", "nanmean", "max", "min", "amax", "amin", "logsumexp", "softmax",
                        "log_softmax", "std", "var", "median"})
POOLS = re.compile(r"^(?:adaptive_)?(?:avg|max|lp)_pool[123]d$|^(?:Adaptive)?(?:Avg|Max|LP)Pool[123]d$")
ATTENTION = frozenset({"scaled_dot_product_attention", "multi_head_attention_forward", "MultiheadAttention",
                       "TransformerEncoder", "TransformerEncoderLayer", "Transformer", "TransformerDecoder",
                       "TransformerDecoderLayer"})
LOSSES = frozenset({"cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
                    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "CrossEntropyLoss",
                    "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCELoss", "BCEWithLogitsLoss",
                    "KLDivLoss"})


def padding_params(fn: cst.FunctionDef) -> List[str]:
    """Parameters of ``fn`` named for padding, without a default or with a non-None one, not ``_private``."""
    p = fn.params
    out = []
    for param in list(p.posonly_params) + list(p.params) + list(p.kwonly_params):
        name = param.name.value
        if name.startswith("_") or param.default is not None and is_none(param.default):
            continue
        if _MASK.match(name) or _LENGTHS.match(name):
            out.append(name)
    return out


def _has_dim(call: cst.Call, index: int, name: str) -> bool:
    """``dim`` is given; for ``max``/``min`` (also elementwise with a tensor) as a keyword or an int literal."""
    if kwarg(call, "dim") is not None or kwarg(call, "axis") is not None:
        return True
    pos = positional(call)
    return len(pos) > index and (name not in ("max", "min") or const_int(pos[index].value) is not None)


def reduction_kind(rule, fn, call: cst.Call) -> str:
    """``"reduction"``, ``"pooling"``, ``"attention"``, ``"loss"`` or ``""`` for a call padding affects."""
    tf = torch_function(rule, call)
    if tf is not None:
        name = last_part(tf)
        if name in REDUCTIONS and tf.count(".") <= 2 and _has_dim(call, 1, name):
            return "reduction"
        if not tf.startswith("nn.functional.") or not name[:1].islower():
            return ""
        return ("pooling" if POOLS.match(name) else "attention" if name in ATTENTION else
                "loss" if name in LOSSES and kwarg(call, "ignore_index") is None else "")
    mc = method_call(call)
    head = (dotted_name(mc[0]) or "").split(".")[0] if mc else ""
    if mc and mc[1] in REDUCTIONS and head != "self" and head not in rule.ctx.names.aliases:
        return "reduction" if _has_dim(call, 0, mc[1]) else ""
    built = construction_of(rule, fn, call.func) if isinstance(call.func, (cst.Name, cst.Attribute)) else None
    name = last_part(torch_function(rule, built)) if built is not None else ""
    if not name[:1].isupper() or built is call:
        return ""
    return ("pooling" if POOLS.match(name) else "attention" if name in ATTENTION else "reduction" if name in (
        "Softmax", "LogSoftmax") else "loss" if name in LOSSES and kwarg(built, "ignore_index") is None else "")


def position_reductions(rule, fn: cst.FunctionDef) -> List[Tuple[cst.Call, str]]:
    """``(call, kind)`` for each call of ``fn``'s own body that padding affects, in source order."""
    out = [(c, reduction_kind(rule, fn, c)) for c in walk_own(fn.body, cst.Call)]
    return sorted(((c, k) for c, k in out if k), key=lambda ck: (rule.line_of(ck[0]), -rule.end_line_of(ck[0])))


def abstract_or_super_only(body: cst.BaseSuite) -> bool:
    """The body is a docstring plus ``pass``/``...``/``raise NotImplementedError``, or only calls ``super()``."""
    stmts = list(body.body) if isinstance(body, cst.IndentedBlock) else [body]
    small = [s for st in stmts for s in (st.body if isinstance(st, (cst.SimpleStatementLine,
                                                                        cst.SimpleStatementSuite)) else [st])]
    small = [s for s in small if not (isinstance(s, cst.Expr) and isinstance(s.value, (cst.SimpleString,
                                                                                         cst.ConcatenatedString)))]
    if all(isinstance(s, cst.Pass) or isinstance(s, cst.Expr) and isinstance(s.value, cst.Ellipsis)
           or isinstance(s, cst.Raise) and "NotImplemented" in cst.Module(body=[]).code_for_node(s) for s in small):
        return True
    return all(any(isinstance(c, cst.Call) and isinstance(c.func, cst.Name) and c.func.value == "super"
                   for c in walk_own(s, cst.Call)) for s in small)
