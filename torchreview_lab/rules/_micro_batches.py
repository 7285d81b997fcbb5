"""Gradient accumulation written as an inner loop over micro-batches (nanoGPT style): ``for _ in range(N)``
fetching a batch on each pass, or ``for mb in batch.chunk(N)``, each pass back-propagating, with the optimizer
stepped once after the loop (TR615)."""
from __future__ import annotations

from typing import Optional, Tuple

import libcst as cst

from ._torch import loop_targets, method_call, names_in, walk_own
from ._training import backward_loss, stepped, straight_line, unconditional_in, writes_grads


def micro_batch_loop(rule, loop) -> Optional[Tuple[cst.BaseExpression, int, int]]:
    """``(N, 0, 0)`` for an inner loop of ``N`` micro-batches (``for _ in range(N)`` fetching a batch each
    time, ``for mb in x.chunk(N)``) that back-propagates on every pass, never steps, and is followed in its
    block by an optimizer step before any other backward."""
    it = loop.iter if isinstance(loop, cst.For) else None
    it = it.args[0].value if isinstance(it, cst.Call) and rule.code_for(it.func) == "enumerate" and it.args else it
    if not isinstance(it, cst.Call) or any(stepped(rule, c) for c in walk_own(loop.body, cst.Call)):
        return None
    mc, name = method_call(it), rule.code_for(it.func)
    if name == "range" and len(it.args) == 1:
        n = it.args[0].value
        if isinstance(n, cst.Integer) and n.evaluated_value < 2 or not any(
                rule.code_for(c.func) == "next" or "batch" in rule.code_for(c.func).rsplit(".", 1)[-1].lower()
                for c in walk_own(loop.body, cst.Call)) and not any(
                names_in(s.slice[0]) & loop_targets(loop) for s in walk_own(loop.body, cst.Subscript)):
            return None  # no new data per pass: not micro-batches
    elif mc and mc[1] == "chunk" and it.args:
        n = it.args[0].value
    else:
        return None
    if not any(backward_loss(rule, c) and unconditional_in(rule, c, loop) for c in walk_own(loop.body, cst.Call)):
        return None
    its, k = straight_line(rule, loop)
    for after in its[k + 1:] if k is not None else ():
        if any(stepped(rule, c) for c in walk_own(after, cst.Call)):
            return n, 0, 0
        if writes_grads(rule, after, strict=True):
            return None
    return None
