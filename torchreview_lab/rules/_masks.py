"""Attention masks: fill values, triangles and intent.

- :func:`neg_fill` / :func:`zero_fill`: a masking fill value that removes a position from a softmax
  (``-inf``, ``torch.finfo(dtype).min``, ``-1e9``) or one that does not (``0``).
- :func:`nonzero_set`: where a mask expression is True / non-zero, as a half-plane of ``d = j - i``
  (query row ``i``, key column ``j``): ``triu(ones, k)`` is ``d >= k``, ``tril(ones, k)`` is ``d <= k``,
  followed through names, ``self.<buffer>``, local helper functions, ``~``/``logical_not``/``== 0``/
  ``1 - m``, casts, views and slices, ``&``/``|`` with unknown masks (as a bound) and comparisons of
  row and column ``arange``s.
- :func:`blocked_set`: where a masking step puts ``-inf`` (``masked_fill``, ``torch.where``, additive
  ``full(-inf).triu(k)``/``m * -1e9``, a boolean ``attn_mask`` of SDPA or ``nn.MultiheadAttention``), and
  :func:`fixed_triangle`, the ``triu``/``tril`` that would make it causal.
- :func:`causal_intent` / :func:`keys_before_queries`: what the surrounding code says it means.
- :func:`mask_like`, :func:`zero_masking`, :func:`fills_masked`, :func:`drops_whole_rows`: scores masked
  by a product with a 0/1 mask or a 0 fill, followed back from a softmax through names and in-place updates.

Private module (not a rule), for TR627 and TR628.
"""
from __future__ import annotations

import io
import re
import tokenize
from typing import NamedTuple, Optional, Union

import libcst as cst
from libcst.metadata import PositionProvider

from ._bindings import reaching_value, reaching_values
from ._context import attribute_values, bound_values
from ._contraction import einsum_spec
from ._torch import (assigned_values, dotted_name, enclosing_class, enclosing_function, function_facts, is_method_call,
                     kwarg, method_call, module_functions, positional, torch_function, walk, walk_own)

def _number(e) -> Optional[float]:
    if isinstance(e, (cst.Integer, cst.Float)):
        try:
            return float(e.value.replace("_", ""))
        except ValueError:
            return None
    if isinstance(e, cst.UnaryOperation) and isinstance(e.operator, cst.Minus):
        v = _number(e.expression)
        return -v if v is not None else None
    return None


def _inf_string(e, sign: str) -> bool:
    """``float("-inf")`` (sign "-") or ``float("inf")`` (sign "")."""
    if not (isinstance(e, cst.Call) and dotted_name(e.func) == "float" and len(e.args) == 1):
        return False
    a = e.args[0].value
    return isinstance(a, cst.SimpleString) and str(a.evaluated_value).strip().lower() == sign + "inf"


def _finfo(e) -> bool:
    return isinstance(e, cst.Call) and (dotted_name(e.func) or "").endswith("finfo")


_FILL_NAME = re.compile(r"inf|neg|min|max|val|fill|big|large|huge|mask|pad|bias", re.I)  # names worth following


def neg_fill(rule, fn, e, depth: int = 0) -> bool:
    """``e`` is a fill that drops a position from a softmax: ``-inf``, ``finfo(dtype).min``,
    ``-finfo(dtype).max``, a literal <= -1e4, or a name assigned one. Structural checks only (no code
    rendering): it runs on every product and every ``masked_fill``."""
    v = _number(e)
    if v is not None:
        return v <= -1e4
    if isinstance(e, cst.Call):
        if _inf_string(e, "-"):
            return True
        arg = _number(e.args[0].value) if dotted_name(e.func) == "float" and len(e.args) == 1 else None
        return arg is not None and arg <= -1e4  # float(-1e9)
    if isinstance(e, cst.UnaryOperation) and isinstance(e.operator, cst.Minus):
        inner = e.expression
        if isinstance(inner, (cst.Name, cst.Attribute)) and (dotted_name(inner) or "").rsplit(".", 1)[-1] in ("inf", "Inf"):
            return True
        return _inf_string(inner, "") or isinstance(inner, cst.Attribute) and inner.attr.value == "max" \
            and _finfo(inner.value)
    if isinstance(e, cst.Attribute):
        return e.attr.value == "min" and _finfo(e.value)
    if isinstance(e, cst.Name) and depth < 2 and _FILL_NAME.search(e.value):
        vals = (assigned_values(rule, fn, e.value) if fn is not None else []) or assigned_values(rule, None, e.value)
        return bool(vals) and len(vals) < 4 and all(
            neg_fill(rule, enclosing_function(rule, v), v, depth + 1) for v in vals)
    return False


def zero_fill(rule, e) -> bool:
    """``0``, ``0.0``, ``False``, ``torch.zeros_like(x)``, ``x.new_zeros(...)``, ``torch.zeros(...)``."""
    if _number(e) == 0 or isinstance(e, cst.Name) and e.value == "False":
        return True
    return isinstance(e, cst.Call) and (torch_function(rule, e) in ("zeros_like", "zeros")
                                        or is_method_call(rule, e, {"new_zeros"}) is not None)


class Tri(NamedTuple):
    """The half-plane ``j - i >= k`` (``ge``) or ``j - i <= k`` (``le``)."""
    op: str
    k: int

    def complement(self) -> "Tri":
        return Tri("le", self.k - 1) if self.op == "ge" else Tri("ge", self.k + 1)

    def text(self) -> str:
        named = {("ge", 1): "j > i (the future)", ("ge", 0): "j >= i (the diagonal and the future)",
                 ("le", -1): "j < i (the past)", ("le", 0): "j <= i (the past and the diagonal)"}
        return named.get(tuple(self), f"j - i {'>=' if self.op == 'ge' else '<='} {self.k}")


class Fact(NamedTuple):
    """``tri`` is the set (``eq``), a subset (``sub``) or a superset (``sup``) of where the mask holds;
    ``origin`` built the triangle, ``flipped``/``mirrored`` say it was complemented/transposed on the way."""
    tri: Tri
    bound: str
    origin: cst.CSTNode
    flipped: bool = False
    mirrored: bool = False

    def complement(self) -> "Fact":
        return self._replace(tri=self.tri.complement(), bound={"eq": "eq", "sup": "sub", "sub": "sup"}[self.bound],
                             flipped=not self.flipped)

    def transpose(self) -> "Fact":
        return self._replace(tri=_mirror(self.tri), mirrored=not self.mirrored)

    def at_origin(self, want: Tri) -> Tri:
        """The set the origin must build for this chain to give ``want``."""
        want = want.complement() if self.flipped else want
        return _mirror(want) if self.mirrored else want


ALL = "all"  # a tensor that is non-zero everywhere (ones, a full of a non-zero value)
_KEEP = {"bool", "float", "int", "long", "byte", "half", "double", "bfloat16", "to", "type", "type_as", "cuda", "cpu",
         "detach", "contiguous", "clone", "view", "reshape", "unsqueeze", "expand", "expand_as", "view_as",
         "reshape_as", "repeat", "requires_grad_", "__getitem__"}
_ALL_FUNCS = {"ones", "ones_like"}
_FULL_FUNCS = {"full", "full_like"}
Value = Union[Fact, str, None]


def diagonal_of(call: cst.Call, pos_index: int) -> Optional[int]:
    arg = kwarg(call, "diagonal")
    pos = positional(call)
    if arg is None and len(pos) > pos_index:
        arg = pos[pos_index]
    if arg is None:
        return 0
    v = _number(arg.value)
    return int(v) if v is not None and v == int(v) else None


def full_value(rule, call: cst.Call) -> Optional[cst.BaseExpression]:
    """The fill value of ``torch.full(size, v)``/``full_like(x, v)``/``x.new_full(size, v)``/``x.fill_(v)``."""
    tf = torch_function(rule, call)
    pos = positional(call)
    if tf in _FULL_FUNCS or is_method_call(rule, call, {"new_full"}):
        arg = kwarg(call, "fill_value") or (pos[1] if len(pos) > 1 else None)
        return arg.value if arg is not None else None
    if is_method_call(rule, call, {"fill_"}) and pos:
        return pos[0].value
    return None


def nonzero_set(rule, fn, e, depth: int = 0) -> Value:
    """Where ``e`` is non-zero, as a :class:`Fact`; ``ALL`` for ones/fulls; None when unknown."""
    if depth > 8 or e is None:
        return None
    if isinstance(e, cst.Name):
        vals = reaching_values(rule, fn, e.value, e)
        if vals is None:
            vals = [] if fn is not None and e.value in function_facts(rule, fn).params else assigned_values(rule, fn, e.value)
        if fn is not None and not vals and e.value not in function_facts(rule, fn).params:
            vals = assigned_values(rule, None, e.value)
        return _agree(rule, vals, depth)
    if isinstance(e, cst.Attribute) and dotted_name(e.value) == "self":
        return _agree(rule, self_values(rule, e, e.attr.value), depth)
    if isinstance(e, cst.Attribute) and e.attr.value in ("T", "mT"):
        return _transpose(nonzero_set(rule, fn, e.value, depth + 1))
    if isinstance(e, cst.Subscript):
        ok = all(isinstance(s.slice, cst.Slice) and s.slice.lower is None and s.slice.step is None
                 or isinstance(s.slice, cst.Index) and (isinstance(s.slice.value, cst.Ellipsis)
                                                         or dotted_name(s.slice.value) == "None") for s in e.slice)
        return nonzero_set(rule, fn, e.value, depth + 1) if ok else None
    if isinstance(e, cst.UnaryOperation) and isinstance(e.operator, cst.BitInvert):
        return flip(nonzero_set(rule, fn, e.expression, depth + 1))
    if isinstance(e, cst.BinaryOperation):
        return _binary(rule, fn, e, depth)
    if isinstance(e, cst.Comparison) and len(e.comparisons) == 1:
        return _compare(rule, fn, e, depth)
    if isinstance(e, cst.Call):
        return _call(rule, fn, e, depth)
    return None


def _agree(rule, vals, depth: int) -> Value:
    got = [nonzero_set(rule, enclosing_function(rule, v), v, depth + 1) for v in vals]
    if not got or any(g is None for g in got):
        return None
    key = lambda g: g if g == ALL else (g.tri, g.bound, g.flipped, g.mirrored)  # noqa: E731
    return got[0] if len({key(g) for g in got}) == 1 else None


def flip(v: Value) -> Value:
    return v.complement() if isinstance(v, Fact) else None


def _transpose(v: Value) -> Value:
    return v.transpose() if isinstance(v, Fact) else v


def self_values(rule, node, attr: str, depth: int = 0) -> list:
    """What ``self.attr`` holds in the class around ``node``, else in its base classes of this document."""
    vals = attribute_values(rule, node, attr)
    cls = enclosing_class(rule, node)
    if vals or cls is None or depth > 3:
        return vals
    for b in cls.bases:
        name = dotted_name(b.value)
        base = next((c for c in walk_own(rule.ctx.module, cst.ClassDef) if c.name.value == name), None)
        if base is not None and base is not cls:
            vals = self_values(rule, base.body, attr, depth + 1)
            if vals:
                return vals
    return []


def _binary(rule, fn, e: cst.BinaryOperation, depth: int) -> Value:
    op = e.operator
    if isinstance(op, cst.Subtract) and _number(e.left) == 1:
        return flip(nonzero_set(rule, fn, e.right, depth + 1))  # 1 - m
    if isinstance(op, cst.Multiply) and (_number(e.left) or _number(e.right) or neg_fill(rule, fn, e.left)
                                         or neg_fill(rule, fn, e.right)):
        other = e.right if _number(e.left) or neg_fill(rule, fn, e.left) else e.left
        return nonzero_set(rule, fn, other, depth + 1)  # m * -1e9 is non-zero where m is
    if not isinstance(op, (cst.BitOr, cst.BitAnd, cst.Multiply)):
        return None
    union = isinstance(op, cst.BitOr)
    a, b = nonzero_set(rule, fn, e.left, depth + 1), nonzero_set(rule, fn, e.right, depth + 1)
    if ALL in (a, b):
        return ALL if union else (b if a == ALL else a)
    side = a if isinstance(a, Fact) else b
    if not isinstance(side, Fact):
        return None
    keeps = ("eq", "sup") if union else ("eq", "sub")
    return side._replace(bound="sup" if union else "sub") if side.bound in keeps else None


_SAME = {(cst.Equal, 1.0), (cst.NotEqual, 0.0), (cst.GreaterThan, 0.0)}
_FLIP = {(cst.Equal, 0.0), (cst.NotEqual, 1.0)}


def _compare(rule, fn, e: cst.Comparison, depth: int) -> Value:
    c = e.comparisons[0]
    right = c.comparator
    lit = 1.0 if dotted_name(right) == "True" else 0.0 if dotted_name(right) == "False" else _number(right)
    if lit is not None:
        key = (type(c.operator), lit)
        base = nonzero_set(rule, fn, e.left, depth + 1)
        return base if key in _SAME else flip(base) if key in _FLIP else None
    return _arange_compare(rule, fn, e, c)


def _call(rule, fn, e: cst.Call, depth: int) -> Value:
    tf = torch_function(rule, e)
    mc = method_call(e)
    pos = positional(e)
    if tf in ("triu", "tril") and pos or tf is None and is_method_call(rule, e, {"triu", "tril", "triu_", "tril_"}):
        base = pos[0].value if tf else mc[0]
        k = diagonal_of(e, 1 if tf else 0)
        if k is None or nonzero_set(rule, fn, base, depth + 1) != ALL:
            return None
        return Fact(Tri("ge", k) if (tf or mc[1]).startswith("triu") else Tri("le", k), "eq", e)
    if tf in _ALL_FUNCS or tf is None and is_method_call(rule, e, {"new_ones"}):
        return ALL
    fill = full_value(rule, e)
    if fill is not None:
        return ALL if _number(fill) not in (None, 0) or neg_fill(rule, fn, fill) or dotted_name(fill) == "True" else None
    if tf == "logical_not" and pos or tf is None and is_method_call(rule, e, {"logical_not"}):
        return flip(nonzero_set(rule, fn, pos[0].value if tf else mc[0], depth + 1))
    if tf is None and is_method_call(rule, e, {"eq", "ne", "gt"}) and len(pos) == 1 and _number(pos[0].value) is not None:
        key = ({"eq": cst.Equal, "ne": cst.NotEqual, "gt": cst.GreaterThan}[mc[1]], _number(pos[0].value))
        base = nonzero_set(rule, fn, mc[0], depth + 1)
        return base if key in _SAME else flip(base) if key in _FLIP else None
    if tf is None and is_method_call(rule, e, _KEEP):
        return nonzero_set(rule, fn, mc[0], depth + 1)
    swap = {"01", "10", "-2-1", "-1-2"}
    if tf is None and (is_method_call(rule, e, {"t"}) and not pos or is_method_call(rule, e, {"transpose"})
                       and "".join(rule.code_for(a.value) for a in pos).replace(" ", "") in swap):
        return _transpose(nonzero_set(rule, fn, mc[0], depth + 1))
    if tf is None:
        target = _local_function(rule, e)
        if target is not None:
            rets = [r.value for r in walk_own(target.body, cst.Return) if r.value is not None]
            return _agree(rule, rets, depth) if rets else None
    return None


def _local_function(rule, call: cst.Call) -> Optional[cst.FunctionDef]:
    """The function of this document that ``f(...)`` or ``self.f(...)`` calls."""
    if isinstance(call.func, cst.Name) and not rule.qnames(call.func) - {call.func.value}:
        return module_functions(rule).get(call.func.value)
    if isinstance(call.func, cst.Attribute) and dotted_name(call.func.value) == "self":
        cls = enclosing_class(rule, call)
        body = cls.body.body if cls is not None else []
        return next((s for s in body if isinstance(s, cst.FunctionDef) and s.name.value == call.func.attr.value), None)
    return None


def arange_axis(rule, fn, e, depth: int = 0) -> Optional[str]:
    """``"i"`` for an ``arange`` laid out as a column (``[:, None]``, ``.unsqueeze(-1)``), ``"j"`` as a row."""
    if isinstance(e, cst.Name) and depth < 4:
        vals = reaching_values(rule, fn, e.value, e)
        return arange_axis(rule, fn, vals[0], depth + 1) if vals and len(vals) == 1 else None
    if isinstance(e, cst.Call) and torch_function(rule, e) == "arange":
        return "j"
    inner = None
    if isinstance(e, cst.Subscript) and len(e.slice) == 2:
        kinds = ["n" if isinstance(s.slice, cst.Index) and dotted_name(s.slice.value) == "None" else "s" for s in e.slice]
        inner, where = e.value, {"sn": "i", "ns": "j"}.get("".join(kinds))
    elif isinstance(e, cst.Call) and is_method_call(rule, e, {"unsqueeze"}) and len(e.args) == 1:
        inner, where = method_call(e)[0], {"1": "i", "-1": "i", "0": "j"}.get(rule.code_for(e.args[0].value))
    elif isinstance(e, cst.Call) and is_method_call(rule, e, {"view", "reshape"}) and len(e.args) == 2:
        inner, where = method_call(e)[0], {"-1,1": "i", "1,-1": "j"}.get(
            ",".join(rule.code_for(a.value) for a in e.args).replace(" ", ""))
    if inner is None or where is None:
        return None
    return where if arange_axis(rule, fn, inner, depth + 1) == "j" and isinstance(inner, (cst.Name, cst.Call)) else None


_OPS = {cst.GreaterThanEqual: ("le", 0), cst.GreaterThan: ("le", -1), cst.LessThanEqual: ("ge", 0),
        cst.LessThan: ("ge", 1)}  # for ``i <op> j``


def _arange_compare(rule, fn, e: cst.Comparison, c) -> Value:
    left, right = arange_axis(rule, fn, e.left), arange_axis(rule, fn, c.comparator)
    op = _OPS.get(type(c.operator))
    if op is None or {left, right} != {"i", "j"}:
        return None
    tri = Tri(*op)
    return Fact(tri if left == "i" else _mirror(tri), "eq", e)


def _mirror(t: Tri) -> Tri:
    """``j <op> i`` read as ``i <op> j``: ``j >= i`` is ``d >= 0``."""
    return Tri("ge" if t.op == "le" else "le", -t.k)


_INTENT = re.compile(r"causal|autoregress|decoder|future|look[-_ ]?ahead|left[-_ ]?to[-_ ]?right|gpt|next[-_ ]?token|"
                     r"subsequent|peek", re.I)
_REVERSE = re.compile(r"revers|backward|right[-_ ]?to[-_ ]?left|anti[-_ ]?causal|\br2l\b", re.I)
_QUIET_TOKENS = {"reversed", "backward", "__future__"}


def _words(rule, node) -> str:
    """The names, comments and strings of ``node``'s code (the builtin ``reversed`` and ``.backward()`` left out)."""
    key = ("mask-words", id(node))
    if key not in rule.ctx.cache:
        out = []
        try:
            for tok in tokenize.generate_tokens(io.StringIO(rule.code_for(node)).readline):
                if tok.type in (tokenize.NAME, tokenize.COMMENT, tokenize.STRING) and tok.string not in _QUIET_TOKENS:
                    out.append(tok.string)
        except (tokenize.TokenError, IndentationError, SyntaxError):
            pass
        rule.ctx.cache[key] = " ".join(out)
    return rule.ctx.cache[key]


def intent_scope(rule, node) -> cst.CSTNode:
    return enclosing_class(rule, node) or enclosing_function(rule, node) or rule.ctx.module


def causal_intent(rule, *nodes) -> bool:
    """The code around ``nodes`` (their class, else function, else module) says causal and not reversed."""
    text = " ".join(_words(rule, intent_scope(rule, n)) for n in nodes if n is not None)
    return bool(_INTENT.search(text)) and not _REVERSE.search(text)


_KEY = re.compile(r"^(k|key|keys|k_\w+|key_\w+|\w+_k|\w+_key|\w+_keys)$")
_QUERY = re.compile(r"^(q|query|queries|q_\w+|query_\w+|\w+_q|\w+_query|\w+_queries)$")


def _role(rule, e) -> Optional[str]:
    names = {n.value for n in walk(e, cst.Name)} | {a.attr.value for a in walk(e, cst.Attribute)}
    key, query = any(_KEY.match(n) for n in names), any(_QUERY.match(n) for n in names)
    return "k" if key and not query else "q" if query and not key else None


def keys_before_queries(rule, scope) -> bool:
    """Somewhere in ``scope`` scores are laid out keys-first: ``k @ q.T``, ``bmm(k, q.mT)``, or an einsum
    whose output puts the key axis before the query axis."""
    for n in walk(scope, (cst.BinaryOperation, cst.Call)):
        if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.MatrixMultiply):
            pair = (n.left, n.right)
        elif isinstance(n, cst.Call) and torch_function(rule, n) in ("matmul", "bmm") and len(positional(n)) == 2:
            pair = tuple(a.value for a in positional(n))
        elif isinstance(n, cst.Call) and torch_function(rule, n) == "einsum" and einsum_spec(rule, n) is not None:
            ops, subs, out = einsum_spec(rule, n)
            roles = [_role(rule, o) for o in ops]
            if len(ops) == 2 and sorted(map(str, roles)) == ["k", "q"]:
                q, k = (subs[0], subs[1]) if roles[0] == "q" else (subs[1], subs[0])
                qi, ki = [t for t in q if t not in k and t in out], [t for t in k if t not in q and t in out]
                if len(qi) == 1 and len(ki) == 1 and out.index(ki[0]) < out.index(qi[0]):
                    return True
            continue
        else:
            continue
        if _role(rule, pair[0]) == "k" and _role(rule, pair[1]) == "q":
            return True
    return False


def _neg_full(rule, fn, e, depth: int = 0) -> bool:
    """``e`` is a tensor full of ``-inf``: ``torch.full(size, -inf)``, ``x.new_full(size, -1e9)``, ``fill_(-inf)``."""
    if isinstance(e, cst.Name) and depth < 3:
        vals = reaching_values(rule, fn, e.value, e)
        return bool(vals) and len(vals) == 1 and _neg_full(rule, fn, vals[0], depth + 1)
    fill = full_value(rule, e) if isinstance(e, cst.Call) else None
    return fill is not None and neg_fill(rule, fn, fill)


def blocked_set(rule, node) -> Optional[tuple]:
    """``(where the -inf lands, the mask expression)`` for a masking step ``node``: ``s.masked_fill(M, -inf)``
    (where ``M`` holds), ``torch.where(M, s, -inf)``/``s.where(M, -inf)`` (where it does not), ``M * -1e9`` and
    ``torch.full(size, -inf).triu(k)`` (where they are non-zero); None for anything else."""
    fn = enclosing_function(rule, node)
    if isinstance(node, cst.BinaryOperation):
        if isinstance(node.operator, cst.Multiply):
            for a, b in ((node.left, node.right), (node.right, node.left)):
                if neg_fill(rule, fn, a):
                    return nonzero_set(rule, fn, b), b
        return None
    tf, pos = torch_function(rule, node), positional(node)
    passed = _passed_mask(rule, fn, node, tf, pos)
    if passed is not None:
        return passed
    if tf is None and is_method_call(rule, node, {"masked_fill", "masked_fill_"}) or tf == "masked_fill":
        off = 0 if tf is None else 1
        mask = kwarg(node, "mask") or (pos[off] if len(pos) > off else None)
        value = kwarg(node, "value") or (pos[off + 1] if len(pos) > off + 1 else None)
        if mask is not None and value is not None and neg_fill(rule, fn, value.value):
            return nonzero_set(rule, fn, mask.value), mask.value
    elif tf == "where" and len(pos) == 3:
        if neg_fill(rule, fn, pos[2].value):
            return flip(nonzero_set(rule, fn, pos[0].value)), pos[0].value
        if neg_fill(rule, fn, pos[1].value):
            return nonzero_set(rule, fn, pos[0].value), pos[0].value
    elif tf is None and is_method_call(rule, node, {"where"}) and len(pos) == 2 and neg_fill(rule, fn, pos[1].value):
        return flip(nonzero_set(rule, fn, pos[0].value)), pos[0].value
    elif tf in ("triu", "tril") and pos or tf is None and is_method_call(rule, node, {"triu", "tril", "triu_", "tril_"}):
        base, name = (pos[0].value, tf) if tf else method_call(node)
        k = diagonal_of(node, 1 if tf else 0)
        if k is not None and _neg_full(rule, fn, base):
            return Fact(Tri("ge" if name.startswith("triu") else "le", k), "eq", node), node
    return None


_ATTENTION_MODULES = {"MultiheadAttention", "Transformer", "TransformerEncoder", "TransformerDecoder",
                      "TransformerEncoderLayer", "TransformerDecoderLayer"}
_MASK_KEYWORDS = ("attn_mask", "tgt_mask", "src_mask", "mask")


def _passed_mask(rule, fn, call: cst.Call, tf, pos) -> Optional[tuple]:
    """A boolean mask passed to ``F.scaled_dot_product_attention(attn_mask=M)`` (True takes part: blocks
    ``~M``) or to an ``nn.MultiheadAttention``/``nn.Transformer*`` module (True is masked: blocks ``M``)."""
    if tf == "nn.functional.scaled_dot_product_attention":
        arg = kwarg(call, "attn_mask") or (pos[3] if len(pos) > 3 else None)
        return (flip(nonzero_set(rule, fn, arg.value)), arg.value) if arg and is_boolean(rule, fn, arg.value) else None
    if tf is not None or not isinstance(call.func, (cst.Name, cst.Attribute)) or not any(
            kwarg(call, k) for k in _MASK_KEYWORDS):
        return None
    built = bound_values(rule, fn, call.func, params_shadow=True)
    if not built or not all(isinstance(b, cst.Call) and (torch_function(rule, b) or "").startswith("nn.")
                            and torch_function(rule, b).rsplit(".", 1)[-1] in _ATTENTION_MODULES for b in built):
        return None
    for k in _MASK_KEYWORDS:
        arg = kwarg(call, k)
        if arg is not None and is_boolean(rule, fn, arg.value):
            return nonzero_set(rule, fn, arg.value), arg.value
    return None


_BOOL_KEEP = {"view", "reshape", "unsqueeze", "expand", "expand_as", "repeat", "to", "cuda", "cpu", "detach",
              "contiguous", "clone", "triu", "tril", "triu_", "tril_", "t", "transpose"}


def is_boolean(rule, fn, e, depth: int = 0) -> bool:
    """``e`` is a boolean tensor: ``.bool()``, a comparison, ``~m``, ``logical_not``, a ``dtype=torch.bool``
    factory, or one of these moved, viewed, sliced or cut to a triangle."""
    if depth > 6:
        return False
    if isinstance(e, cst.Name):
        vals = reaching_values(rule, fn, e.value, e)
        return bool(vals) and all(is_boolean(rule, fn, v, depth + 1) for v in vals)
    if isinstance(e, (cst.Comparison, cst.UnaryOperation)):
        return isinstance(e, cst.Comparison) or isinstance(e.operator, cst.BitInvert)
    if isinstance(e, cst.Subscript):
        return is_boolean(rule, fn, e.value, depth + 1)
    if not isinstance(e, cst.Call):
        return False
    dtype = kwarg(e, "dtype")
    if dtype is not None:
        return rule.code_for(dtype.value).endswith("bool")
    tf = torch_function(rule, e)
    if tf in ("logical_not", "logical_and", "logical_or") or tf is None and is_method_call(rule, e, {"bool", "logical_not"}):
        return True
    if tf is None and is_method_call(rule, e, {"to"}) and e.args and rule.code_for(e.args[0].value).endswith("bool"):
        return True
    if tf in ("triu", "tril") and positional(e):
        return is_boolean(rule, fn, positional(e)[0].value, depth + 1)
    if tf is None and is_method_call(rule, e, _BOOL_KEEP):
        return is_boolean(rule, fn, method_call(e)[0], depth + 1)
    return False


def fixed_triangle(rule, origin, want: Tri) -> str:
    """The code of ``origin`` (a ``triu``/``tril`` call or an ``arange`` comparison) rewritten to hold on ``want``
    (``j - i >= 1`` or ``j - i <= 0``)."""
    if isinstance(origin, cst.Comparison):
        row_left = arange_axis(rule, enclosing_function(rule, origin), origin.left) == "i"
        op = {(True, "ge"): "<", (True, "le"): ">=", (False, "ge"): ">", (False, "le"): "<="}[(row_left, want.op)]
        return f"{rule.code_for(origin.left)} {op} {rule.code_for(origin.comparisons[0].comparator)}"
    tf = torch_function(rule, origin)
    old = tf or method_call(origin)[1]
    name = ("triu" if want.op == "ge" else "tril") + ("_" if old.endswith("_") else "")
    diag = "diagonal=1" if want.op == "ge" else ""
    if tf:
        prefix = rule.code_for(origin.func.value) + "." if isinstance(origin.func, cst.Attribute) else ""
        return f"{prefix}{name}({rule.code_for(positional(origin)[0].value)}{', ' + diag if diag else ''})"
    return f"{rule.code_for(method_call(origin)[0])}.{name}({diag})"


_MASK_NAME = re.compile(r"mask(?!ed)", re.I)
_NOT_A_MASK = re.compile(r"token|emb|ratio|prob|rate|value|idx|index|count|num|len|size|logit|score|weight|feat|"
                         r"fill|dim|id$|_ids?_|param|bias|scale|temp|factor|coef|alpha|beta|gamma|lambda|noise",
                         re.I)
_MASK_CASTS = {"float", "double", "half", "bfloat16", "to", "type", "type_as", "long", "int", "bool", "byte",
               "unsqueeze", "expand", "expand_as", "view", "reshape", "repeat", "squeeze", "detach", "contiguous",
               "transpose", "permute", "flatten"}
_BOOL_MAKERS = {"eq", "ne", "gt", "lt", "ge", "le", "logical_not", "logical_and", "logical_or", "isin", "bool",
                "greater", "less", "not_equal", "equal"}


def _mask_name(name: str) -> bool:
    return bool(_MASK_NAME.search(name)) and not _NOT_A_MASK.search(name)


def mask_like(rule, fn, m, other=None, depth: int = 0) -> bool:
    """``m`` is a 0/1 or boolean mask (a name with ``mask`` in it, a comparison, ``ids.ne(pad)``, either cast,
    unsqueezed or sliced) that reads nothing of ``other`` (``s * (s > 0)`` is a ReLU, not a mask)."""
    if other is not None and {n.value for n in walk(m, cst.Name)} & {n.value for n in walk(other, cst.Name)} - {"self"}:
        return False
    if depth > 4:
        return False
    if isinstance(m, cst.Name):
        if _mask_name(m.value):
            return True
        v = reaching_values(rule, fn, m.value, m)
        return bool(v) and len(v) == 1 and mask_like(rule, fn, v[0], None, depth + 1)
    if isinstance(m, cst.Attribute):
        return _mask_name(m.attr.value)
    if isinstance(m, cst.Subscript):
        return mask_like(rule, fn, m.value, None, depth + 1)
    if isinstance(m, cst.Comparison):
        return all(not isinstance(c.operator, (cst.Is, cst.IsNot, cst.In, cst.NotIn)) for c in m.comparisons)
    if isinstance(m, cst.UnaryOperation) and isinstance(m.operator, cst.BitInvert):
        return mask_like(rule, fn, m.expression, None, depth + 1)
    if isinstance(m, cst.BinaryOperation) and isinstance(m.operator, cst.Subtract) and _number(m.left) == 1:
        return mask_like(rule, fn, m.right, None, depth + 1)
    if isinstance(m, cst.Call):
        tf = torch_function(rule, m)
        if tf is not None:
            return tf in _BOOL_MAKERS
        if is_method_call(rule, m, _BOOL_MAKERS):
            return True
        if is_method_call(rule, m, _MASK_CASTS):
            return mask_like(rule, fn, method_call(m)[0], None, depth + 1)
    return False


def fills_masked(rule, fn, e, depth: int = 0) -> bool:
    """An added/subtracted term that pushes masked scores down: it holds ``-inf``/``finfo``/a literal of
    magnitude >= 1e4, a ``log`` (of a mask), or a name with ``mask`` in it (an additive mask), also
    through the names it is assigned from."""
    for n in walk(e):
        if isinstance(n, cst.Name) and fn is not None and depth < 3:
            vals = reaching_values(rule, fn, n.value, n)
            if vals and any(fills_masked(rule, fn, v, depth + 1) for v in vals):
                return True
        if isinstance(n, (cst.Integer, cst.Float)) and abs(_number(n) or 0) >= 1e4:
            return True
        if isinstance(n, (cst.Name, cst.Attribute)):
            name = n.value if isinstance(n, cst.Name) else n.attr.value
            if name in ("inf", "finfo", "log", "neg_inf") or _MASK_NAME.search(name):
                return True
        if isinstance(n, cst.Call) and dotted_name(n.func) == "float" and "inf" in rule.code_for(n):
            return True
        if isinstance(n, cst.Name) and neg_fill(rule, fn, n):
            return True
    return False


def _trailing_new_axis(rule, fn, m, dim: Optional[int], depth: int = 0) -> bool:
    """``m`` gains a size-1 axis where the softmax normalises (``dim``; None for the last axis). A new last
    axis counts for any non-negative ``dim``, whose rank is unknown."""
    if depth > 4:
        return False
    last = dim is None or dim == -1 or dim >= 0
    if isinstance(m, cst.Name):
        v = reaching_values(rule, fn, m.value, m)
        return bool(v) and len(v) == 1 and _trailing_new_axis(rule, fn, v[0], dim, depth + 1)
    if isinstance(m, cst.Subscript):
        parts = ["n" if isinstance(s.slice, cst.Index) and dotted_name(s.slice.value) == "None" else
                 "e" if isinstance(s.slice, cst.Index) and isinstance(s.slice.value, cst.Ellipsis) else "s" for s in m.slice]
        if parts[-1] == "n" and last:
            return True
        if dim is not None and dim < 0 and -dim <= len(parts) and "e" not in parts[len(parts) + dim + 1:]:
            return parts[len(parts) + dim] == "n"
        return dim is not None and 0 <= dim < len(parts) and "e" not in parts[:dim] and parts[dim] == "n"
    if isinstance(m, cst.Call) and is_method_call(rule, m, {"unsqueeze"}) and len(m.args) == 1:
        k = _number(m.args[0].value)
        return k is not None and (k == dim or k == -1 and last)
    if isinstance(m, cst.Call) and is_method_call(rule, m, _MASK_CASTS - {"unsqueeze", "transpose", "permute", "view",
                                                                        "reshape", "flatten", "squeeze"}):
        return _trailing_new_axis(rule, fn, method_call(m)[0], dim, depth + 1)
    return False


def drops_whole_rows(rule, fn, m, dim) -> bool:
    """The mask ``m`` has a new axis of size 1 where the softmax normalises (``mask[..., None]`` or
    ``mask.unsqueeze(-1)`` with ``dim=-1``): it blanks whole rows, which the softmax does not mix."""
    d = _number(dim) if dim is not None else None
    for part in walk(m):
        if isinstance(part, (cst.Subscript, cst.Call, cst.Name)) and _trailing_new_axis(
                rule, fn, part, int(d) if d is not None else None):
            return True
    return False


_THROUGH = {"float", "double", "half", "bfloat16", "to", "type_as", "contiguous", "clone", "div", "__truediv__", "mul"}


def zero_masking(rule, fn, e, depth: int = 0):
    """``(masking node, tensor, mask)`` when ``e`` was masked by a 0; ``"fill"`` when a -inf-like fill
    was met first; None when the trail is lost."""
    if depth > 8 or e is None:
        return None
    if isinstance(e, cst.Name):
        step = _inplace(rule, fn, e)
        if step is not None:
            return step
        return zero_masking(rule, fn, reaching_value(rule, fn, e.value, e), depth + 1)
    if isinstance(e, cst.UnaryOperation) and isinstance(e.operator, cst.Minus):
        return zero_masking(rule, fn, e.expression, depth + 1)
    if isinstance(e, cst.BinaryOperation):
        op = e.operator
        if isinstance(op, cst.Multiply):
            hit = _multiplied(rule, fn, e, e.left, e.right)
            return hit or zero_masking(rule, fn, e.left, depth + 1) or zero_masking(rule, fn, e.right, depth + 1)
        if isinstance(op, cst.Divide):
            return zero_masking(rule, fn, e.left, depth + 1)
        if isinstance(op, (cst.Add, cst.Subtract)):
            if fills_masked(rule, fn, e.left) or fills_masked(rule, fn, e.right):
                return "fill"
            return zero_masking(rule, fn, e.left, depth + 1) or zero_masking(rule, fn, e.right, depth + 1)
        return None
    if not isinstance(e, cst.Call):
        return None
    step = _step(rule, fn, e)
    if step is not None:
        return step
    if is_method_call(rule, e, _THROUGH):
        return zero_masking(rule, fn, method_call(e)[0], depth + 1)
    return None

def _multiplied(rule, fn, node, a, b):
    for x, m in ((a, b), (b, a)):
        if _number(x) is None and not fills_masked(rule, fn, x) and mask_like(rule, fn, m, x) \
                and not mask_like(rule, fn, x, m):
            return node, x, m
    return None

def _step(rule, fn, e: cst.Call):
    """What one call does to its tensor: a 0 fill or a mask product (a tuple), another fill ("fill")."""
    tf, pos = torch_function(rule, e), positional(e)
    if is_method_call(rule, e, {"masked_fill", "masked_fill_"}) and len(pos) == 2:
        x, cond, value = method_call(e)[0], pos[0].value, pos[1].value
        return (e, x, cond) if zero_fill(rule, value) and mask_like(rule, fn, cond, x) else "fill"
    if tf == "where" and len(pos) == 3:
        cond, a, b = (p.value for p in pos)
        if zero_fill(rule, b) and mask_like(rule, fn, cond, a) or zero_fill(rule, a) and mask_like(rule, fn, cond, b):
            return e, (b if zero_fill(rule, a) else a), cond
        return "fill"
    if is_method_call(rule, e, {"mul", "mul_"}) and len(pos) == 1:
        return _multiplied(rule, fn, e, method_call(e)[0], pos[0].value)
    if tf == "mul" and len(pos) == 2:
        return _multiplied(rule, fn, e, pos[0].value, pos[1].value)
    return None

def _inplace(rule, fn, name: cst.Name):
    """The last in-place update of ``name`` between its binding and this use: ``s *= mask``,
    ``s.masked_fill_(~mask, 0)`` (a tuple), ``s.masked_fill_(m, -inf)``/``s += bias`` ("fill")."""
    if fn is None:
        return None
    use = rule.line_of(name)
    vals = [v for v in [reaching_value(rule, fn, name.value, name)] if v is not None]
    start = rule.line_of(vals[0]) if vals else 0
    last = None
    for n in walk_own(fn.body, (cst.AugAssign, cst.Call)):
        line = rule.get_metadata(PositionProvider, n).start.line
        if not start < line < use:
            continue
        if isinstance(n, cst.AugAssign) and isinstance(n.target, cst.Name) and n.target.value == name.value:
            if isinstance(n.operator, cst.MultiplyAssign) and mask_like(rule, fn, n.value, n.target):
                last = (n, n.target, n.value)
            elif isinstance(n.operator, (cst.AddAssign, cst.SubtractAssign)) and fills_masked(rule, fn, n.value):
                last = "fill"
        elif isinstance(n, cst.Call) and is_method_call(rule, n, {"masked_fill_", "mul_"}) \
                and isinstance(method_call(n)[0], cst.Name) and method_call(n)[0].value == name.value:
            last = _step(rule, fn, n) or last
    return last
