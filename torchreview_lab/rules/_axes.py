"""Which axis an expression adds by broadcasting: ``s.unsqueeze(k)``, ``torch.unsqueeze(s, k)``,
``s[:, :, None]``, ``s[..., None, :]``. Axes before an ``...`` (or with none) count from the left, after
it from the right; a scalar index (an int, a loop variable, ``t - 1``) drops an axis, a tensor index
makes the rank unknown."""
from __future__ import annotations

from typing import List, Optional, Set, Tuple

import libcst as cst

from ._flow import const_int
from ._torch import kwarg, method_call, positional, torch_function, walk


def unsqueezed(rule, expr: cst.BaseExpression, scalars: Set[str]) -> Optional[Tuple[cst.BaseExpression, int]]:
    """``(s, k)`` when ``expr`` is ``s`` with one new axis at ``k``; for an index that also selects
    (``alpha[:, t - 1, :, None]``) ``s`` is the whole subscript. ``scalars``: names known to hold ints."""
    if isinstance(expr, cst.Call):
        tf, mc, args = torch_function(rule, expr), method_call(expr), positional(expr)
        if tf == "unsqueeze" and len(args) == 2 and const_int(args[1].value) is not None:
            return args[0].value, const_int(args[1].value)
        if tf is None and mc is not None and mc[1] == "unsqueeze":
            k = kwarg(expr, "dim") or (args[0] if args else None)
            if k is not None and const_int(k.value) is not None:
                return mc[0], const_int(k.value)
        return None
    if not isinstance(expr, cst.Subscript):
        return None
    kinds = [_kind(e.slice, scalars) for e in expr.slice]
    if kinds.count("none") != 1 or kinds.count("...") > 1 or "?" in kinds:
        return None
    i = kinds.index("none")
    if "..." in kinds and i > kinds.index("..."):
        k = -(1 + kinds[i + 1:].count("slice"))
    else:
        k = kinds[:i].count("slice")
    whole = all(kd in ("none", "...") or kd == "slice" and _full(e.slice) for kd, e in zip(kinds, expr.slice))
    return (expr.value if whole else expr), k


def _full(s: cst.BaseSlice) -> bool:
    return isinstance(s, cst.Slice) and s.lower is None and s.upper is None and s.step is None


def _kind(s: cst.BaseSlice, scalars: Set[str]) -> str:
    if isinstance(s, cst.Slice):
        return "slice"
    v = s.value
    if isinstance(v, cst.Ellipsis):
        return "..."
    if isinstance(v, cst.Name) and v.value == "None":
        return "none"
    names: List[str] = [n.value for n in walk(v, cst.Name)]
    if const_int(v) is not None or all(n in scalars for n in names) and not any(
            isinstance(x, (cst.Call, cst.Subscript, cst.Attribute, cst.Tuple, cst.List)) for x in walk(v)):
        return "scalar"
    return "?"


def store_base(e) -> str | None:
    """``alpha`` for ``alpha``, ``alpha[:, t]`` or ``alphas[t - k]``; None for anything else."""
    e = getattr(e, "value", e) if isinstance(e, (cst.Element, cst.StarredElement)) else e
    while isinstance(e, cst.Subscript):
        e = e.value
    return e.value if isinstance(e, cst.Name) else None


def other_axis(k: int) -> int:
    """Where a (batch, state) or (state,) tensor's own entries sit next to the axis it was unsqueezed at."""
    if k < 0:
        return -2 if k == -1 else k + 1
    return k - 1 if k >= 2 else k + 1
