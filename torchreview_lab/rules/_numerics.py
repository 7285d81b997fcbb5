"""Numeric facts about tensor expressions, for the numerical-stability rules (TR201-TR213) and the
per-step cost of syncs (TR404): which values are max-shifted, which are float16, which float constants
overflow float16, how a prefix sum is kept, how many times a literal loop runs.

Private module (not a rule). Everything works on libcst nodes plus the asking rule's metadata.
"""
from __future__ import annotations

import re
from typing import Optional

import libcst as cst

from ._flow import comment_and_doc_text, const_int, is_shifted_or_bounded
from ._torch import assigned_values, enclosing_class, enclosing_function, is_method_call, method_call, torch_function, walk

FP16_MAX = 65504.0
# Methods that keep a tensor's dtype and values (reshapes, views, copies) or its dtype (elementwise maths).
SAME_VALUES = frozenset({"unsqueeze", "squeeze", "view", "reshape", "expand", "expand_as", "view_as", "detach",
                         "contiguous", "clone", "transpose", "permute", "flatten", "t"})
SAME_DTYPE = SAME_VALUES | {"abs", "neg", "relu", "masked_fill", "clamp", "sqrt", "mul", "add", "sub", "div"}
_MAX_LIKE = {"max", "amax", "maximum", "fmax", "logsumexp", "cummax"}
_FP16_DTYPES = {"torch.float16", "torch.half", "float16", "half", "torch.HalfTensor", "torch.cuda.HalfTensor"}
# Documentation or code that says values are float16 (bfloat16 has float32's range: not evidence).
_FP16_TEXT = re.compile(r"(?<!b)\b(fp16|float16|half[- ]precision|autocast|mixed[- ]precision)\b|\.half\(\)", re.I)
_FP16_CODE = re.compile(r"\bautocast\b|\bGradScaler\b|\.half\(\)|torch\.(float16|half)\b|\bcuda\.amp\b")


def strip_views(rule, expr: cst.BaseExpression) -> cst.BaseExpression:
    """``m`` for ``m.unsqueeze(-1)``, ``m[..., None]``, ``m.detach()``: the same values, reshaped."""
    while True:
        if isinstance(expr, cst.Subscript):
            expr = expr.value
        elif isinstance(expr, cst.Call) and is_method_call(rule, expr, SAME_VALUES | {"values"}):
            expr = method_call(expr)[0]
        elif isinstance(expr, cst.Attribute) and expr.attr.value == "values":  # x.max(dim).values
            expr = expr.value
        else:
            return expr


def is_max_like(rule, fn, expr, depth: int = 0) -> bool:
    """``expr`` is a maximum (``x.amax(-1)``, ``torch.maximum(m, s.amax(-1))``, ``logsumexp``), possibly
    reshaped, or a name assigned only such values."""
    expr = strip_views(rule, expr)
    if isinstance(expr, cst.Call):
        return torch_function(rule, expr) in _MAX_LIKE or bool(is_method_call(rule, expr, _MAX_LIKE))
    if isinstance(expr, cst.Name) and depth < 3:
        vals = assigned_values(rule, fn, expr.value)
        return bool(vals) and all(is_max_like(rule, fn, v, depth + 1) for v in vals)
    return False


def shifted(rule, fn, expr, strict: bool = False, depth: int = 0) -> bool:
    """``expr`` is safe to exponentiate: max-shifted (``s - m.unsqueeze(-1)`` with ``m`` a running
    maximum included), negative by construction, clamped, or a log-probability. ``strict`` (the caller
    renormalises ``exp(expr)`` by its own sum, so ``expr`` is an unnormalised log-score): a ``log_``
    name only counts as a log-probability when nothing in the function assigns it."""
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Subtract):
        if is_max_like(rule, fn, expr.right):
            return True
    if isinstance(expr, (cst.Subscript, cst.Name)) and strict and depth < 3:
        name = strip_views(rule, expr)
        vals = assigned_values(rule, fn, name.value) if isinstance(name, cst.Name) else []
        if vals:
            return all(shifted(rule, fn, v, strict, depth + 1) for v in vals)
    return is_shifted_or_bounded(rule, fn, expr)


def float16_dtype(rule, expr: Optional[cst.BaseExpression]) -> bool:
    return expr is not None and rule.code_for(expr).replace(" ", "") in _FP16_DTYPES


def is_float16(rule, fn, expr, depth: int = 0) -> bool:
    """``expr`` is explicitly float16: ``x.half()``, ``x.to(torch.float16)``, a factory with
    ``dtype=torch.half``, elementwise maths or views of such a value, a name assigned only such values."""
    if depth > 4:
        return False
    if isinstance(expr, cst.Call):
        mc = method_call(expr)
        if mc and mc[1] == "half" and not expr.args:
            return True
        if mc and mc[1] in ("to", "type") or torch_function(rule, expr) is not None:
            if any(float16_dtype(rule, a.value) for a in expr.args if a.keyword is None or a.keyword.value == "dtype"):
                return True
        if mc and mc[1] in SAME_DTYPE and not torch_function(rule, expr):
            return is_float16(rule, fn, mc[0], depth + 1)
        return False
    if isinstance(expr, cst.BinaryOperation) and not isinstance(expr.operator, cst.MatrixMultiply):
        return any(is_float16(rule, fn, s, depth + 1) for s in (expr.left, expr.right))
    if isinstance(expr, cst.UnaryOperation):
        return is_float16(rule, fn, expr.expression, depth + 1)
    if isinstance(expr, cst.Subscript):
        return is_float16(rule, fn, expr.value, depth + 1)
    if isinstance(expr, cst.Name) and depth < 4:
        vals = assigned_values(rule, fn, expr.value)
        return bool(vals) and all(is_float16(rule, fn, v, depth + 1) for v in vals)
    return False


def fp16_context(rule, node: cst.CSTNode) -> Optional[str]:
    """Why values around ``node`` are float16, or None: the enclosing function's or class's docstring or
    comments say fp16/half precision/autocast, or the document runs autocast, a GradScaler or ``.half()``."""
    for scope in (enclosing_function(rule, node), enclosing_class(rule, node)):
        if scope is not None:
            m = _FP16_TEXT.search(comment_and_doc_text(rule, scope))
            if m and not re.search(r"\b(bf16|bfloat16)\b", m.string[max(0, m.start() - 40):m.end() + 40]):
                return f"the documentation of `{scope.name.value}` says it runs in `{m.group(0)}`"
    key = ("fp16-document",)
    if key not in rule.ctx.cache:
        src = rule.ctx.source or ""
        found = [m.group(0) for m in _FP16_CODE.finditer(src)]
        if found and set(found) <= {"autocast", "cuda.amp"} and "bfloat16" in src:
            found = []  # autocast to bfloat16: float32's range
        rule.ctx.cache[key] = f"the document uses `{found[0].lstrip('.')}` (float16 values)" if found else None
    return rule.ctx.cache[key]


def float_constant(rule, fn, expr, depth: int = 0) -> Optional[float]:
    """The value of ``-1e9``, ``float("-1e9")``, ``-10000000000`` or a name assigned one such constant
    (in the function or at module level); None for anything else."""
    if isinstance(expr, (cst.Integer, cst.Float)):
        try:
            return float(expr.evaluated_value)
        except (ValueError, OverflowError):
            return None
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        v = float_constant(rule, fn, expr.expression, depth)
        return -v if v is not None else None
    if isinstance(expr, cst.Call) and rule.qnames(expr.func) == {"builtins.float"} and len(expr.args) == 1:
        v = expr.args[0].value
        if isinstance(v, cst.SimpleString):
            try:
                return float(v.evaluated_value)
            except ValueError:
                return None
        return float_constant(rule, fn, v, depth)
    if isinstance(expr, cst.Name) and depth < 2:
        vals = (assigned_values(rule, fn, expr.value) if fn is not None else []) or assigned_values(rule, None, expr.value)
        return float_constant(rule, fn, vals[0], depth + 1) if len(vals) == 1 else None
    return None


def literal_trips(loop: cst.CSTNode) -> Optional[int]:
    """The trip count of ``for _ in range(50)`` / ``range(1, 50)``: None unless the bounds are literals."""
    if not (isinstance(loop, cst.For) and isinstance(loop.iter, cst.Call) and isinstance(loop.iter.func, cst.Name)
            and loop.iter.func.value == "range" and 1 <= len(loop.iter.args) <= 2):
        return None
    bounds = [const_int(a.value) for a in loop.iter.args]
    if any(b is None for b in bounds):
        return None
    return max(0, bounds[-1] - (bounds[0] if len(bounds) == 2 else 0))


_PAD_FUNCTIONS = {"nn.functional.pad", "cat", "concat", "concatenate", "hstack", "column_stack"}


def prefix_holder(rule, node: cst.CSTNode) -> cst.CSTNode:
    """The expression that keeps the prefix sums of ``node`` (a ``cumsum`` call): ``node`` itself, or
    the ``F.pad(node, (1, 0))`` / ``torch.cat([zeros, node], 1)`` / ``node.float()`` around it."""
    while True:
        p = rule.parent(node)
        if isinstance(p, cst.Element):  # an element of the list given to torch.cat
            lst = rule.parent(p)
            p = rule.parent(lst) if isinstance(lst, (cst.List, cst.Tuple)) else None
        if isinstance(p, cst.Arg):
            call = rule.parent(p)
            if isinstance(call, cst.Call) and torch_function(rule, call) in _PAD_FUNCTIONS and call.args[0] is p:
                node = call
                continue
        if isinstance(p, cst.Attribute) and p.value is node:
            call = rule.parent(p)
            if isinstance(call, cst.Call) and is_method_call(rule, call, SAME_VALUES | {"float", "to"}):
                node = call
                continue
        return node


def centred(rule, fn, expr, depth: int = 0) -> bool:
    """``x - mu`` with ``mu`` a mean, reshaped or not (``x - offset[:, None, None]``,
    ``x - mu.unsqueeze(1)``), or a name assigned only such values."""
    from ._flow import is_centring_call

    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Subtract):
        right = strip_views(rule, expr.right)
        if isinstance(right, cst.Name) and depth < 3:
            vals = assigned_values(rule, fn, right.value)
            return bool(vals) and all(any(is_centring_call(rule, c) for c in walk(v, cst.Call)) for v in vals)
        return any(is_centring_call(rule, c) for c in walk(right, cst.Call))
    if isinstance(expr, cst.Name) and depth < 3:
        vals = assigned_values(rule, fn, expr.value)
        return bool(vals) and all(centred(rule, fn, v, depth + 1) for v in vals)
    return False


def index_grown_in_loop(rule, node: cst.CSTNode) -> bool:
    """``path.append(bp[path[-1]].item())``: ``node`` indexes with a list that its innermost loop grows,
    so each step's sync waits for an index the previous one read back (a backtrace on device data)."""
    from ._torch import enclosing_loops, names_in, walk_own

    loops = enclosing_loops(rule, node)
    if not loops or not isinstance(loops[0], (cst.For, cst.While)):
        return False
    grown = {mc[0].value for c in walk_own(loops[0].body, cst.Call) for mc in [method_call(c)]
             if mc and mc[1] in ("append", "extend", "insert") and isinstance(mc[0], cst.Name)}
    return any(names_in(e) & grown for sub in walk(node, cst.Subscript) for e in sub.slice)


def few_literal_trips(rule, node: cst.CSTNode, limit: int = 100) -> bool:
    """Every loop around ``node`` is ``range(<literal>)`` and together they run at most ``limit`` times
    (a notebook's demo loop): a per-step cost has a small, bounded total."""
    from ._loops import loops_until

    loops, total = loops_until(rule, node, lambda lp: False), 1
    for lp in loops:
        n = literal_trips(lp)
        if n is None:
            return False
        total *= n
    return bool(loops) and total <= limit


def recursion_carried(rule, fn, expr) -> Optional[str]:
    """The name of a forward variable that ``expr`` reads: a name that a loop of ``fn`` rebuilds from
    itself (``alpha = f(alpha) + emit[t]``, ``alpha += ...``) or fills step by step
    (``alpha[t] = logsumexp(...)``). Such log-scores accumulate over the sequence (about -T times a
    per-step cost), so ``exp`` of them underflows for any realistic length."""
    from ._torch import names_in, walk_own

    if fn is None:
        return None
    reads = names_in(expr)
    for n in list(reads):
        for v in assigned_values(rule, fn, n):
            reads |= names_in(v)
    for loop in walk_own(fn.body, (cst.For, cst.While)):
        for st in walk_own(loop.body, (cst.Assign, cst.AugAssign)):
            targets = [t.target for t in st.targets] if isinstance(st, cst.Assign) else [st.target]
            for t in targets:
                base = t.value if isinstance(t, cst.Subscript) else t
                if not isinstance(base, cst.Name) or base.value not in reads:
                    continue
                value_names = names_in(st.value)
                for v in value_names.copy():
                    for w in assigned_values(rule, fn, v):
                        value_names |= names_in(w)
                if base.value in value_names or isinstance(st, cst.AugAssign) or (
                        isinstance(t, cst.Subscript) and any(
                            torch_function(rule, c) == "logsumexp" for c in walk(st.value, cst.Call))):
                    return base.value
    return None
