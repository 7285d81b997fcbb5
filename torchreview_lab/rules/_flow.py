"""Helpers for gradient-flow, memory-correctness, numerics and shape rules (TR15x, TR2xx-TR3xx, TR6xx, TR9xx).

Private module (not a rule): what carries an autograd graph, whether code runs under ``no_grad``,
documented tensor shapes from comments/docstrings, and symbolic upper bounds of index expressions.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import libcst as cst

from ._torch import (
    assigned_values,
    dotted_name,
    enclosing_function,
    is_method_call,
    kwarg,
    method_call,
    positional,
    torch_function,
    walk,
    walk_own,
)

# Calls that end the graph: the value is a Python number or a tensor without history.
DETACHING_METHODS = frozenset({"item", "detach", "tolist", "numpy", "detach_"})
DETACHING_BUILTINS = frozenset({"float", "int", "bool", "len", "str", "round"})
# Reductions whose result still carries the graph of their input.
GRAPH_REDUCTIONS = frozenset({"sum", "mean", "max", "min", "prod", "logsumexp", "norm", "std", "var",
                              "amax", "amin", "squeeze", "view", "reshape", "flatten", "abs", "sqrt",
                              "pow", "mul", "add", "div", "sub", "neg", "exp", "log", "float", "double",
                              "to", "cpu", "cuda", "clone", "contiguous"})
# Callee names (last dotted part, lower-case) that are models or criteria: their outputs carry a graph.
MODEL_CALLEE_HINTS = ("model", "net", "criterion", "loss", "encoder", "decoder", "module", "policy", "critic")
NO_GRAD_CONTEXTS = frozenset({"no_grad", "inference_mode", "autograd.no_grad", "autograd.grad_mode.no_grad",
                              "autograd.grad_mode.inference_mode"})


def in_no_grad(rule, node: cst.CSTNode) -> bool:
    """True when ``node`` runs under ``torch.no_grad()``/``inference_mode()`` (a with-block or a
    decorator of an enclosing function)."""
    for a in rule.ancestors(node):
        if isinstance(a, cst.With):
            for item in a.items:
                if isinstance(item.item, cst.Call) and torch_function(rule, item.item) in NO_GRAD_CONTEXTS:
                    return True
                if isinstance(item.item, cst.Call) and torch_function(rule, item.item) == "set_grad_enabled":
                    return True
        if isinstance(a, cst.FunctionDef):
            for d in a.decorators:
                dec = d.decorator.func if isinstance(d.decorator, cst.Call) else d.decorator
                q = {x for x in rule.qnames(dec) if x.startswith("torch.")}
                name = dotted_name(dec) or ""
                if any(x[len("torch."):] in NO_GRAD_CONTEXTS for x in q) or name.endswith(("no_grad", "inference_mode")):
                    return True
    return False


def scope_of(rule, node):
    fn = enclosing_function(rule, node)
    return fn, (fn.body if fn is not None else rule.ctx.module)


def backward_called_on(rule, scope, name: str) -> bool:
    for c in walk_own(scope, cst.Call):
        mc = method_call(c)
        if mc and mc[1] == "backward" and isinstance(mc[0], cst.Name) and mc[0].value == name:
            return True
        if torch_function(rule, c) in ("autograd.backward",) and c.args and isinstance(c.args[0].value, cst.Name) \
                and c.args[0].value.value == name:
            return True
    return False


def _callee_hint(func: cst.BaseExpression) -> Optional[str]:
    name = dotted_name(func)
    if not name:
        return None
    last = name.split(".")[-1].lower()
    return last if any(h in last for h in MODEL_CALLEE_HINTS) else None


def graph_reason(rule, fn, scope, expr: cst.BaseExpression, depth: int = 0) -> Optional[str]:
    """Why ``expr`` carries an autograd graph (a short phrase), or None when it does not (or we cannot tell)."""
    if depth > 4:
        return None
    if isinstance(expr, cst.Name):
        if backward_called_on(rule, scope, expr.value):
            return f"`{expr.value}.backward()` is called on it"
        for v in assigned_values(rule, fn, expr.value):
            r = graph_reason(rule, fn, scope, v, depth + 1)
            if r:
                return r
        return None
    if isinstance(expr, cst.Call):
        mc = method_call(expr)
        if mc and mc[1] in DETACHING_METHODS:
            return None
        if isinstance(expr.func, cst.Name) and expr.func.value in DETACHING_BUILTINS:
            return None
        tf = torch_function(rule, expr)
        if tf is not None:
            if "loss" in tf or tf.endswith(("cross_entropy", "nll_loss", "kl_div", "binary_cross_entropy")):
                return f"it is the output of `torch.{tf}`"
            for a in positional(expr)[:1]:
                r = graph_reason(rule, fn, scope, a.value, depth + 1)
                if r:
                    return r
            return None
        if mc and mc[1] in GRAPH_REDUCTIONS:
            return graph_reason(rule, fn, scope, mc[0], depth + 1)
        hint = _callee_hint(expr.func)
        if hint:
            return f"it comes from a `{rule.code_for(expr.func)}(...)` call"
        return None
    if isinstance(expr, cst.BinaryOperation):
        return graph_reason(rule, fn, scope, expr.left, depth + 1) or graph_reason(rule, fn, scope, expr.right, depth + 1)
    if isinstance(expr, cst.UnaryOperation):
        return graph_reason(rule, fn, scope, expr.expression, depth + 1)
    if isinstance(expr, cst.Subscript):
        return graph_reason(rule, fn, scope, expr.value, depth + 1)
    return None


# -- documented shapes -------------------------------------------------------------------------
_SHAPE_DOC = re.compile(
    r"^\s*(?:#\s*)?(?:[-*]\s*)?`?(\w+)`?\s*(?:\([^()]*\))?\s*:\s*(?:[A-Za-z_.]+\s+){0,3}?(?:of\s+)?(?:shape\s*)?"
    r"[\(\[]([\w\s,+\-*]+)[\)\]]")


def documented_shapes(text: str) -> Dict[str, List[str]]:
    """``{"x": ["batch", "T", "C"]}`` from lines like ``# x: (batch, T, C)`` or a docstring
    ``x (Tensor): shape (batch, T, C)``. Dimensions that are not names or integers become ``"?"``."""
    out: Dict[str, List[str]] = {}
    for line in text.splitlines():
        m = _SHAPE_DOC.match(line)
        if not m:
            continue
        dims = [d.strip() for d in m.group(2).split(",") if d.strip()]
        if len(dims) < 1 or (len(dims) == 1 and "," not in m.group(2)):
            continue
        out.setdefault(m.group(1), [d if re.fullmatch(r"\w+", d) else "?" for d in dims])
    return out


def comment_and_doc_text(rule, node: cst.CSTNode) -> str:
    """Comments and docstring text of a function (or module)."""
    text = rule.code_for(node)
    lines = []
    in_doc = False
    for line in text.splitlines():
        s = line.strip()
        quotes = s.count('"""') + s.count("'''")
        if in_doc or quotes or s.startswith("#"):
            lines.append(s.strip("\"'rbuRBU ") if quotes else s)
        elif "#" in s:
            lines.append(s[s.index("#"):])
        if quotes % 2 == 1:
            in_doc = not in_doc
    return "\n".join(lines)


# -- numerics ------------------------------------------------------------------------------------
MAX_LIKE = frozenset({"max", "amax", "logsumexp", "cummax", "detach"})
BOUNDED_ABOVE = frozenset({"log_softmax", "nn.functional.log_softmax", "nn.functional.logsigmoid", "logsigmoid",
                           "special.log_softmax", "special.log_ndtr"})


def exp_arg(rule, call: cst.Call) -> Optional[cst.BaseExpression]:
    """The argument of ``torch.exp(a)`` / ``a.exp()``; None for other calls."""
    tf = torch_function(rule, call)
    if tf in ("exp", "special.exp"):
        pos = positional(call)
        return pos[0].value if pos else (kwarg(call, "input").value if kwarg(call, "input") else None)
    if is_method_call(rule, call, {"exp"}) and not call.args:
        return method_call(call)[0]
    return None


def _has_max_call(rule, fn, expr, depth=0) -> bool:
    for c in walk(expr, cst.Call):
        tf = torch_function(rule, c)
        if tf in MAX_LIKE or is_method_call(rule, c, MAX_LIKE):
            return True
        callee = (dotted_name(c.func) or "").split(".")[-1].lower()
        bare = callee.replace("softmax", "").replace("argmax", "")
        if tf is None and ("max" in bare or "logsumexp" in bare or "lse" in bare):
            return True  # a helper such as _safe_amax(x, dim)
    if isinstance(expr, cst.Name) and depth < 3:
        return any(_has_max_call(rule, fn, v, depth + 1) for v in assigned_values(rule, fn, expr.value))
    return False


def is_shifted_or_bounded(rule, fn, expr, depth: int = 0) -> bool:
    """``expr`` is max-subtracted (``x - x.max(...)``, ``x - m`` with ``m`` a max/logsumexp), negative by
    construction (``-x.abs()``, ``-softplus``), clamped from above, or a log-probability."""
    if depth > 4:
        return True  # give up quietly
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Subtract):
        return _has_max_call(rule, fn, expr.right) or is_shifted_or_bounded(rule, fn, expr.left, depth + 1)
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Multiply, cst.Divide)):
        return is_shifted_or_bounded(rule, fn, expr.left, depth + 1) and is_constant_like(expr.right) or \
            is_shifted_or_bounded(rule, fn, expr.right, depth + 1) and is_constant_like(expr.left)
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        inner = expr.expression
        return isinstance(inner, cst.Call) and (
            torch_function(rule, inner) in ("abs", "nn.functional.softplus", "nn.functional.relu", "relu", "square")
            or bool(is_method_call(rule, inner, {"abs", "relu", "square", "pow"}))) or is_constant_like(inner)
    if isinstance(expr, cst.Call):
        tf = torch_function(rule, expr)
        if tf in BOUNDED_ABOVE or is_method_call(rule, expr, {"log_softmax"}):
            return True
        if tf == "clamp" or tf == "clip" or is_method_call(rule, expr, {"clamp", "clip", "clamp_max"}):
            return kwarg(expr, "max") is not None or len(positional(expr)) >= (3 if tf else 2) or \
                bool(is_method_call(rule, expr, {"clamp_max"}))
        if tf in ("log", "log1p") or is_method_call(rule, expr, {"log", "log1p"}):
            return True  # exp(log(x)) is bounded by x
        if tf in ("where", "minimum"):
            return False
        return False
    if isinstance(expr, (cst.Integer, cst.Float)):
        return True
    if isinstance(expr, cst.Name):
        low = expr.value.lower()
        if low.startswith(("log_p", "logp", "log_prob", "logprob", "log_alpha", "log_beta", "lse", "log_")):
            return True
        vals = assigned_values(rule, fn, expr.value)
        if not vals:
            return False  # a parameter: nothing shows it is bounded
        return all(is_shifted_or_bounded(rule, fn, v, depth + 1) for v in vals)
    if isinstance(expr, cst.Subscript):
        return is_shifted_or_bounded(rule, fn, expr.value, depth + 1)
    return False


def is_constant_like(expr) -> bool:
    if isinstance(expr, (cst.Integer, cst.Float)):
        return True
    if isinstance(expr, cst.Name):
        return expr.value.isupper() or expr.value in ("temperature", "tau", "scale", "beta")
    if isinstance(expr, cst.Attribute):
        return True  # self.temperature, math.pi
    return False


# -- symbolic upper bounds of index expressions ------------------------------------------------
# A bound is (symbol, offset): the value is at most symbol + offset; symbol None means a constant.
Bound = Tuple[Optional[str], int]


def const_int(expr) -> Optional[int]:
    if isinstance(expr, cst.Integer):
        try:
            return int(expr.value, 0)
        except ValueError:
            return None
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        v = const_int(expr.expression)
        return -v if v is not None else None
    return None


def _single_value(rule, fn, name: str):
    """The one expression ``name`` is assigned from in ``fn`` (None when reassigned or augmented)."""
    vals = assigned_values(rule, fn, name)
    if len(vals) != 1:
        return None
    scope = fn.body if fn is not None else rule.ctx.module
    for n in walk_own(scope, cst.AugAssign):
        if isinstance(n.target, cst.Name) and n.target.value == name:
            return None
    return vals[0]


def canonical_size(rule, fn, expr, depth: int = 0) -> Optional[str]:
    """A canonical symbol for a size expression: ``"x.shape[1]"`` for ``x.shape[1]``/``x.size(1)``/``T``
    with ``T = x.shape[1]`` (or ``B, T, C = x.shape``); ``"len(x)"`` maps to ``"x.shape[0]"``; a plain
    name that is not a shape stays itself."""
    code = rule.code_for(expr).replace(" ", "")
    if isinstance(expr, cst.Subscript) and isinstance(expr.value, cst.Attribute) and expr.value.attr.value == "shape" \
            and len(expr.slice) == 1 and isinstance(expr.slice[0].slice, cst.Index):
        i = const_int(expr.slice[0].slice.value)
        return f"{rule.code_for(expr.value.value)}.shape[{i}]" if i is not None and i >= 0 else code
    if isinstance(expr, cst.Call):
        mc = method_call(expr)
        if mc and mc[1] == "size" and len(expr.args) == 1 and const_int(expr.args[0].value) is not None \
                and const_int(expr.args[0].value) >= 0:
            return f"{rule.code_for(mc[0])}.shape[{const_int(expr.args[0].value)}]"
        if isinstance(expr.func, cst.Name) and expr.func.value == "len" and len(expr.args) == 1:
            return f"{rule.code_for(expr.args[0].value)}.shape[0]"
        return code
    if isinstance(expr, cst.Name) and depth < 3:
        v = _single_value(rule, fn, expr.value)
        if v is not None and not isinstance(v, (cst.Tuple, cst.List)):
            if isinstance(v, (cst.Subscript, cst.Call, cst.Name)):
                c = canonical_size(rule, fn, v, depth + 1)
                if c and ".shape[" in c:
                    return c
        unpacked = _unpacked_shape(rule, fn, expr.value)
        if unpacked:
            return unpacked
        return expr.value
    return code


def _unpacked_shape(rule, fn, name: str) -> Optional[str]:
    scope = fn.body if fn is not None else rule.ctx.module
    if scope is None:
        return None
    for n in walk_own(scope, cst.Assign):
        for t in n.targets:
            if isinstance(t.target, (cst.Tuple, cst.List)):
                names = [e.value.value if isinstance(e.value, cst.Name) else None for e in t.target.elements]
                if name in names:
                    v = n.value
                    if isinstance(v, cst.Attribute) and v.attr.value == "shape":
                        return f"{rule.code_for(v.value)}.shape[{names.index(name)}]"
                    if isinstance(v, cst.Call) and method_call(v) and method_call(v)[1] == "size" and not v.args:
                        return f"{rule.code_for(method_call(v)[0])}.shape[{names.index(name)}]"
    return None


def size_bound(rule, fn, expr) -> Optional[Bound]:
    """``K + 1`` -> ("K", 1); ``x.size(0) - 1`` -> ("x.shape[0]", -1); ``7`` -> (None, 7)."""
    c = const_int(expr)
    if c is not None:
        return (None, c)
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Add, cst.Subtract)):
        sign = 1 if isinstance(expr.operator, cst.Add) else -1
        r = const_int(expr.right)
        if r is not None:
            b = size_bound(rule, fn, expr.left)
            return (b[0], b[1] + sign * r) if b else None
        lft = const_int(expr.left)
        if lft is not None and sign == 1:
            b = size_bound(rule, fn, expr.right)
            return (b[0], b[1] + lft) if b else None
        return None
    if isinstance(expr, (cst.Name, cst.Subscript, cst.Call, cst.Attribute)):
        if isinstance(expr, cst.Call) and not (method_call(expr) or (isinstance(expr.func, cst.Name) and expr.func.value == "len")):
            return None
        return (canonical_size(rule, fn, expr), 0)
    return None


def upper_bounds(rule, fn, node, expr, depth: int = 0) -> Optional[List[Bound]]:
    """Alternative upper bounds of an index expression (the value is at most each of them);
    None when unknown."""
    if depth > 5:
        return None
    c = const_int(expr)
    if c is not None:
        return [(None, c)]
    if isinstance(expr, cst.Name):
        loop = _loop_for(rule, node, expr.value)
        if loop is not None:
            args = [a for a in loop.iter.args]
            if any(a.keyword or a.star for a in args) or not args or len(args) > 3:
                return None
            if len(args) == 3:
                step = const_int(args[2].value)
                if step is None or step <= 0:
                    return None
            stop = args[0].value if len(args) == 1 else args[1].value
            b = size_bound(rule, fn, stop)
            return [(b[0], b[1] - 1)] if b else None
        if not assigned_values(rule, fn, expr.value) and not _unpacked_shape(rule, fn, expr.value):
            return [(expr.value, 0)]  # a parameter or global: itself
        canon = canonical_size(rule, fn, expr)
        if canon and ".shape[" in canon:
            return [(canon, 0)]
        v = _single_value(rule, fn, expr.value)
        if v is None:
            return None
        return upper_bounds(rule, fn, node, v, depth + 1)
    if isinstance(expr, (cst.Subscript, cst.Call)):
        canon = canonical_size(rule, fn, expr)
        if canon and ".shape[" in canon:
            return [(canon, 0)]
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Add, cst.Subtract)):
        sign = 1 if isinstance(expr.operator, cst.Add) else -1
        r = const_int(expr.right)
        if r is not None:
            bs = upper_bounds(rule, fn, node, expr.left, depth + 1)
            return [(s, o + sign * r) for s, o in bs] if bs else None
        lft = const_int(expr.left)
        if lft is not None and sign == 1:
            bs = upper_bounds(rule, fn, node, expr.right, depth + 1)
            return [(s, o + lft) for s, o in bs] if bs else None
        return None
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name) and expr.func.value in ("min", "max") \
            and len(expr.args) >= 2 and not any(a.star or a.keyword for a in expr.args):
        parts = [upper_bounds(rule, fn, node, a.value, depth + 1) for a in expr.args]
        if expr.func.value == "min":
            out = [b for p in parts if p for b in p]
            return out if any(parts) and all(p is not None for p in parts) else (out or None)
        known = [p for p in parts if p is not None]
        if len(known) != len(parts):
            return None
        sym = [b for p in known for b in p if b[0] is not None]
        return sym or [b for p in known for b in p]
    return None


def _loop_for(rule, node, name: str) -> Optional[cst.For]:
    for a in rule.ancestors(node):
        if isinstance(a, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            return None
        if isinstance(a, cst.For) and isinstance(a.target, cst.Name) and a.target.value == name:
            if isinstance(a.iter, cst.Call) and isinstance(a.iter.func, cst.Name) and a.iter.func.value == "range":
                return a
            return None
    return None
