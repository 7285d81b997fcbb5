"""Host-device syncs in source: which calls force one (TR404, TR406) and why, in a user's words."""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import libcst as cst

from ._knowledge import STRICT_SYNC_METHODS
from ._loops import bindings_in, loop_level, runs_step
from ._torch import (assigned_values, enclosing_function, enclosing_loops, is_method_call, loop_targets, method_call,
                     names_in, torch_function, walk, walk_own)

SYNC_EXPLANATIONS = {
    "item": "reads one value back to Python",
    "tolist": "copies the tensor into Python objects",
    "numpy": "needs a host copy",
    "cpu": "copies the tensor to host memory",
    "nonzero": "has a data-dependent output size, so the host must wait for the count",
}


def sync_method(rule, node: cst.Call) -> Optional[str]:
    """``item``/``tolist``/``numpy``/``cpu``/``nonzero`` for a syncing method or ``torch.nonzero`` call."""
    m = is_method_call(rule, node, STRICT_SYNC_METHODS)
    if m:
        return None if _numpy_made(rule, method_call(node)[0]) else m
    if torch_function(rule, node) == "nonzero":
        return "nonzero"
    return None


def _numpy_made(rule, expr, depth: int = 0) -> bool:
    """``expr`` is made by numpy (``np.arange(3)``, ``rng.integers(1, 9, n)`` with ``rng = np.random.default_rng()``):
    its ``.tolist()``/``.item()`` never touches a device."""
    while isinstance(expr, cst.Call) and depth < 4:
        if any(q.startswith("numpy.") for q in rule.qnames(expr.func)):
            return True
        mc = method_call(expr)
        if mc is None:
            return False
        expr, depth = mc[0], depth + 1
    if isinstance(expr, cst.Name) and depth < 4:
        fn = enclosing_function(rule, expr)
        vals = (assigned_values(rule, fn, expr.value) if fn is not None else []) or assigned_values(rule, None, expr.value)
        return bool(vals) and all(_numpy_made(rule, v, depth + 1) for v in vals)
    return False


def outer_of_chain(rule, node: cst.Call) -> bool:
    """True when ``node`` is not the receiver of another syncing call (report ``.cpu().numpy()`` once)."""
    p = rule.parent(node)
    if isinstance(p, cst.Attribute) and p.value is node:
        gp = rule.parent(p)
        if isinstance(gp, cst.Call) and sync_method(rule, gp):
            return False
    return True


def chain_methods(rule, node: cst.Call) -> list:
    out = []
    cur = node
    while isinstance(cur, cst.Call) and sync_method(rule, cur):
        out.append(sync_method(rule, cur))
        mc = method_call(cur)
        cur = mc[0] if mc else None
    return list(reversed(out))


def _rare_test(test: cst.BaseExpression, counters) -> bool:
    """``step % 50 == 0``, ``not step % n``, ``i == 0``, ``i == len(loader) - 1`` (a loop counter compared
    for equality): true on few iterations."""
    for u in walk(test, cst.UnaryOperation):
        if isinstance(u.operator, cst.Not) and isinstance(u.expression, cst.BinaryOperation) and \
                isinstance(u.expression.operator, cst.Modulo):
            return True
    for cmp in walk(test, cst.Comparison):
        if any(isinstance(t.operator, cst.Equal) for t in cmp.comparisons):
            sides = [cmp.left, *(t.comparator for t in cmp.comparisons)]
            if any(isinstance(b.operator, cst.Modulo) for s in sides for b in walk(s, cst.BinaryOperation)):
                return True
            if any(isinstance(s, cst.Name) and s.value in counters for s in sides):
                return True
    return False


def periodic(rule, node: cst.CSTNode) -> bool:
    """``node`` is in the body (not the ``else``) of an ``if`` inside its innermost loop whose test is
    true on few iterations: ``if step % 50 == 0:`` (logging every N steps), ``if i == 0:``."""
    child = node
    for a in rule.ancestors(node):
        if isinstance(a, (cst.For, cst.While, cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            return False
        if isinstance(a, cst.If) and child is a.body:
            counters = set().union(*(loop_targets(lp) for lp in enclosing_loops(rule, a)))
            if _rare_test(a.test, counters):
                return True
        child = a
    return False


def sync_cost(rule, node: cst.CSTNode) -> Tuple[Optional[str], Union[str, Dict[str, str], None]]:
    """``(where, severity)`` for a sync in a loop: ``where`` is ``"epoch"`` (outside the loop over data
    that an enclosing loop contains: not reported), ``"periodic"``, ``"eval"``, ``"train"``, ``"copies"``
    or ``"loop"``. A sync under a rarely-true guard is low; once per evaluation batch (the standard way
    to accumulate metrics) low in research and medium in production; in a loop that is not over data,
    reading values the loop does not compute (:func:`reads_precomputed`), low; once per training step
    or per iteration of another loop that computes what it syncs, medium."""
    level, loop = loop_level(rule, node)
    if level == "epoch":
        return "epoch", None
    if periodic(rule, node):
        return "periodic", "low"
    if level == "batch" and not runs_step(rule, loop.body, forward=False):
        return "eval", {"research": "low", "production": "medium"}
    if level is None and sync_method(rule, node) and reads_precomputed(rule, node):
        return "copies", "low"
    return ("train" if level == "batch" else "loop"), "medium"


def reads_precomputed(rule, node: cst.Call) -> bool:
    """The sync reads a value that the loop does not compute: ``v.item()`` for ``v`` in a dict of
    metrics, ``x[i].item()`` of a tensor computed before the loop. No kernel was queued in the
    iteration, so after the first one each sync is a small device-to-host copy, not a stall."""
    loop = next(iter(enclosing_loops(rule, node)), None)

    def computed(name: str) -> bool:  # (re)bound in the loop's body; a comprehension binds only its targets
        return isinstance(loop, (cst.For, cst.While)) and (
            any(b is not loop for b in bindings_in(rule, loop, name))
            or any(isinstance(a.target, cst.Name) and a.target.value == name
                   for a in walk_own(loop.body, cst.AugAssign)))

    cur = node
    while True:
        if isinstance(cur, cst.Subscript) and any(computed(n) for e in cur.slice for n in names_in(e)):
            return False  # ``x[mask]`` with a mask built in the loop: a kernel to wait for
        if isinstance(cur, cst.Call):
            mc = method_call(cur)
            if mc is None or not (sync_method(rule, cur) or mc[1] in ("detach", "squeeze", "view", "reshape")):
                return False
            cur = mc[0]
        elif isinstance(cur, (cst.Subscript, cst.Attribute)):
            cur = cur.value
        else:
            break
    return isinstance(cur, cst.Name) and not computed(cur.value)
