"""Which axes a matmul or einsum contracts, and which softmax axis its weights were normalised over.

``rank`` reads the number of dimensions an expression has from what built it: ``.view(B, N, h, d)``,
``.reshape``, ``.permute``, shape factories (``torch.zeros(B, T, C)``), ``bmm`` (3), ``mm`` (2),
``einsum`` output subscripts, ``a @ b`` of known ranks, shape-keeping ops and broadcasting arithmetic
with a scalar, followed through the one binding of a name that reaches the use; None when unknown.

``source_axis`` maps an axis of ``x.transpose(a, b)``, ``x.swapaxes``, ``x.permute(...)``, ``x.mT``,
``x.T``/``x.t()`` (2-D only) and ``x.unsqueeze(d)`` back to the axis of ``x`` it is. Axes are negative
(counted from the right, stable under broadcasting); a non-negative index is converted only where the
rank is known. ``einsum_spec`` reads the operands and subscripts of ``torch.einsum``/``einops.einsum``.

``softmax_weights`` follows an operand back, through the one binding of each name, dropout, masking,
casts, ``* mask``, transposes and permutes, to the softmax that made it and says which of its axes
the operand's axes are.

Private module (not a rule), for TR619.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import libcst as cst

from ._bindings import python_number, reaching_value
from ._context import bound_values
from ._flow import const_int
from ._torch import (dotted_name, is_method_call, kwarg, method_call, positional, shape_dims, torch_function, walk,
                     walk_own)

SAME_RANK_METHODS = frozenset({"transpose", "swapaxes", "swapdims", "contiguous", "float", "half", "double",
                               "bfloat16", "to", "type", "type_as", "masked_fill", "masked_fill_", "softmax",
                               "log_softmax", "clone", "detach", "exp", "tanh", "sigmoid", "relu", "abs", "neg", "sqrt",
                               "clamp", "nan_to_num"})
SAME_RANK_FUNCTIONS = frozenset({"softmax", "log_softmax", "nn.functional.softmax", "nn.functional.log_softmax",
                                 "nn.functional.dropout", "dropout", "exp", "tanh", "sigmoid", "masked_fill",
                                 "transpose", "swapaxes", "swapdims", "nan_to_num", "special.softmax"})
_FACTORIES = frozenset({"zeros", "ones", "empty", "rand", "randn", "full"})


def _function(rule, call: cst.Call) -> Optional[str]:
    """:func:`torch_function`, and ``F.x``/``nn.functional.x`` left unresolved (a star import, a notebook cell
    reviewed without its imports) read as ``nn.functional.x``."""
    tf = torch_function(rule, call)
    name = dotted_name(call.func) or ""
    if tf is None and not rule.qnames(call.func) and name.startswith(("F.", "nn.functional.")) and name.count(".") <= 2:
        return "nn.functional." + name.rsplit(".", 1)[-1]
    return tf


def neg_axis(axis: Optional[int], ndim: Optional[int]) -> Optional[int]:
    """``axis`` counted from the right (-1 the last); None when it cannot be (non-negative, rank unknown)."""
    if axis is None or ndim is not None and not -ndim <= axis < ndim:
        return None
    return axis if axis < 0 else axis - ndim if ndim is not None else None


def _ints(args) -> Optional[List[int]]:
    vals = [a.value for a in args]
    if len(vals) == 1 and isinstance(vals[0], (cst.Tuple, cst.List)):
        vals = [e.value for e in vals[0].elements]
    out = [const_int(v) for v in vals]
    return None if not out or None in out or any(a.star for a in args) else out


def _scalar_like(rule, fn, expr, scale: bool) -> bool:
    """A Python number, ``math.*``, a literal; as a ``scale`` factor also an attribute (``self.scale``)."""
    if python_number(rule, expr) or scale and isinstance(expr, cst.Attribute):
        return True
    if isinstance(expr, cst.Name):
        v = reaching_value(rule, fn, expr.value, expr)
        return v is not None and python_number(rule, v)
    return isinstance(expr, cst.BinaryOperation) and all(
        _scalar_like(rule, fn, s, scale) for s in (expr.left, expr.right))


def matmul_rank(a: Optional[int], b: Optional[int]) -> Optional[int]:
    if a is None or b is None:
        return None
    return a - 1 if b == 1 else b - 1 if a == 1 else max(a, b)


def rank(rule, fn, expr, depth: int = 0) -> Optional[int]:
    """The number of dimensions of ``expr`` when it can be read (see the module docstring)."""
    if depth > 12:
        return None
    if isinstance(expr, cst.Name):
        v = reaching_value(rule, fn, expr.value, expr)
        return rank(rule, fn, v, depth + 1) if v is not None else None
    if isinstance(expr, cst.UnaryOperation):
        return rank(rule, fn, expr.expression, depth + 1)
    if isinstance(expr, cst.Attribute) and expr.attr.value in ("mT", "T", "real", "imag", "data"):
        return rank(rule, fn, expr.value, depth + 1)
    if isinstance(expr, cst.BinaryOperation):
        if isinstance(expr.operator, cst.MatrixMultiply):
            return matmul_rank(rank(rule, fn, expr.left, depth + 1), rank(rule, fn, expr.right, depth + 1))
        scale = isinstance(expr.operator, (cst.Multiply, cst.Divide))
        sides = [s for s in (expr.left, expr.right) if not _scalar_like(rule, fn, s, scale)]
        ranks = [rank(rule, fn, s, depth + 1) for s in sides]
        return max(ranks) if ranks and None not in ranks else None
    if not isinstance(expr, cst.Call):
        return None
    tf, mc, pos = _function(rule, expr), method_call(expr), positional(expr)
    if tf is not None:
        if tf in ("bmm", "baddbmm"):
            return 3
        if tf == "mm":
            return 2
        if tf == "matmul" and len(pos) == 2:
            return matmul_rank(rank(rule, fn, pos[0].value, depth + 1), rank(rule, fn, pos[1].value, depth + 1))
        if tf == "einsum":
            spec = einsum_spec(rule, expr)
            return len(spec[2]) if spec is not None and "..." not in spec[2] else None
        if tf in _FACTORIES:
            dims = shape_dims(rule, expr, tf)
            single = dims is not None and len(dims) == 1 and const_int(dims[0]) is None
            return None if dims is None or single or any(isinstance(d, (cst.Tuple, cst.List)) for d in dims) \
                else len(dims)
        if tf in SAME_RANK_FUNCTIONS and pos:
            return rank(rule, fn, pos[0].value, depth + 1)
        return None
    if mc is None:
        return None
    recv, name = mc
    if name in ("view", "reshape", "expand", "new_zeros", "new_ones", "new_empty"):
        if len(pos) == 1 and not isinstance(pos[0].value, (cst.Tuple, cst.List)) and const_int(pos[0].value) is None:
            return None  # view(shape), view(dtype)
        return None if any(a.star for a in expr.args) or not pos else len(
            pos[0].value.elements) if isinstance(pos[0].value, (cst.Tuple, cst.List)) else len(pos)
    if name == "permute":
        ints = _ints(expr.args)
        return len(ints) if ints is not None else None
    if name in ("matmul", "bmm", "mm") and len(pos) == 1:
        return 3 if name == "bmm" else 2 if name == "mm" else matmul_rank(
            rank(rule, fn, recv, depth + 1), rank(rule, fn, pos[0].value, depth + 1))
    if name in ("view_as", "reshape_as", "expand_as") and len(pos) == 1:
        return rank(rule, fn, pos[0].value, depth + 1)
    if name == "unsqueeze":
        r = rank(rule, fn, recv, depth + 1)
        return r + 1 if r is not None else None
    if name == "flatten" and len(expr.args) == 1 and const_int(expr.args[0].value) is not None \
            and const_int(expr.args[0].value) >= 0:
        return const_int(expr.args[0].value) + 1
    return rank(rule, fn, recv, depth + 1) if name in SAME_RANK_METHODS else None


def source_axis(rule, fn, expr, axis: int) -> Optional[Tuple[cst.BaseExpression, int]]:
    """``(x, a)``: negative ``axis`` of ``expr`` is axis ``a`` of ``x`` when ``expr`` transposes, permutes
    or unsqueezes ``x``; None when ``expr`` is none of these, or the mapping cannot be known."""
    if isinstance(expr, cst.Attribute) and expr.attr.value in ("mT", "T"):
        if expr.attr.value == "T" and rank(rule, fn, expr.value) != 2:
            return None  # .T reverses every axis: only a known 2-D tensor is a plain transpose
        return expr.value, {-1: -2, -2: -1}.get(axis, axis)
    if not isinstance(expr, cst.Call):
        return None
    tf, mc, pos = torch_function(rule, expr), method_call(expr), positional(expr)
    if tf in ("transpose", "swapaxes", "swapdims", "permute") and pos:
        x, rest = pos[0].value, pos[1:]
    elif tf is None and mc is not None and mc[1] in ("transpose", "swapaxes", "swapdims", "permute", "t", "unsqueeze"):
        x, rest = mc[0], expr.args
    else:
        return None
    name = tf or mc[1]
    if name == "t":
        return (x, {-1: -2, -2: -1}.get(axis, axis)) if not rest and rank(rule, fn, x) == 2 else None
    ints = _ints(rest)
    if ints is None:
        return None
    if name == "permute":
        n = len(ints)
        return (x, neg_axis(ints[n + axis], n)) if -n <= axis and sorted(neg_axis(i, n) for i in ints) == list(
            range(-n, 0)) else None
    n = rank(rule, fn, x)
    if name == "unsqueeze":
        at = neg_axis(ints[0], n + 1 if n is not None else None) if len(ints) == 1 else None
        if at is None or at == axis:
            return None  # the new axis itself
        return x, axis if axis > at else axis + 1
    a, b = (neg_axis(i, n) for i in ints) if len(ints) == 2 else (None, None)
    if a is None or b is None:
        return None
    return x, b if axis == a else a if axis == b else axis


def einsum_spec(rule, call: cst.Call) -> Optional[Tuple[List[cst.BaseExpression], List[List[str]], List[str]]]:
    """``(operands, their subscripts, output subscripts)`` of ``torch.einsum("bij,bjd->bid", a, v)`` (also
    with the operands in one list) or ``einops.einsum(a, v, "b i j, b j d -> b i d")``; subscripts are
    lists of axis names, ``...`` one name. None for a non-literal equation or the sublist form."""
    pos = positional(call)
    tf = torch_function(rule, call)
    if tf == "einsum" and pos:
        eq, ops = pos[0].value, [a.value for a in pos[1:]]
        if len(ops) == 1 and isinstance(ops[0], (cst.List, cst.Tuple)):
            ops = [e.value for e in ops[0].elements]
        split = lambda s: [t for t in s.replace("...", ".").replace(" ", "")]  # noqa: E731
    elif "einops.einsum" in rule.qnames(call.func) and len(pos) >= 2:
        eq, ops = pos[-1].value, [a.value for a in pos[:-1]]
        split = lambda s: s.replace("...", " . ").split()  # noqa: E731
    else:
        return None
    if not isinstance(eq, cst.SimpleString) or any(a.star for a in call.args) or kwarg(call, "optimize") is not None:
        return None
    text = eq.evaluated_value if isinstance(eq.evaluated_value, str) else None
    if text is None or text.count("->") > 1:
        return None
    lhs, _, rhs = text.partition("->")
    subs = [[("..." if t == "." else t) for t in split(s)] for s in lhs.split(",")]
    if len(subs) != len(ops) or any(any(not (t == "..." or t.isidentifier()) for t in s) for s in subs):
        return None
    if "->" not in text:  # implicit output: the names used once, sorted
        names = [t for s in subs for t in s]
        out = sorted(t for t in set(names) if names.count(t) == 1 and t != "...")
        return (ops, subs, out) if "..." not in names else None
    return ops, subs, [("..." if t == "." else t) for t in split(rhs)]


_SOFTMAX = frozenset({"softmax", "nn.functional.softmax", "special.softmax"})
_SOFTMAX_MODULES = frozenset({"nn.Softmax", "nn.modules.Softmax", "nn.modules.activation.Softmax"})
_KEEP = frozenset({"masked_fill", "masked_fill_", "to", "type_as", "type", "float", "half", "double", "bfloat16",
                   "contiguous", "clone", "detach", "nan_to_num"})  # values and axes unchanged (up to masking)
_KEEP_FUNCTIONS = frozenset({"nn.functional.dropout", "dropout", "masked_fill", "nan_to_num"})
_KEEP_MODULES = frozenset({"nn.Dropout", "nn.modules.dropout.Dropout", "nn.modules.Dropout", "nn.Identity"})
RENORMALISING = frozenset({"sum", "nansum", "mean", "norm", "cumsum", "amax", "max", "logsumexp", "softmax",
                           "clamp_min"})


class Weights(NamedTuple):
    call: cst.Call  # the softmax (or nn.Softmax module) call
    input: cst.BaseExpression  # what it normalises
    dim: int
    holder: cst.Call  # the call that carries ``dim``: the softmax itself or the nn.Softmax construction
    dim_node: cst.BaseExpression
    axes: List[int]  # the asked axes of the operand, as axes of the softmax output (negative)
    names: List[Tuple[str, int]]  # the names the weights went through, with the id of the value each held


def softmax_weights(rule, fn, expr, axes: List[int]) -> Optional[Weights]:
    """The softmax that ``expr`` (an operand) is the output of, with ``axes`` of ``expr`` mapped to its axes."""
    names: List[Tuple[str, int]] = []
    got = _trace(rule, fn, expr, axes, names, 0)
    return Weights(*got, names) if got is not None else None


def _trace(rule, fn, expr, axes: List[int], names: List[Tuple[str, int]], depth: int):
    if depth > 16 or expr is None:
        return None
    if isinstance(expr, cst.Name):
        v = reaching_value(rule, fn, expr.value, expr)
        names.append((expr.value, id(v)))
        return _trace(rule, fn, v, axes, names, depth + 1)
    sm = _softmax(rule, fn, expr)
    if sm is not None:
        return (expr, *sm, axes) if sm[1] is not None else None
    mapped = [source_axis(rule, fn, expr, a) for a in axes]
    if mapped and None not in mapped:
        return _trace(rule, fn, mapped[0][0], [m[1] for m in mapped], names, depth + 1)
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Multiply):  # p * mask
        got = [(_trace(rule, fn, s, axes, more, depth + 1), more, other)
               for s, other, more in ((expr.left, expr.right, []), (expr.right, expr.left, []))]
        hits = [h for h in got if h[0] is not None]
        if len(hits) != 1 or any((method_call(c) or (None, ""))[1] in RENORMALISING
                                 for c in walk(hits[0][2], cst.Call)):
            return None  # two softmaxes multiplied (a dual softmax), or a renormalising factor
        names += hits[0][1]
        return hits[0][0]
    return _trace(rule, fn, _kept(rule, fn, expr), axes, names, depth + 1)


def _softmax(rule, fn, call):
    """``(input, dim or None, call holding dim, dim node)`` when ``call`` is a softmax."""
    if not isinstance(call, cst.Call) or any(a.star for a in call.args):
        return None
    tf, mc, pos = _function(rule, call), method_call(call), positional(call)
    holder = call
    if tf in _SOFTMAX and pos:
        x, d = pos[0].value, kwarg(call, "dim") or (pos[1] if len(pos) > 1 else None)
    elif tf is None and mc and mc[1] == "softmax" and is_method_call(rule, call, {"softmax"}) and len(pos) <= 1 \
            and not (pos and kwarg(call, "dim")) and (dotted_name(mc[0]) or "").split(".")[0] not in {
                "self", *rule.ctx.names.aliases}:  # Tensor.softmax(dim), not an unresolved F.softmax(x, dim=...)
        x, d = mc[0], kwarg(call, "dim") or (pos[0] if pos else None)
    else:
        built = _built(rule, fn, call, _SOFTMAX_MODULES) if len(call.args) == 1 else []
        if len(built) != 1:
            return None
        holder, x = built[0], call.args[0].value
        d = kwarg(holder, "dim") or (positional(holder)[0] if positional(holder) else None)
    return (x, const_int(d.value), holder, d.value) if d is not None else (x, None, holder, holder)


def _kept(rule, fn, expr) -> Optional[cst.BaseExpression]:
    """The tensor ``expr`` passes on with its values' axes unchanged: dropout, masking, casts."""
    if isinstance(expr, cst.Call) and not any(a.star for a in expr.args):
        tf, mc, pos = _function(rule, expr), method_call(expr), positional(expr)
        if tf is None and is_method_call(rule, expr, _KEEP):
            return mc[0]
        if tf in _KEEP_FUNCTIONS or tf is None and len(expr.args) == 1 and _built(rule, fn, expr, _KEEP_MODULES):
            arg = kwarg(expr, "input") or (pos[0] if pos else None)
            return arg.value if arg is not None else None
    return None


def _built(rule, fn, call: cst.Call, classes) -> list:
    """The constructions of the module ``call`` calls, when every one is of ``classes`` (also ``a if c else b``)."""
    if not isinstance(call.func, (cst.Name, cst.Attribute)):
        return []
    vals = [b for v in bound_values(rule, fn, call.func, params_shadow=True)
            for b in ((v.body, v.orelse) if isinstance(v, cst.IfExp) else (v,))]
    return vals if vals and all(isinstance(v, cst.Call) and torch_function(rule, v) in classes for v in vals) else []


_LOGIT_METHODS = frozenset({"view", "reshape", "masked_fill", "masked_fill_", "float", "half", "double", "to",
                            "type_as", "transpose", "permute", "contiguous", "squeeze", "unsqueeze", "flatten",
                            "clamp"})


def projected_logits(rule, fn, expr, depth: int = 0) -> bool:
    """The logits come from a learned layer (``self.proj(x)``, ``F.linear``, a conv) or a product with a learned
    parameter (``x @ self.centers.T``), through names, reshapes, masking and arithmetic: soft-assignment scores
    (NetVLAD, mixture gates, attention pooling) whose assignment axis is normalised and items summed on purpose."""
    if depth > 12 or expr is None:
        return False
    if isinstance(expr, cst.Name):
        return projected_logits(rule, fn, reaching_value(rule, fn, expr.value, expr), depth + 1)
    if isinstance(expr, (cst.Attribute, cst.UnaryOperation)):
        return _parameter(rule, fn, expr, depth + 1) if isinstance(expr, cst.Attribute) else \
            projected_logits(rule, fn, expr.expression, depth + 1)
    if isinstance(expr, cst.BinaryOperation):
        if isinstance(expr.operator, cst.MatrixMultiply):
            return any(_parameter(rule, fn, s, depth + 1) for s in (expr.left, expr.right))
        return any(projected_logits(rule, fn, s, depth + 1) for s in (expr.left, expr.right)
                   if not isinstance(s, cst.Attribute))  # `* self.scale` is no layer
    if not isinstance(expr, cst.Call):
        return False
    tf, mc, pos = _function(rule, expr), method_call(expr), positional(expr)
    if tf is not None:
        if tf in ("matmul", "bmm", "mm", "einsum"):
            return any(_parameter(rule, fn, a.value, depth + 1) for a in pos[1 if tf == "einsum" else 0:])
        return tf.startswith("nn.functional.") and ("linear" in tf or "conv" in tf) or tf in (
            "masked_fill", "where") and any(projected_logits(rule, fn, a.value, depth + 1) for a in pos)
    if mc is not None and mc[1] in ("matmul", "bmm", "mm"):
        return any(_parameter(rule, fn, e, depth + 1) for e in [mc[0]] + [a.value for a in pos])
    if mc is not None and mc[1] in _LOGIT_METHODS:
        return projected_logits(rule, fn, mc[0], depth + 1)
    if mc is not None and dotted_name(mc[0]) == "self":
        return True  # self.proj(x), self.score(h)
    return isinstance(expr.func, cst.Name) and any(  # proj = nn.Linear(...); proj(x)
        isinstance(v, cst.Call) and (torch_function(rule, v) or "").startswith("nn.")
        for v in bound_values(rule, fn, expr.func, params_shadow=True))


def _parameter(rule, fn, expr, depth: int) -> bool:
    """``expr`` is a learned parameter (``self.centers``, possibly transposed or reshaped)."""
    while depth < 12:
        depth += 1
        if isinstance(expr, cst.Name):
            expr = reaching_value(rule, fn, expr.value, expr)
        elif isinstance(expr, cst.Attribute) and expr.attr.value in ("mT", "T"):
            expr = expr.value
        elif isinstance(expr, cst.Call) and (method_call(expr) or (None, ""))[1] in _LOGIT_METHODS | {"t", "expand"}:
            expr = method_call(expr)[0]
        else:
            return isinstance(expr, cst.Attribute) and dotted_name(expr.value) == "self"
    return False


def renormalised(rule, fn, names: List[Tuple[str, int]]) -> bool:
    """The weights are reduced somewhere in the function (``attn / attn.sum(-1, keepdim=True)``): a reduction of
    a name of the chain while it holds one of the chain's values (or a value that cannot be told)."""
    scope, held = fn.body if fn is not None else rule.ctx.module, dict(names)
    values = {v for _, v in names}
    for c in walk_own(scope, cst.Call):
        mc, pos = method_call(c), positional(c)
        recv = mc[0] if mc and mc[1] in RENORMALISING else \
            pos[0].value if pos and (torch_function(rule, c) or "") in RENORMALISING else None
        if isinstance(recv, cst.Name) and recv.value in held:
            v = reaching_value(rule, fn, recv.value, recv)
            if v is None or id(v) in values:
                return True
    return False
