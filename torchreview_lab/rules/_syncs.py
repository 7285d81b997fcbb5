"""Host-device syncs in source: which calls force one (TR404, TR406) and why, in a user's words."""
from __future__ import annotations

from typing import Optional

import libcst as cst

from ._knowledge import STRICT_SYNC_METHODS
from ._torch import is_method_call, method_call, torch_function

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
        return m
    if torch_function(rule, node) == "nonzero":
        return "nonzero"
    return None


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
