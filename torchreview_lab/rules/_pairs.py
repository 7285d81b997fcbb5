"""Helpers for pairwise (i, j) tensors and position/length conventions (TR101, TR106, TR107, TR601).

- :func:`pairwise_producer`: an expression that builds every (i, j) pair of two position axes
  (``q @ k.transpose(-2, -1)``, ``torch.cdist(x, x)``, ``s[:, :, None] + e[:, None, :]``, einsum ``id,jd->ij``).
- :func:`band_names`: names bound from a band/window mask over positions (``(i - j).abs() <= w``,
  ``width < max_width``), the sign that only O(T * w) of the pairs are used.
- :func:`edge_list_indices`: ``adj[edge_index[1], edge_index[0]] = 1``: two index tensors that are the rows of
  one edge list (COO), the sign that a dense N x N matrix holds a sparse graph.
- :func:`documented_range`: ``seg_len: (N,) in 1..K`` -> ``"K"``, the documented top of a value range.
"""
from __future__ import annotations

import re
from typing import Optional, Set, Tuple

import libcst as cst

from ._flow import comment_and_doc_text, const_int, documented_shapes
from ._torch import assigned_values, method_call, names_in, torch_function, walk, walk_own

_TRANSPOSE = frozenset({"transpose", "swapaxes", "swapdims", "permute"})
_WRAPPERS = frozenset({"view", "reshape", "expand", "expand_as", "unsqueeze", "long", "int", "to", "contiguous",
                       "clone", "type", "squeeze", "flatten"})


def _broadcast_axis(e) -> Optional[Tuple[cst.BaseExpression, tuple]]:
    """``(s, (2,))`` for ``s[:, :, None]``; ``(s, (-1,))`` for ``s.unsqueeze(-1)``; None otherwise."""
    if isinstance(e, cst.Subscript):
        pos = tuple(i for i, s in enumerate(e.slice) if isinstance(s.slice, cst.Index)
                    and isinstance(s.slice.value, cst.Name) and s.slice.value.value == "None")
        rest = [s for i, s in enumerate(e.slice) if i not in pos]
        if pos and all(isinstance(s.slice, cst.Slice) and s.slice.lower is None and s.slice.upper is None
                       or isinstance(s.slice, cst.Index) and isinstance(s.slice.value, cst.Ellipsis) for s in rest):
            return e.value, pos
    mc = method_call(e)
    if mc and mc[1] == "unsqueeze" and len(e.args) == 1 and const_int(e.args[0].value) is not None:
        return mc[0], (const_int(e.args[0].value),)
    return None


def outer_pair(e) -> Optional[Tuple[str, str]]:
    """``("s", "e")`` for ``s[:, :, None] + e[:, None, :]`` (an outer operation of two position vectors)."""
    if not (isinstance(e, cst.BinaryOperation) and isinstance(e.operator, (cst.Add, cst.Subtract, cst.Multiply))):
        return None
    lp, rp = _broadcast_axis(e.left), _broadcast_axis(e.right)
    if lp and rp and lp[1] != rp[1]:
        return cst.Module(body=[]).code_for_node(lp[0]), cst.Module(body=[]).code_for_node(rp[0])
    return None


def _transposed(rule, e) -> bool:
    if isinstance(e, cst.Attribute) and e.attr.value in ("mT", "T"):
        return True
    mc = method_call(e) if isinstance(e, cst.Call) else None
    return bool(mc and mc[1] in _TRANSPOSE or isinstance(e, cst.Call) and torch_function(rule, e) == "transpose")


def pairwise_producer(rule, e) -> Optional[str]:
    """A short description when ``e`` builds all (i, j) pairs of two position axes, else None."""
    if isinstance(e, cst.BinaryOperation) and isinstance(e.operator, cst.MatrixMultiply) and _transposed(rule, e.right):
        return "the full score matrix `q @ k^T`"
    if isinstance(e, cst.Call):
        tf = torch_function(rule, e)
        if tf == "cdist":
            return "every pairwise distance (`cdist`)"
        if tf in ("matmul", "bmm") and len(e.args) >= 2 and _transposed(rule, e.args[1].value):
            return "the full score matrix `q @ k^T`"
        if tf == "einsum" and e.args and isinstance(e.args[0].value, cst.SimpleString):
            spec = e.args[0].value.evaluated_value.replace(" ", "")
            ins, _, out = spec.partition("->")
            parts = ins.split(",")
            if len(parts) == 2 and len(out) >= 2 and out[-2] in parts[0] and out[-1] in parts[1] \
                    and out[-2] not in parts[1] and out[-1] not in parts[0]:
                return "every (i, j) pair (`einsum`)"
    if outer_pair(e):
        return "every (i, j) pair by an outer broadcast"
    return None


def _positions(rule, fn, e, depth: int = 0) -> bool:
    """``e`` is a vector of positions: ``torch.arange(T)`` or a name bound from one."""
    if isinstance(e, cst.Call) and torch_function(rule, e) == "arange":
        return True
    if isinstance(e, cst.Name) and depth < 2:
        vals = assigned_values(rule, fn, e.value)
        return len(vals) == 1 and _positions(rule, fn, vals[0], depth + 1)
    return False


def _one_value(rule, fn, e):
    """The one value a plain name is bound from (``i = torch.arange(T)[:, None]``), else ``e`` itself."""
    vals = assigned_values(rule, fn, e.value) if isinstance(e, cst.Name) else ()
    return vals[0] if len(vals) == 1 else e


def position_difference(rule, fn, e, depth: int = 0) -> bool:
    """``i[:, None] - i[None, :]`` over positions (or a name bound from one; ``.abs()`` allowed)."""
    mc = method_call(e) if isinstance(e, cst.Call) else None
    if mc and mc[1] == "abs" or isinstance(e, cst.Call) and (torch_function(rule, e) == "abs" or
                                                            isinstance(e.func, cst.Name) and e.func.value == "abs"):
        inner = mc[0] if mc and mc[1] == "abs" else (e.args[0].value if e.args else None)
        return inner is not None and position_difference(rule, fn, inner, depth)
    if isinstance(e, cst.BinaryOperation) and isinstance(e.operator, cst.Subtract):
        sides = [_broadcast_axis(_one_value(rule, fn, s)) for s in (e.left, e.right)]
        if all(sides) and sides[0][1] != sides[1][1]:
            return all(_positions(rule, fn, s[0]) for s in sides)
        return False
    if isinstance(e, cst.Name) and depth < 2:
        vals = assigned_values(rule, fn, e.value)
        return len(vals) == 1 and position_difference(rule, fn, vals[0], depth + 1)
    return False


def _band_comparison(rule, fn, c: cst.Comparison) -> bool:
    """``d <= w`` / ``d < w`` with ``d`` a position difference and ``w`` not 0 (``>= 0`` is a causal mask)."""
    if len(c.comparisons) != 1:
        return False
    op, right = c.comparisons[0].operator, c.comparisons[0].comparator
    if not isinstance(op, (cst.LessThan, cst.LessThanEqual, cst.GreaterThan, cst.GreaterThanEqual)):
        return False
    return const_int(right) not in (0, 1, -1) and position_difference(rule, fn, c.left)  # ``d >= 0``: causal


def _triangular_band(rule, e) -> bool:
    """``ones.triu(-w).tril(w)`` / ``torch.tril(torch.triu(m, diagonal=-w), diagonal=w)``: two triangles = a band."""
    kinds = set()
    for c in walk(e, cst.Call):
        mc, tf = method_call(c), torch_function(rule, c)
        kind = tf if tf in ("triu", "tril") else (mc[1] if mc and mc[1] in ("triu", "tril") else None)
        if kind:
            kinds.add(kind)
    return kinds == {"triu", "tril"}


def band_names(rule, fn) -> Set[str]:
    """Names bound (directly or by a later combination) from a band mask over positions."""
    key = ("band-names", id(fn))
    if key not in rule.ctx.cache:
        out: Set[str] = set()
        assigns = list(walk_own(fn.body, cst.Assign)) if fn is not None else []
        for _ in range(2):
            for a in assigns:
                if any(_band_comparison(rule, fn, c) for c in walk(a.value, cst.Comparison)) or _triangular_band(rule, a.value) or (out and names_in(a.value) & out
                                                                       and not method_call(a.value)):
                    out |= {t.target.value for t in a.targets if isinstance(t.target, cst.Name)}
        rule.ctx.cache[key] = out
    return rule.ctx.cache[key]


def edge_list_indices(rule, fn, sub: cst.Subscript) -> bool:
    """``adj[E[1], E[0]]`` or ``adj[src, dst]`` with ``src, dst = E``: both indices are rows of one edge list."""
    idx = [e.slice.value for e in sub.slice if isinstance(e.slice, cst.Index)]
    if len(idx) != 2 or len(sub.slice) != 2:
        return False
    roots = []
    for i in idx:
        if isinstance(i, cst.Subscript) and len(i.slice) == 1 and isinstance(i.slice[0].slice, cst.Index) \
                and const_int(i.slice[0].slice.value) in (0, 1):
            roots.append(rule.code_for(i.value))
        elif isinstance(i, cst.Name):
            root = _unpacked_from(fn, i.value)
            if root is None:
                return False
            roots.append(root)
        else:
            return False
    return roots[0] == roots[1]


def filled_from_edge_list(rule, fn, name: str) -> bool:
    """``name[E[1], E[0]] = 1`` (or ``+=``, ``name.index_put_((src, dst), w)``) somewhere in ``fn``."""
    for n in walk_own(fn.body) if fn is not None else ():
        targets = [t.target for t in n.targets] if isinstance(n, cst.Assign) else [n.target] if isinstance(n, cst.AugAssign) else []
        if any(isinstance(t, cst.Subscript) and isinstance(t.value, cst.Name) and t.value.value == name
               and edge_list_indices(rule, fn, t) for t in targets):
            return True
        mc = method_call(n) if isinstance(n, cst.Call) else None
        if mc and mc[1] in ("index_put_", "index_put") and isinstance(mc[0], cst.Name) and mc[0].value == name \
                and n.args and isinstance(n.args[0].value, cst.Tuple):
            elems = [cst.SubscriptElement(cst.Index(e.value)) for e in n.args[0].value.elements]
            if edge_list_indices(rule, fn, cst.Subscript(value=mc[0], slice=elems)):
                return True
    return False


def _unpacked_from(fn, name: str) -> Optional[str]:
    for a in walk_own(fn.body, cst.Assign) if fn is not None else ():
        for t in a.targets:
            if isinstance(t.target, (cst.Tuple, cst.List)) and len(t.target.elements) == 2 \
                    and name in names_in(t.target) and isinstance(a.value, (cst.Name, cst.Attribute)):
                return cst.Module(body=[]).code_for_node(a.value)
    return None


_RANGE = r"(?:in|within|from|between)\s*[\[(]?\s*1\s*(?:\.\.\.?|,|to|and|-)\s*(\w+)\s*[\])]?"


def documented_range(rule, fn, name: str) -> Optional[str]:
    """``"K"`` when the function's docs say ``name ... in 1..K`` (or ``[1, K]``, ``1 <= name <= K``)."""
    text = comment_and_doc_text(rule, fn) if fn is not None else ""
    for part in re.split(r"[;\n]", text):
        m = re.search(rf"\b{re.escape(name)}\b[^;\n]*?{_RANGE}", part) or \
            re.search(rf"\b1\s*<=\s*{re.escape(name)}\s*<=\s*(\w+)", part)
        if m:
            return m.group(1)
    return None


def dim_size_doc(rule, fn, arr: str, dim: int) -> Optional[str]:
    """The documented size of ``arr``'s dimension ``dim`` (docstring/comment ``arr: (K, C)`` or a trailing
    comment ``arr = ...  # (B, T, D)`` on its one assignment)."""
    dims = documented_shapes(comment_and_doc_text(rule, fn)).get(arr) if fn is not None else None
    if dims is None and fn is not None:
        for line in rule.code_for(fn).splitlines():
            m = re.match(rf"\s*{re.escape(arr)}\s*=[^#]*#\s*[\(\[]([\w\s,]+)[\)\]]", line)
            if m:
                dims = [d.strip() for d in m.group(1).split(",")]
                break
    return dims[dim] if dims and dim < len(dims) and dims[dim] != "?" else None


def strip_wrappers(e):
    """``lengths`` for ``lengths.view(-1, 1, 1).expand(-1, 1, D)``, ``lengths[:, None]``, ``lengths.long()``."""
    while True:
        mc = method_call(e) if isinstance(e, cst.Call) else None
        if mc and mc[1] in _WRAPPERS:
            e = mc[0]
        elif isinstance(e, cst.Subscript) and all(
                isinstance(s.slice, cst.Slice) or isinstance(s.slice.value, (cst.Ellipsis,))
                or isinstance(s.slice.value, cst.Name) and s.slice.value.value == "None" for s in e.slice):
            e = e.value
        else:
            return e


def expand_dims(e) -> Optional[list]:
    """The size arguments of ``x.expand(B, T, K, C, C)`` / ``x.expand((B, T, ...))``; None for other expressions."""
    mc = method_call(e) if isinstance(e, cst.Call) else None
    if not mc or mc[1] != "expand" or any(a.star or a.keyword for a in e.args):
        return None
    if len(e.args) == 1 and isinstance(e.args[0].value, (cst.Tuple, cst.List)):
        return [x.value for x in e.args[0].value.elements]
    return [a.value for a in e.args]


_LENGTH_NAME = re.compile(r"(seq_|src_|tgt_|input_|text_|target_|audio_|x_|)(lengths?|lens|seq_len|n_tokens|num_tokens)")


def count_index(rule, node) -> Optional[Tuple[cst.BaseExpression, int, str]]:
    """``(arr, dim, "lengths")`` for ``arr.gather(1, lengths[..])``, ``arr.index_select(0, n)``,
    ``torch.gather(arr, 1, ..)``, ``arr.take_along_dim(.., dim=1)`` or ``arr[torch.arange(B), lengths]``: a
    plain name used (through views only) as a position index."""
    arr = dim = idx = None
    if isinstance(node, cst.Call):
        args, tf, mc = [a.value for a in node.args if not a.keyword], torch_function(rule, node), method_call(node)
        kw = {a.keyword.value: a.value for a in node.args if a.keyword}
        if tf in ("gather", "index_select", "take_along_dim") and len(args) >= 2:
            arr, rest = args[0], args[1:]
        elif tf is None and mc and mc[1] in ("gather", "index_select", "take_along_dim"):
            arr, rest = mc[0], args
        else:
            return None
        if mc and mc[1] == "take_along_dim" or tf == "take_along_dim":
            idx, dim = (rest[0] if rest else kw.get("indices")), (rest[1] if len(rest) > 1 else kw.get("dim"))
        else:
            dim, idx = (rest[0] if rest else kw.get("dim")), (rest[1] if len(rest) > 1 else kw.get("index"))
        dim = const_int(dim) if dim is not None else None
    elif isinstance(node, cst.Subscript) and len(node.slice) == 2 and all(isinstance(e.slice, cst.Index) for e in node.slice):
        first = node.slice[0].slice.value
        if isinstance(first, cst.Call) and (torch_function(rule, first) == "arange"
                                            or isinstance(first.func, cst.Name) and first.func.value == "range"):
            arr, dim, idx = node.value, 1, node.slice[1].slice.value
    if arr is None or idx is None or dim is None or dim < 0:
        return None
    base = strip_wrappers(idx)
    return (arr, dim, base.value) if isinstance(base, cst.Name) else None


def count_top(rule, fn, name: str) -> Optional[str]:
    """The top of ``name``'s value range when it counts from 1: the documented ``N`` of ``in 1..N``, or ``""``
    for a length-like name (``lengths``, ``seq_lens``) that is a parameter or a count (``mask.sum(1)``)."""
    vals = assigned_values(rule, fn, name)
    if any("- 1" in rule.code_for(v).replace("-1", "- 1") or "argmax" in rule.code_for(v) or "clamp" in rule.code_for(v)
           for v in vals):
        return None
    top = documented_range(rule, fn, name)
    if top:
        return top
    from ._torch import function_facts
    param = fn is not None and name in function_facts(rule, fn).params
    if _LENGTH_NAME.fullmatch(name) and (param and not vals or vals and all(".sum(" in rule.code_for(v) for v in vals)):
        return ""
    return None


def plus_one_axis(rule, fn, arr, dim: int) -> bool:
    """``arr`` was made with ``N + 1`` entries on ``dim`` (``torch.full((B, T + 1, C), ...)``)."""
    from ._torch import shape_dims
    for v in assigned_values(rule, fn, getattr(arr, "value", "")):
        tf = torch_function(rule, v) if isinstance(v, cst.Call) else None
        dims = shape_dims(rule, v, tf) if tf else None
        if dims and len(dims) > dim and rule.code_for(dims[dim]).replace(" ", "").endswith("+1"):
            return True
    return False
