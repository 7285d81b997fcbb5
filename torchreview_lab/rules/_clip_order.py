"""Gradient clipping placed before the backward of its iteration (TR611): after ``zero_grad`` the gradients are
None (or still the previous step's), the backward then writes fresh ones and the step applies them unclipped."""
from __future__ import annotations

from typing import Optional, Tuple

import libcst as cst

from ._torch import walk_own
from ._training import EXITS, stepped, straight_line, writes_grads


def backward_then_step(rule, node: cst.Call) -> Optional[Tuple[cst.CSTNode, str]]:
    """``(backward statement, stepped optimizer)`` when the clip ``node`` (maybe under an ``if`` of its own) runs
    before the backward of its iteration, with no earlier backward, and a step follows that backward in the same
    block; None otherwise."""
    anchor = node
    p = next((a for a in rule.ancestors(node) if isinstance(a, (cst.IndentedBlock, cst.SimpleStatementSuite))), None)
    if isinstance(rule.parent(p), cst.If) and rule.parent(p).orelse is None:
        anchor = rule.parent(p)  # if args.clip: clip_grad_norm_(...)
    its, k = straight_line(rule, anchor)
    for it in reversed(its[:k or 0]) if anchor is not node else ():
        if isinstance(it, EXITS) or writes_grads(rule, it, strict=False):
            return None  # gradients of an earlier backward
        if any(stepped(rule, c) for c in walk_own(it, cst.Call)):
            break
    backward = None
    for it in its[k + 1:] if k is not None else ():
        if isinstance(it, (cst.FunctionDef, cst.ClassDef)):
            continue
        opt = next((o for c in walk_own(it, cst.Call) if (o := stepped(rule, c))), None)
        if opt and backward is not None:
            break
        if opt or isinstance(it, EXITS):
            return None  # a step before any backward uses the gradients there are
        if backward is None and writes_grads(rule, it, strict=True):
            backward = it
    else:
        return None
    return backward, opt
