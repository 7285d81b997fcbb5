"""Whether an expression is the output of a document model whose ``forward`` ends in an activation
(TR607): followed through names, indexing and probability-preserving methods, tuple unpacking of the
model's result (``recon, mu, logvar = model(x)`` with ``return self.decode(z), mu, logvar``) and, for a
parameter of a helper such as ``vae_loss(recon, x)``, the arguments at every call of that helper."""
from __future__ import annotations

from typing import Optional, Tuple

import libcst as cst

from ._activations import activation_of
from ._bindings import forward_activation, instance_class, reaching_value
from ._knowledge import PROBABILITY_PRESERVING
from ._torch import (assigned_values, enclosing_function, function_facts, is_method_call, module_functions, positional,
                     walk, walk_own)


def model_output(rule, fn, expr, depth: int = 0) -> Optional[Tuple[str, cst.Call, cst.Call]]:
    """``(kind, model call, forward's activation call)`` or None."""
    if depth > 5 or expr is None:
        return None
    if isinstance(expr, cst.Name):
        v = reaching_value(rule, fn, expr.value, expr)
        if v is not None:
            return model_output(rule, fn, v, depth + 1)
        unpacked = _unpacked(rule, fn, expr.value) if fn is not None else None
        if unpacked is not None:
            return _of_call(rule, fn, unpacked[0], unpacked[1])
        if fn is None or assigned_values(rule, fn, expr.value) or expr.value not in function_facts(rule, fn).params:
            return None
        return _from_callers(rule, fn, expr.value, depth)
    if isinstance(expr, cst.Subscript) or is_method_call(rule, expr, PROBABILITY_PRESERVING):
        return model_output(rule, fn, expr.value if isinstance(expr, cst.Subscript) else expr.func.value, depth + 1)
    return _of_call(rule, fn, expr, None) if isinstance(expr, cst.Call) else None


def _of_call(rule, fn, call: cst.Call, index: Optional[int]):
    cls = instance_class(rule, fn, call.func)
    act = forward_activation(rule, cls, index) if cls is not None else None
    return (act[0], call, act[1]) if act else None


def _unpacked(rule, fn, name: str) -> Optional[Tuple[cst.Call, int]]:
    """``(call, i)`` when ``name`` is bound in ``fn`` only as element ``i`` of ``a, b = call(...)`` (the same
    call and position at every such binding)."""
    hits = []
    for a in walk_own(fn.body, cst.Assign):
        for t in a.targets:
            if isinstance(t.target, (cst.Tuple, cst.List)):
                names = [e.value.value if isinstance(e.value, cst.Name) and not isinstance(e, cst.StarredElement)
                         else None for e in t.target.elements]
                if name in names:
                    hits.append((a.value, names.index(name), any(isinstance(e, cst.StarredElement)
                                                                 for e in t.target.elements)))
    same = {(rule.code_for(v), i) for v, i, _ in hits}  # several bindings: all the same call and position
    if not hits or len(same) != 1 or any(star for *_, star in hits) or not isinstance(hits[0][0], cst.Call):
        return None
    return hits[0][0], hits[0][1]


def _from_callers(rule, fn, name: str, depth: int):
    """A parameter of a document function: what every call of the function passes for it."""
    if module_functions(rule).get(fn.name.value) is not fn:
        return None
    params = [p.name.value for p in fn.params.params]
    i = params.index(name) if name in params else None
    got = []
    for call in walk(rule.ctx.module, cst.Call):
        if not (isinstance(call.func, cst.Name) and call.func.value == fn.name.value):
            continue
        pos = positional(call)
        arg = next((a.value for a in call.args if a.keyword is not None and a.keyword.value == name), None)
        arg = arg if arg is not None else (pos[i].value if i is not None and i < len(pos) else None)
        caller = enclosing_function(rule, call)
        got.append(model_output(rule, caller, arg, depth + 1) or (
            activation_of(rule, arg, caller, rule.line_of(call)) if arg is not None else None))
    if not got or None in got or len({g[0] for g in got}) != 1:
        return None
    return got[0] if len(got[0]) == 3 else None
