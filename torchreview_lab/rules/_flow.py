"""Helpers for gradient-flow, memory-correctness, numerics and shape rules (TR15x, TR2xx-TR3xx, TR6xx, TR9xx).

Private module (not a rule): what carries an autograd graph, whether code runs under ``no_grad``,
documented tensor shapes from comments/docstrings, and symbolic upper bounds of index expressions.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Set, Tuple

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
