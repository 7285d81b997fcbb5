"""Following values across the calls of one document: the calls that run a local function, the argument
a call passes for one of its parameters (default included), and the calls of a function that produced
what a name holds (through assignments, tuple unpacking, wrappers such as ``enumerate``/``tqdm`` and
parameters filled in by callers).

Private module (not a rule), for rules whose verdict depends on a flag or an object built in a helper and
handed around: TR617 (a sampler's ``shuffle=train`` flag), TR631 (a scheduler passed to
``train_one_epoch``)."""
from __future__ import annotations

from typing import List, Optional

import libcst as cst

from ._loops import local_callee
from ._torch import assigned_values, enclosing_function, function_facts, method_call, positional, walk

_WRAPPERS = frozenset({"enumerate", "iter", "tqdm", "zip", "islice", "cycle"})


def call_sites(rule, fn: cst.FunctionDef) -> List[cst.Call]:
    """The calls of the document that run ``fn`` (``helper(...)``, ``self.helper(...)``)."""
    key = ("call-sites", id(fn))
    if key not in rule.ctx.cache:
        rule.ctx.cache[key] = [c for c in walk(rule.ctx.module, cst.Call) if local_callee(rule, c) is fn]
    return rule.ctx.cache[key]


def argument_for(rule, call: cst.Call, fn: cst.FunctionDef, param: str) -> Optional[cst.BaseExpression]:
    """The expression ``call`` passes to ``fn`` for ``param`` (its default when not passed); None when the
    call spreads ``*args``/``**kwargs`` or the parameter has no default."""
    if any(a.star for a in call.args):
        return None
    for a in call.args:
        if a.keyword is not None and a.keyword.value == param:
            return a.value
    params = [*fn.params.posonly_params, *fn.params.params]
    names = [p.name.value for p in params]
    if method_call(call) is not None and names[:1] in (["self"], ["cls"]):
        params, names = params[1:], names[1:]
    pos = positional(call)
    if param in names and names.index(param) < len(pos):
        return pos[names.index(param)].value
    p = next((p for p in [*params, *fn.params.kwonly_params] if p.name.value == param), None)
    return p.default if p is not None else None


def producing_calls(rule, scope: Optional[cst.FunctionDef], name: str, target: cst.FunctionDef,
                    depth: int = 0) -> Optional[List[cst.Call]]:
    """The calls of ``target`` whose result ``name`` (read in ``scope``) holds: through its assignments in
    ``scope`` (tuple targets too: ``loader, sampler = make_loader(...)``), wrappers, and the parameters of
    ``scope`` filled in by its callers. None when some value cannot be followed."""
    if depth > 3:
        return None
    if scope is not None and name in function_facts(rule, scope).params:
        out: List[cst.Call] = []
        sites = call_sites(rule, scope)
        for c in sites:
            arg = argument_for(rule, c, scope, name)
            got = _from_expr(rule, enclosing_function(rule, c), arg, target, depth + 1) if arg is not None else None
            if got is None:
                return None
            out += got
        return out if sites else None
    vals = assigned_values(rule, scope, name) or (assigned_values(rule, None, name) if scope is not None else [])
    out = []
    for v in vals:
        got = _from_expr(rule, scope, v, target, depth + 1)
        if got is None:
            return None
        out += got
    return out if vals else None


def _from_expr(rule, scope, expr, target, depth) -> Optional[List[cst.Call]]:
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name) and expr.func.value in _WRAPPERS and expr.args:
        expr = expr.args[0].value
    if isinstance(expr, cst.Call) and local_callee(rule, expr) is target:
        return [expr]
    if isinstance(expr, cst.Name):
        return producing_calls(rule, scope, expr.value, target, depth)
    return None

