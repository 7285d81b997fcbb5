"""Evaluation loops run with autograd on (TR154, TR155): which calls run a network on the batches, whether
every caller puts the network in eval mode first, and accumulations that keep a loss or a network output with
its graph across batches (TR155's; TR154 leaves those loops to it)."""
from __future__ import annotations

from typing import Optional

import libcst as cst

from ._bindings import instance_class
from ._context import bound_values, imports_torch, is_evaluation_name, module_kind
from ._flow import (accumulating_loop, backwarded_later, called_only_under_no_grad, grad_disabled_before, in_no_grad,
                    loss_like, model_sources, modes_before, numeric_uses_after, scope_of, training_step_in)
from ._loops import loop_derived
from ._torch import dotted_name, module_functions, walk


def kept_graph(rule, node, acc, value) -> Optional[dict]:
    """Why ``node`` (accumulating ``value`` into ``acc``) keeps a graph per batch of an evaluation loop:
    ``{"evidence", "model", "numeric_only", "loss"}``; None when it does not (or it is not an evaluation).
    A loss counts with any evidence of evaluation; a network output only when the network was put in eval
    mode before the loop (``model.eval(); for x in val: outs.append(model(x))``)."""
    key = ("kept-graph", id(node), id(acc))
    if key not in rule.ctx.cache:
        rule.ctx.cache[key] = _kept_graph(rule, node, acc, value)
    return rule.ctx.cache[key]


def _kept_graph(rule, node, acc, value) -> Optional[dict]:
    loop = accumulating_loop(rule, node, acc)
    if loop is None or training_step_in(rule, loop, consumers=True):
        return None
    fn, scope = scope_of(rule, node)
    if grad_disabled_before(rule, scope, rule.line_of(loop)):
        return None
    evaluated, frozen = modes_before(rule, scope, rule.line_of(loop))
    sources = [(c, m) for c, m in model_sources(rule, fn, value, evaluated)
               if m not in frozen and loop in rule.ancestors(c) and not in_no_grad(rule, c)]
    loss = loss_like(rule, fn, value)
    eval_model = next((m for _, m in sources if m in evaluated), None)
    if not sources or not (loss or eval_model) or backwarded_later(rule, acc, scope, fn):
        return None
    uses = numeric_uses_after(rule, scope, acc, rule.end_line_of(loop)) if isinstance(acc, cst.Name) else {"other"}
    if "backward" in uses or called_only_under_no_grad(rule, fn):
        return None
    name = rule.code_for(acc)
    numeric_only = bool(uses) and uses <= {"numeric", "neutral"} and "numeric" in uses
    fname = fn.name.value.lower() if fn is not None else ""
    if eval_model is not None:
        evidence = f"`{eval_model}` was put in eval mode before the loop"
    elif numeric_only and imports_torch(rule):
        evidence = f"`{name}` is only turned into numbers after the loop"
    elif imports_torch(rule) and is_evaluation_name(fname) and uses & {"numeric", "returned_mean", "stored"} \
            and not uses & {"returned"}:
        evidence = f"`{fn.name.value}` evaluates and reports `{name}` as a number or mean"
    else:
        return None
    return {"evidence": evidence, "model": sources[0][1], "numeric_only": numeric_only, "loss": loss}


def callers_evaluate(rule, fn: cst.FunctionDef) -> bool:
    """Every call of ``fn`` in the document follows a ``.eval()`` call in the caller's scope."""
    sites = [c for c in walk(rule.ctx.module, cst.Call) if (dotted_name(c.func) or "").split(".")[-1] == fn.name.value]
    return bool(sites) and all(modes_before(rule, scope_of(rule, c)[1], rule.line_of(c))[0] for c in sites)


def runs_network(rule, fn, c: cst.Call) -> bool:
    """A network (``model(x)``, ``self.net(x)``; built from an nn.Module class, or named as one) runs on loop
    data with autograd on; not a criterion, a metric or a document function."""
    name = dotted_name(c.func) or ""
    if not name or name in module_functions(rule) or in_no_grad(rule, c) or any(
            h in name.rsplit(".", 1)[-1].lower() for h in ("loss", "criterion", "metric")):
        return False
    network = instance_class(rule, fn, c.func) is not None or any(
        module_kind(rule, fn, v) == "module" for v in bound_values(rule, fn, c.func)) or any(
        s is c for s, _ in model_sources(rule, fn, c, set()))
    return network and any(loop_derived(rule, c, a.value, fn) for a in c.args)
