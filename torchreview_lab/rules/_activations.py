"""Which activation produced a tensor: softmax, sigmoid or log_softmax output, followed back through
names, reshapes, ``nn.Softmax``/``nn.Sigmoid`` modules, an ``nn.Sequential`` ending in one and models
whose ``forward`` returns one.

Private module (not a rule), for the rules about what a loss or a log receives (TR210, TR607).
"""
from __future__ import annotations

from typing import Optional, Tuple

import libcst as cst

from ._context import bound_values, construction_of, last_layer
from ._knowledge import (ACTIVATION_OUTPUTS, MODULE_MOVES, PROBABILITY_PRESERVING, SEQUENTIAL_CLASSES,
                         SHAPE_AND_DTYPE_METHODS, SIGMOID_FUNCTIONS, SIGMOID_MODULES)
from ._torch import (assigned_values, dotted_name, enclosing_class, function_facts, is_method_call, last_part,
                     method_call, positional, torch_function, walk, walk_own)


def activation_of(rule, expr, fn, use_line: int, depth: int = 0) -> Optional[Tuple[str, cst.Call]]:
    """``(kind, producing call)`` when ``expr`` (used on ``use_line``) is softmax/sigmoid/log_softmax
    output; a name counts only when every assignment before the use gives the same kind."""
    if depth > 4:
        return None
    if isinstance(expr, cst.Name):
        vals = assigned_values(rule, fn, expr.value) if fn is not None else assigned_values(rule, None, expr.value)
        if not vals or not any(rule.line_of(v) < use_line for v in vals) or fn is None and len(vals) > 1:
            return None
        if fn is not None and expr.value in function_facts(rule, fn).params and not all(
                rule.parent(rule.parent(rule.parent(v))) is fn.body for v in vals):
            return None  # a parameter replaced conditionally: it may still hold logits
        got = [activation_of(rule, v, fn, use_line, depth + 1) for v in vals]
        return got[0] if None not in got and len({g[0] for g in got}) == 1 else None
    if isinstance(expr, cst.Subscript):
        return activation_of(rule, expr.value, fn, use_line, depth + 1)
    if not isinstance(expr, cst.Call):
        return None
    tf = torch_function(rule, expr)
    if tf is not None:
        kind = ACTIVATION_OUTPUTS.get(last_part(tf)) if last_part(tf)[:1].islower() else None
        return (kind, expr) if kind else None
    mc = method_call(expr)
    head = (dotted_name(mc[0]) or "").split(".")[0] if mc else ""
    if mc and head != "self" and head not in rule.ctx.names.aliases:  # not scipy.special.softmax, self.softmax
        if mc[1] in ("softmax", "sigmoid", "log_softmax"):
            return (mc[1], expr)
        if mc[1] in PROBABILITY_PRESERVING:
            return activation_of(rule, mc[0], fn, use_line, depth + 1)
    meth = _own_method(rule, fn, expr) if mc and head == "self" else None
    if meth is not None:  # self.decode(z): what every return of the class's method gives
        got = [activation_of(rule, r.value, meth, rule.line_of(r), depth + 1) for r in walk_own(meth.body, cst.Return)
               if r.value is not None]
        return got[0] if got and None not in got and len({g[0] for g in got}) == 1 else None
    module = construction_of(rule, fn, expr.func)  # nn.Softmax(1)(x); self.net(x), an nn.Sequential ending in one
    last = last_layer(rule, module) if module is not None else None
    kind = ACTIVATION_OUTPUTS.get(last_part(torch_function(rule, last))) if last is not None else None
    return (kind, expr) if kind else None


def _own_method(rule, fn, call: cst.Call) -> Optional[cst.FunctionDef]:
    """The method of ``fn``'s class that ``self.name(...)`` calls (not a submodule attribute)."""
    cls = enclosing_class(rule, fn) if fn is not None else None
    if cls is None or not isinstance(call.func, cst.Attribute) or dotted_name(call.func.value) != "self":
        return None
    return next((f for f in walk_own(cls.body, cst.FunctionDef) if f.name.value == call.func.attr.value), None)


def sigmoid_output(rule, fn, expr, depth: int = 0) -> Optional[Tuple[str, Optional[cst.BaseExpression], bool]]:
    """``(description, logits, inline)`` when ``expr`` is a sigmoid output, possibly reshaped;
    ``logits`` is the same expression without the sigmoid (None when it cannot be written), ``inline``
    whether the sigmoid is written in ``expr`` itself."""
    chain = []
    while isinstance(expr, cst.Call) and is_method_call(rule, expr, SHAPE_AND_DTYPE_METHODS):
        chain.append(expr)
        expr = method_call(expr)[0]
    if isinstance(expr, cst.Name) and depth < 4:
        vals = assigned_values(rule, fn, expr.value) or assigned_values(rule, None, expr.value)
        inner = sigmoid_output(rule, fn, vals[0], depth + 1) if len(vals) == 1 else None
        return (f"`{expr.value}` = {inner[0]}", inner[1], False) if inner else None
    if not isinstance(expr, cst.Call):
        return None
    z = None
    if torch_function(rule, expr) in SIGMOID_FUNCTIONS and len(positional(expr)) == 1 and len(expr.args) == 1:
        z = positional(expr)[0].value
    elif is_method_call(rule, expr, {"sigmoid"}) and not expr.args:
        z = method_call(expr)[0]
    elif expr.args and (isinstance(expr.func, cst.Call) and torch_function(rule, expr.func) in SIGMOID_MODULES
                        or _module_kinds(rule, fn, expr.func) == {"sigmoid"}):
        z = expr.args[0].value  # nn.Sigmoid()(z), self.sigmoid(z)
    elif _module_kinds(rule, fn, expr.func) == {"sequential-sigmoid"}:
        return f"the output of `{rule.code_for(expr.func)}`, an nn.Sequential ending in nn.Sigmoid()", None, False
    elif _module_kinds(rule, fn, expr.func) == {"model-sigmoid"}:
        return f"the output of `{rule.code_for(expr.func)}`, whose `forward` returns a sigmoid", None, False
    else:
        return None
    desc = f"`{rule.code_for(expr)}`"
    if chain and not isinstance(z, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)):
        z = z.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()]) if not z.lpar else z
    for c in reversed(chain):  # re-apply the reshapes to the logits
        z = c.with_changes(func=c.func.with_changes(value=z))
    return desc, z, depth == 0


def _module_kinds(rule, fn, func) -> set:
    """``{"sigmoid"}`` when ``func`` (a name or ``self.attr``) is an ``nn.Sigmoid()``,
    ``{"sequential-sigmoid"}`` for an ``nn.Sequential(..., nn.Sigmoid())``, ``{"model-sigmoid"}`` for a
    model of a class whose ``forward`` returns a sigmoid."""
    if not (isinstance(func, cst.Name) or isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name)
            and func.value.value == "self"):
        return set()
    if isinstance(func, cst.Name) and func.value == "self":  # self(x) in a model whose forward ends in sigmoid
        cls = enclosing_class(rule, func)
        return {"model-sigmoid"} if cls is not None and cls.name.value in _sigmoid_models(rule) else set()
    out = set()
    for v in bound_values(rule, fn, func):
        while isinstance(v, cst.Call) and is_method_call(rule, v, MODULE_MOVES):
            v = method_call(v)[0]  # Net().to(device)
        if isinstance(v, cst.Call) and isinstance(v.func, cst.Name) and v.func.value in _sigmoid_models(rule):
            out.add("model-sigmoid")
            continue
        tf = torch_function(rule, v) if isinstance(v, cst.Call) else None
        last = positional(v)[-1].value if tf in SEQUENTIAL_CLASSES and positional(v) else None
        out.add("sigmoid" if tf in SIGMOID_MODULES else "sequential-sigmoid" if isinstance(last, cst.Call)
                and torch_function(rule, last) in SIGMOID_MODULES else "other")
    return out


def _sigmoid_models(rule) -> set:
    """Names of the document's classes whose ``forward`` returns a sigmoid on every path."""
    key = ("sigmoid-models",)
    if key not in rule.ctx.cache:
        rule.ctx.cache[key] = set()  # guards the recursion through sigmoid_output
        out = set()
        for cls in walk(rule.ctx.module, cst.ClassDef) if rule.ctx.module is not None else ():
            fwd = next((f for f in cls.body.body if isinstance(f, cst.FunctionDef) and f.name.value == "forward"), None)
            rets = [r.value for r in walk_own(fwd.body, cst.Return)] if fwd is not None else []
            if rets and all(r is not None and sigmoid_output(rule, fwd, r) for r in rets):
                out.add(cls.name.value)
        rule.ctx.cache[key] = out
    return rule.ctx.cache[key]
