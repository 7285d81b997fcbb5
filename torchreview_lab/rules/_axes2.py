"""Which axis of a ``log_softmax`` ends up at a given axis of a later tensor (TR630).

``normaliser_axis`` follows a loss input back through names (the one binding that reaches), casts and
copies (``contiguous``, ``float``, ``to``...), full slices (``x[:, :-1]``), ``log``, ``transpose``/``swapaxes``/
``swapdims``, ``permute`` and ``movedim``/``moveaxis`` (int arguments only) to the ``log_softmax`` (or
``softmax`` under a ``log``, or an ``nn.LogSoftmax`` module) that made it, or into the ``forward`` of a
document model (``model(x)``) whose every return leads to one, carrying the asked axis along. Axes are
compared only where both count the same way or the rank is known (from the loss, a ``permute`` arity, or
what built the tensor); anything else gives None.

Private module (not a rule).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import libcst as cst

from ._bindings import instance_class, reaching_value
from ._context import construction_of, last_layer
from ._contraction import rank
from ._flow import const_int
from ._torch import dotted_name, kwarg, last_part, method_call, positional, torch_function, walk_own

_KEEP = frozenset({"contiguous", "float", "double", "half", "bfloat16", "to", "cpu", "cuda", "clone", "detach",
                   "type_as", "type", "requires_grad_", "clamp", "clamp_min", "nan_to_num", "masked_fill"})
_SWAPS = frozenset({"transpose", "swapaxes", "swapdims"})
_MOVES = frozenset({"movedim", "moveaxis"})


class Normaliser(NamedTuple):
    call: cst.Call  # the log_softmax / softmax / LogSoftmax-module call
    holder: cst.Call  # the call carrying ``dim`` (the call itself, or the module's construction)
    dim_node: cst.BaseExpression
    dim: int  # the normalised axis, as written
    axis: int  # the asked axis, as an axis of the normaliser's output
    ndim: Optional[int]


def _norm(i: Optional[int], n: Optional[int]) -> Optional[int]:
    if i is None or n is None:
        return i
    return i + n if -n <= i < 0 else i if 0 <= i < n else None


def _ints(args) -> Optional[List[int]]:
    if any(a.star or a.keyword is not None for a in args):
        return None
    vals = [a.value for a in args]
    if len(vals) == 1 and isinstance(vals[0], (cst.Tuple, cst.List)):
        vals = [e.value for e in vals[0].elements]
    out = [const_int(v) for v in vals]
    return None if None in out else out


def _same_sign(*xs: int) -> bool:
    return all(x >= 0 for x in xs) or all(x < 0 for x in xs)


def _moved(rule, fn, expr, axis, n, logged, depth):
    """Through an axis-moving call: transpose/swapaxes/swapdims, permute, movedim."""
    tf, mc = torch_function(rule, expr), method_call(expr)
    name = last_part(tf) if tf is not None else mc[1] if mc is not None else ""
    if tf is not None:
        pos = positional(expr)
        x, rest = (pos[0].value, expr.args[1:]) if pos and expr.args[0] is pos[0] else (None, [])
    else:
        x, rest = (mc[0], expr.args) if mc is not None else (None, [])
    ints = _ints(rest) if x is not None and name in _SWAPS | _MOVES | {"permute"} else None
    if ints is None:
        return None
    if name == "permute":
        normed = [_norm(i, len(ints)) for i in ints]
        if n is not None and n != len(ints) or None in normed or sorted(normed) != list(range(len(ints))):
            return None
        n = len(ints)
        a = _norm(axis, n)
        return trace(rule, fn, x, _norm(ints[a], n), n, logged, depth + 1) if a is not None else None
    if len(ints) != 2:
        return None
    a, b = (_norm(i, n) for i in ints)
    if axis is None or a is None or b is None or n is None and not _same_sign(a, b, axis):
        return None
    axis = _norm(axis, n)
    if name in _SWAPS:
        return trace(rule, fn, x, b if axis == a else a if axis == b else axis, n, logged, depth + 1)
    if n is None and min(a, b, axis) < 0:
        return None
    size = n if n is not None else max(a, b, axis) + 1
    order = [i for i in range(size) if i != a]  # movedim(a, b): output axis b is input axis a
    order.insert(b, a)
    return trace(rule, fn, x, order[axis], n, logged, depth + 1)


def _normaliser(rule, fn, call, axis, n, logged):
    tf, mc, pos = torch_function(rule, call), method_call(call), positional(call)
    name = last_part(tf) if tf is not None else mc[1] if mc is not None else ""
    if name not in ("log_softmax", "softmax") or name == "softmax" and not logged or any(a.star for a in call.args):
        name, holder = "", construction_of(rule, fn, call.func) if isinstance(call.func, (cst.Name, cst.Attribute)) \
            and len(call.args) == 1 else None
        holder = last_layer(rule, holder) if holder is not None and holder is not call else None
        if holder is None or last_part(torch_function(rule, holder)) != "LogSoftmax":
            return None
        d, x = kwarg(holder, "dim") or next(iter(positional(holder)), None), call.args[0].value
    elif tf is not None:
        d, x = kwarg(call, "dim") or (pos[1] if len(pos) > 1 else None), pos[0].value if pos else None
        holder = call
    else:
        head = (dotted_name(mc[0]) or "").split(".")[0]
        if head == "self" or head in rule.ctx.names.aliases:
            return None
        d, x, holder = kwarg(call, "dim") or (pos[0] if pos else None), mc[0], call
    dim = const_int(d.value) if d is not None else None
    if dim is None:
        return None
    n = n if n is not None else rank(rule, fn, x) if x is not None else None
    return Normaliser(call, holder, d.value, dim, _norm(axis, n) if axis is not None else axis, n)


def trace(rule, fn, expr, axis: Optional[int], n: Optional[int], logged: bool = False,
          depth: int = 0) -> Optional[Normaliser]:
    """The normaliser ``expr`` comes from, with ``axis`` of ``expr`` (None: no axis may move on the way)
    as an axis of its output; ``n`` the rank when known."""
    if depth > 12 or expr is None:
        return None
    if isinstance(expr, cst.Name):
        return trace(rule, fn, reaching_value(rule, fn, expr.value, expr), axis, n, logged, depth + 1)
    if isinstance(expr, cst.Subscript):
        full = all(isinstance(e.slice, cst.Slice) for e in expr.slice)
        return trace(rule, fn, expr.value, axis, n, logged, depth + 1) if full else None
    if not isinstance(expr, cst.Call):
        return None
    tf, mc = torch_function(rule, expr), method_call(expr)
    if tf is None and mc is not None and mc[1] in _KEEP | {"log"} and not (mc[1] == "log" and expr.args):
        return trace(rule, fn, mc[0], axis, n, logged or mc[1] == "log", depth + 1)
    if tf == "log" and len(expr.args) == 1:
        return trace(rule, fn, expr.args[0].value, axis, n, True, depth + 1)
    found = _normaliser(rule, fn, expr, axis, n, logged)
    if found is not None:
        return found
    if last_part(tf or (mc[1] if mc else "")) in _SWAPS | _MOVES | {"permute"}:
        return _moved(rule, fn, expr, axis, n, logged, depth) if axis is not None else None
    cls = instance_class(rule, fn, expr.func) if isinstance(expr.func, (cst.Name, cst.Attribute)) else None
    fwd = next((f for f in cls.body.body if isinstance(f, cst.FunctionDef) and f.name.value == "forward"),
               None) if cls is not None else None
    if fwd is None:
        return None
    got = [trace(rule, fwd, r.value, axis, n, logged, depth + 1) for r in walk_own(fwd.body, cst.Return)]
    return got[0] if got and None not in got and len({(g.dim, g.axis) for g in got}) == 1 else None


def provably_other(found: Normaliser) -> bool:
    """The normalised axis is provably not the traced axis."""
    dim, axis, n = _norm(found.dim, found.ndim), found.axis, found.ndim
    if dim is None or axis is None:
        return False
    return dim != axis if n is not None or _same_sign(dim, axis) else False
