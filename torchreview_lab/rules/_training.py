"""Training-loop structure shared by the rules on the order of backward, clear, clip and step
(TR610, TR611): which names are optimizers, which call steps one, whether a statement writes
gradients, and the straight-line block around a call."""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import libcst as cst

from ._torch import method_call, module_functions, walk, walk_own

_NOT_WRITING = ("zero_grad", "no_grad", "enable_grad", "requires_grad", "set_grad_enabled", "clip_grad", "is_grad")
EXITS = (cst.Return, cst.Raise, cst.Break, cst.Continue)


def writes_grads(rule, node: cst.CSTNode, strict: bool, depth: int = 0) -> bool:
    """``node`` runs a backward; unless ``strict``, or anything that may write ``.grad`` (``autograd.grad``,
    grad-named calls, calls and assignments touching ``.grad`` except clearing, local functions doing so)."""
    for n in (node, *walk_own(node)):
        if isinstance(n, cst.Call):
            name = n.func.attr.value if isinstance(n.func, cst.Attribute) else rule.code_for(n.func)
            fn = module_functions(rule).get(name) if isinstance(n.func, cst.Name) and depth < 2 else None
            if "backward" in name.lower() or not strict and (
                    "grad" in name.lower() and not name.lower().startswith(_NOT_WRITING)
                    or ".grad" in rule.code_for(n) and name not in ("zero_", "detach_", "zero_grad")
                    or fn is not None and writes_grads(rule, fn.body, False, depth + 1)):
                return True
        elif not strict and isinstance(n, (cst.Assign, cst.AugAssign)) and ".grad" in rule.code_for(n) and (
                rule.code_for(n.value) != "None"):
            return True
    return False


def straight_line(rule, node: cst.CSTNode) -> Tuple[List[cst.CSTNode], Optional[int]]:
    """The items of the innermost block around ``node`` (small statements in order, ``with`` bodies inlined,
    compound statements whole) and the index of the one holding ``node``."""
    chain = [node]
    for a in rule.ancestors(node):
        if isinstance(a, (cst.IndentedBlock, cst.SimpleStatementSuite, cst.Module)) and not isinstance(
                rule.parent(a), cst.With):
            its = _items(a)
            return its, next((i for i, it in enumerate(its) if any(it is c for c in chain)), None)
        chain.append(a)
    return [], None


def _items(block) -> List[cst.CSTNode]:
    return [i for s in block.body for i in (s.body if isinstance(s, cst.SimpleStatementLine) else
                                            _items(s.body) if isinstance(s, cst.With) else [s])]


OPT_NAME = re.compile(r"optim|(^|_)opt(?!ion)", re.I)


def optimizers(rule) -> Dict[str, Optional[cst.Call]]:
    """Optimizers (code -> constructor or None): targets of a ``torch.optim`` class call, ``optim``-named
    expressions with ``.step()`` called, and ``opt``-named ones with both ``.step()`` and ``.zero_grad()``."""
    if "training-optimizers" not in rule.ctx.cache:
        found: Dict[str, Optional[cst.Call]] = {}
        seen: Dict[str, set] = {}
        for n in walk(rule.ctx.module):
            if isinstance(n, cst.Assign) and isinstance(n.value, cst.Call) and any(q.startswith("torch.optim.") and not
                    q.startswith(("torch.optim.lr_sch", "torch.optim.swa")) for q in rule.qnames(n.value.func)):
                found.update((rule.code_for(t.target), n.value) for t in n.targets)
            elif method_call(n) and method_call(n)[1] in ("step", "zero_grad"):
                seen.setdefault(rule.code_for(method_call(n)[0]), set()).add(method_call(n)[1])
        named = {c: None for c, u in seen.items() if OPT_NAME.search(c.rsplit(".", 1)[-1]) and (
            len(u) == 2 or "optim" in c.rsplit(".", 1)[-1].lower())}
        rule.ctx.cache["training-optimizers"] = {**named, **found}
    return rule.ctx.cache["training-optimizers"]


def stepped(rule, call: cst.Call) -> Optional[str]:
    """The optimizer stepped by ``opt.step()`` / ``scaler.step(opt)`` (no closure); None otherwise."""
    mc = method_call(call)
    recv = rule.code_for(mc[0]) if mc and mc[1] == "step" else ""
    if recv and not call.args and recv in optimizers(rule):
        return recv
    if len(call.args) == 1 and not call.args[0].keyword and "scaler" in recv.rsplit(".", 1)[-1].lower():
        return rule.code_for(call.args[0].value)
    return None


def param_roots(rule, node: Optional[cst.CSTNode]) -> set:
    """``{"model"}`` for an expression holding ``model.parameters()``."""
    return {rule.code_for(method_call(c)[0]) for c in walk(node, cst.Call) if method_call(c)
            and method_call(c)[1] in ("parameters", "named_parameters")} if node is not None else set()
