"""Samplers that shuffle by epoch (TR617): the ``DistributedSampler(...)`` a ``sampler=`` argument holds, also
through ``DistributedSampler(ds) if ddp else None`` or ``sampler = None`` / ``if ddp: sampler = ...``; and the
names a ``for`` header iterates as data."""
from __future__ import annotations

from typing import Optional

import libcst as cst

from ._call_sites import argument_for, producing_calls
from ._context import bound_values
from ._knowledge import EPOCH_SEEDED_SAMPLERS
from ._torch import enclosing_function, function_facts, kwarg, last_part, positional, torch_function, walk_own


def epoch_seeded_sampler(rule, fn, expr) -> Optional[cst.Call]:
    """The one construction of an epoch-seeded sampler class (``DistributedSampler``) that ``expr`` (a call, a
    conditional expression, a name or ``self.attr`` bound in ``fn``) may hold; None when there is none or several."""
    vals = bound_values(rule, fn, expr, params_shadow=True) if isinstance(expr, (cst.Name, cst.Attribute)) else [expr]
    vals = [b for v in vals for b in ((v.body, v.orelse) if isinstance(v, cst.IfExp) else (v,))]
    made = [v for v in vals if isinstance(v, cst.Call) and last_part(torch_function(rule, v)) in EPOCH_SEEDED_SAMPLERS]
    return made[0] if len(made) == 1 else None


def shuffle_flag(rule, fn, made: cst.Call):
    """Whether the sampler ``made`` shuffles: True (the default or ``shuffle=True``), False (``False`` or an
    expression), or the name of the parameter of ``fn`` it is given (``shuffle=train``), decided per call."""
    arg = kwarg(made, "shuffle") or (positional(made)[3:4] or [None])[0]
    v = arg.value if arg is not None else None
    facts = function_facts(rule, fn) if fn is not None else None
    if isinstance(v, cst.Name) and facts is not None and v.value in facts.params and v.value not in facts.assignments:
        return v.value
    return v is None or rule.code_for(v) == "True"


def shuffled_by_callers(rule, loop, fn, flag: str) -> bool:
    """Every call of ``fn`` that built the loader ``loop`` iterates passes ``True`` for the parameter ``flag``
    (or leaves a ``True`` default)."""
    sites = [c for n in data_names(loop.iter) for c in producing_calls(rule, enclosing_function(rule, loop), n, fn)
             or [None]]
    return bool(sites) and all(c is not None and rule.code_for(argument_for(rule, c, fn, flag) or cst.Name("None"))
                               == "True" for c in sites)


def iterated_names(rule, it: cst.BaseExpression, scope) -> set:
    """Names iterated by a for-loop header: ``loader``, ``enumerate(loader)``, ``tqdm(loader)``, and one
    assignment back (``pbar = tqdm(loader)``); not ``range(len(loader))``."""
    out = data_names(it)
    for a in walk_own(scope, cst.Assign):
        if any(rule.code_for(t.target) in out for t in a.targets):
            out |= data_names(a.value)
    return out


def data_names(e: cst.CSTNode) -> set:
    """Plain names an iteration header reads as data (not callees, attributes, sizes or ranges)."""
    if isinstance(e, cst.Name):
        return {e.value}
    if isinstance(e, cst.Call):
        skip = isinstance(e.func, cst.Name) and e.func.value in ("len", "range")
        return set() if skip else set().union(*(data_names(a.value) for a in e.args))
    if isinstance(e, (cst.Tuple, cst.List)):
        return set().union(*(data_names(x.value) for x in e.elements))
    return set()
