"""Positive rates fed to a loss that reads log-rates (TR607): ``F.poisson_nll_loss`` / ``nn.PoissonNLLLoss``
with ``log_input=True`` (the default) given the output of ``softplus``/``exp``/``relu``.

``positive_rate`` follows an expression back through names (the one binding that reaches), indexing,
shape/dtype methods, ``clamp``, ``+ eps``, ``nn.Softplus``/``nn.ReLU`` modules (also ending an
``nn.Sequential``) and instances of a document model whose ``forward`` returns such a rate on every path.

Private module (not a rule).
"""
from __future__ import annotations

from typing import Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._bindings import instance_class, python_number, reaching_value
from ._context import construction_of, last_layer
from ._knowledge import PROBABILITY_PRESERVING
from ._torch import (dotted_name, enclosing_class, enclosing_function, is_method_call, kwarg, last_part, method_call,
                     positional, torch_function, walk_own, with_arg_value, with_keyword)

_FUNCTIONS = {"exp": "exp", "special.exp": "exp", "nn.functional.softplus": "softplus", "relu": "relu",
              "nn.functional.relu": "relu", "nn.functional.relu6": "relu"}
_METHODS = {"exp": "exp", "relu": "relu"}
_MODULES = {"Softplus": "softplus", "ReLU": "relu", "ReLU6": "relu"}


def positive_rate(rule, fn, expr, depth: int = 0) -> Optional[Tuple[str, cst.Call, Optional[cst.CSTNode]]]:
    """``(kind, producing call, forward's return or None)`` when ``expr`` is a positive rate."""
    if depth > 8 or expr is None:
        return None
    if isinstance(expr, cst.Name):
        return positive_rate(rule, fn, reaching_value(rule, fn, expr.value, expr), depth + 1)
    if isinstance(expr, cst.Subscript):
        return positive_rate(rule, fn, expr.value, depth + 1)
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Add):  # softplus(z) + 1e-6
        for side, other in ((expr.left, expr.right), (expr.right, expr.left)):
            if python_number(rule, other) or "eps" in (dotted_name(other) or "").lower():
                return positive_rate(rule, fn, side, depth + 1)
        return None
    if not isinstance(expr, cst.Call):
        return None
    tf = torch_function(rule, expr)
    if tf in ("clamp", "clamp_min", "clip") and positional(expr):
        return positive_rate(rule, fn, positional(expr)[0].value, depth + 1)
    if tf is not None:
        return (_FUNCTIONS[tf], expr, None) if tf in _FUNCTIONS else None
    mc = method_call(expr)
    head = (dotted_name(mc[0]) or "").split(".")[0] if mc else ""
    if mc and head != "self" and head not in rule.ctx.names.aliases:
        if mc[1] in _METHODS and not expr.args:
            return _METHODS[mc[1]], expr, None
        if is_method_call(rule, expr, PROBABILITY_PRESERVING):
            return positive_rate(rule, fn, mc[0], depth + 1)
    named = isinstance(expr.func, (cst.Name, cst.Attribute))
    built = construction_of(rule, fn, expr.func) if named else None
    last = last_layer(rule, built) if built is not None and built is not expr else None
    kind = _MODULES.get(last_part(torch_function(rule, last))) if last is not None else None
    if kind:
        return kind, expr, None
    own = isinstance(expr.func, cst.Name) and expr.func.value == "self"  # self(x) inside the model
    cls = enclosing_class(rule, expr) if own else instance_class(rule, fn, expr.func)
    fwd = next((f for f in cls.body.body if isinstance(f, cst.FunctionDef) and f.name.value == "forward"),
               None) if cls is not None else None
    rets = [r.value for r in walk_own(fwd.body, cst.Return)] if fwd is not None else []
    got = [positive_rate(rule, fwd, r, depth + 1) for r in rets]
    if rets and None not in got and len({g[0] for g in got}) == 1:
        return got[0][0], expr, rets[0]
    return None


def poisson_log_rate(rule, node: cst.Call) -> Optional[dict]:
    """The report (keyword arguments of ``rule.report``) for a Poisson NLL loss reading a positive rate as
    a log-rate; None when it does not."""
    tf = torch_function(rule, node)
    fn = enclosing_function(rule, node)
    if tf is not None:
        if tf != "nn.functional.poisson_nll_loss":
            return None
        flag = kwarg(node, "log_input") or (positional(node)[2] if len(positional(node)) > 2 else None)
        holder = node
    else:
        built = construction_of(rule, fn, node.func) if isinstance(node.func, (cst.Name, cst.Attribute)) else None
        if built is None or built is node or last_part(torch_function(rule, built)) != "PoissonNLLLoss":
            return None
        flag, holder = kwarg(built, "log_input") or next(iter(positional(built)), None), built
    arg = kwarg(node, "input") or next(iter(positional(node)), None)
    if arg is None or any(a.star for a in node.args + holder.args) or flag is not None and not (
            isinstance(flag.value, cst.Name) and flag.value.value == "True"):
        return None
    found = positive_rate(rule, fn, arg.value)
    if found is None:
        return None
    kind, producer, ret = found
    via = f", whose `forward` returns `{rule.code_for(ret)}`" if ret is not None else ""
    false = cst.Name("False")
    fixed = with_arg_value(holder, flag, false) if flag is not None else with_keyword(holder, "log_input", false)
    inline = holder is node and ret is None
    return dict(
        node=node, title="Positive rate passed to a Poisson NLL loss that reads a log-rate",
        problem=(f"`{rule.code_for(node)}` receives a positive rate (`{rule.code_for(producer)}`, a {kind} "
                 f"output{via}), but with `log_input=True`{' (the default)' if flag is None else ''} the Poisson NLL reads its input as the "
                 f"log-rate and computes `exp(input) - target * input`."),
        impact=("The loss fits exp(rate) instead of the rate: predictions are exponentiated twice, the gradient is "
                "wrong everywhere and the model converges to the wrong intensities, without any error."),
        fix=Fix(before=rule.code_for(holder), after=rule.code_for(fixed) + ("" if inline else
                                                                            "  # or return the log-rate")),
        replacement=fixed if inline else None,
    )
