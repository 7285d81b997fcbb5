"""Learning-rate schedulers (TR631): which construction a ``sched.step()`` receiver holds (also when it is
handed to the function as a parameter) and in which unit its length is given: optimizer steps
(``OneCycleLR(epochs=..., steps_per_epoch=...)``, ``T_max=epochs * len(loader)``, ``num_training_steps``) or
epochs (``StepLR(step_size=args.lr_step_epochs)``, ``T_max=args.epochs``, ``ExponentialLR(gamma=0.9)``).

The unit is read from the constructor arguments only: a ``len(...)`` of a loader or dataset or a name whose
last word counts steps, iterations, batches or updates means optimizer steps; a name about epochs (and no
step count) means epochs; a literal or any other name decides nothing."""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

import libcst as cst

from ._call_sites import argument_for, call_sites
from ._loops import caller_loops, holds_batch_loop, iterates_batches, loop_level
from ._training import accumulation
from ._context import construction_of
from ._torch import (assigned_values, dotted_name, enclosing_function, function_facts, kwarg, last_part, positional,
                     torch_function, walk)

# class -> (argument, position) that sizes the schedule, for the classes whose length decides their unit
SIZED = {"OneCycleLR": ("total_steps", 2), "CosineAnnealingLR": ("T_max", 1), "LinearLR": ("total_iters", 3),
         "PolynomialLR": ("total_iters", 1), "ConstantLR": ("total_iters", 2), "StepLR": ("step_size", 1),
         "MultiStepLR": ("milestones", 1), "CosineAnnealingWarmRestarts": ("T_0", 1)}
# transformers' schedule factories: their length is ``num_training_steps`` (third positional argument)
HF_SCHEDULES = frozenset({"get_linear_schedule_with_warmup", "get_cosine_schedule_with_warmup", "get_scheduler",
                          "get_polynomial_decay_schedule_with_warmup", "get_cosine_with_hard_restarts_schedule_with_warmup",
                          "get_wsd_schedule", "get_inverse_sqrt_schedule"})
_STEP_WORDS = re.compile(r"(steps?|iters?|iterations?|batches|updates|nsteps|niters)$")
_PER_EPOCH = re.compile(r"(steps?|iters?|iterations?|batches|updates)_?(per|in|each)_?epoch")


def schedule_kind(rule, sched: cst.Call, fn) -> Optional[Tuple[str, str, frozenset]]:
    """``(unit, class name, names)`` for a scheduler construction whose length is provably given in optimizer
    steps (unit ``"steps!"`` when tied to the data: ``len(loader)``, a per-epoch count; ``"steps"`` for a
    step-count name) or in epochs (``"epochs"``), with the dotted names its length reads; None when its
    arguments do not tell."""
    name = last_part(torch_function(rule, sched))
    hf = next((q.rsplit(".", 1)[-1] for q in rule.qnames(sched.func) if q.startswith("transformers.")), None)
    if hf in HF_SCHEDULES:
        a = kwarg(sched, "num_training_steps") or (positional(sched)[3 if hf == "get_scheduler" else 2:][:1] or [None])[0]
        u = unit(rule, a.value, fn) if a is not None else None
        return (u, hf, chains(a.value)) if u in ("steps", "steps!") else None
    if name == "ExponentialLR":
        g = kwarg(sched, "gamma") or (positional(sched)[1:2] or [None])[0]
        return ("epochs", name, frozenset()) if g is not None and isinstance(g.value, cst.Float) and float(
            g.value.value) < 0.99 else None
    if name not in SIZED:
        return None
    kw, i = SIZED[name]
    a = kwarg(sched, kw) or (positional(sched)[i:i + 1] or [None])[0]
    if name == "OneCycleLR" and a is None:
        e, s = kwarg(sched, "epochs"), kwarg(sched, "steps_per_epoch") or (positional(sched)[4:5] or [None])[0]
        return ("steps!", name, frozenset()) if e is not None and s is not None and rule.code_for(s.value) != "1" \
            else None
    u = unit(rule, a.value, fn) if a is not None else None
    return (u, name, chains(a.value)) if u else None


def unit(rule, expr: cst.BaseExpression, fn, depth: int = 0) -> Optional[str]:
    """``"steps!"``, ``"steps"``, ``"epochs"`` or None for a length expression (see :func:`schedule_kind`),
    following names assigned once."""
    kinds = set()
    for n in walk(expr, (cst.Call, cst.Name, cst.Attribute)):
        if isinstance(n, cst.Call):
            kinds.add("steps!" if rule.code_for(n.func) == "len" else None)
            continue
        word = (n.attr.value if isinstance(n, cst.Attribute) else n.value).lower()
        if _PER_EPOCH.search(word) or _STEP_WORDS.search(word):
            kinds.add("steps!" if _PER_EPOCH.search(word) else "steps")
        elif "epoch" in word:
            kinds.add("epochs")
        elif isinstance(n, cst.Name) and depth < 2 and not isinstance(rule.parent(n), cst.Attribute):
            vals = assigned_values(rule, fn, n.value) or (assigned_values(rule, None, n.value) if fn else [])
            kinds.add(unit(rule, vals[0], enclosing_function(rule, vals[0]), depth + 1) if len(vals) == 1 else None)
    return next((k for k in ("steps!", "steps", "epochs") if k in kinds), None)


def chains(expr: cst.CSTNode) -> frozenset:
    """The longest dotted names ``expr`` reads (``{"args.epochs"}`` for ``range(args.epochs)``)."""
    found = {d for x in walk(expr, (cst.Name, cst.Attribute)) if (d := dotted_name(x))}
    return frozenset(d for d in found if not any(c.startswith(d + ".") for c in found))


def scheduler_constructions(rule, recv: cst.BaseExpression) -> List[Tuple[cst.Call, Optional[cst.FunctionDef]]]:
    """``(construction, its function)`` for each value the receiver ``recv`` of ``recv.step()`` can hold: its own
    binding, or for a parameter of the function, what each caller passes (one level). Empty when unknown."""
    fn = enclosing_function(rule, recv)
    made = construction_of(rule, fn, recv)
    if made is not None:
        return [(made, fn)]
    if not isinstance(recv, cst.Name) or fn is None or recv.value not in function_facts(rule, fn).params \
            or recv.value in function_facts(rule, fn).assignments:
        return []
    out = []
    for c in call_sites(rule, fn):
        arg = argument_for(rule, c, fn, recv.value)
        caller = enclosing_function(rule, c)
        made = construction_of(rule, caller, arg) if arg is not None else None
        if made is None:
            return []
        out.append((made, caller))
    return out


def is_scheduler(rule, made: cst.Call) -> bool:
    """``made`` builds a torch LR scheduler or a transformers schedule."""
    return any(q.startswith("torch.optim.lr_scheduler.") or q.startswith("transformers.") and q.rsplit(".", 1)[-1] in
               HF_SCHEDULES or q.startswith("transformers.") and "schedule" in q for q in rule.qnames(made.func)) or (
        torch_function(rule, made) or "").startswith("optim.lr_scheduler.")


def is_scheduler_name(recv: cst.BaseExpression) -> bool:
    return "sched" in (dotted_name(recv) or "").rsplit(".", 1)[-1].lower()


def step_level(rule, node: cst.Call) -> Tuple[Optional[str], Optional[cst.CSTNode]]:
    """``("batch", loop)``: on every batch (or every accumulated step) of a loop over data; ``("epoch", loop)``:
    once per pass over the data, with the loop that repeats the passes; ``(None, None)`` when not known. A loop
    whose every pass is one full-batch epoch (``for epoch in range(n): loss = model(data) ...``) is no batch loop."""
    level, loop = loop_level(rule, node)
    if level == "batch":
        acc = accumulation(rule, loop)
        fn = enclosing_function(rule, loop)
        nested = any(isinstance(a, (cst.For, cst.While)) for a in rule.ancestors(loop)) or bool(
            fn and caller_loops(rule, fn))
        head = loop.target if isinstance(loop, cst.For) else loop.test
        if not iterates_batches(rule, loop) and (not nested or "epoch" in rule.code_for(head)):
            return None, None
        for a in rule.ancestors(node):
            if a is loop:
                return level, loop
            if isinstance(a, (cst.If, cst.IfExp, cst.While, cst.For, cst.Try)) and not (
                    acc and isinstance(a, cst.If) and acc[1] <= rule.line_of(a.body) <= acc[2]):
                return None, None  # conditional: maybe once per epoch
    if level is None:
        fn = enclosing_function(rule, node)
        outer = caller_loops(rule, fn) if fn is not None else []
        if outer and not any(isinstance(a, (cst.For, cst.While)) for a in rule.ancestors(node)) \
                and holds_batch_loop(rule, fn.body):
            return "epoch", outer[0]  # after the batch loop of a function called once per epoch
    return level, loop
