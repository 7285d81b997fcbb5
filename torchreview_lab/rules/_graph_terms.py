"""Helpers for TR152 (views saved for backward), TR158 (one tensor appended many times), TR310 (loss terms
computed under ``no_grad``), TR311 (stop-gradient pairs), TR405 (unpacked moves, per-class loss weights) and
TR503 (logging calls).

Private module (not a rule).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import libcst as cst

from ._flow import NO_GRAD_CONTEXTS, in_no_grad
from ._knowledge import LIKE_FACTORIES, SAVES_INPUT, TENSOR_FACTORIES
from ._torch import (dotted_name, function_facts, kwarg, method_call, names_in, positional, torch_function, walk,
                     walk_own)

# -- values a tensor operation keeps for backward ------------------------------------------------------------
# Ops whose backward reads their (tensor) inputs; products only when the other operand is not a number.
SAVES_INPUTS = SAVES_INPUT | frozenset({"logaddexp", "logaddexp2", "logsumexp", "maximum", "minimum", "hypot",
                                        "xlogy", "special.xlogy", "fmax", "fmin", "log2", "log10", "atan2", "tan",
                                        "nn.functional.normalize", "cdist", "dist", "norm", "rsqrt", "addcmul"})
SAVES_INPUT_METHODS = frozenset({"log", "log1p", "log2", "log10", "logaddexp", "logaddexp2", "logsumexp", "mul",
                                 "matmul", "div", "pow", "sin", "cos", "tan", "reciprocal", "maximum", "minimum",
                                 "norm", "prod", "hypot", "xlogy", "atan2", "mm", "bmm"})
NEW_METHODS = frozenset({"new_zeros", "new_ones", "new_empty", "new_full", "clone", "new_tensor"})
_PRODUCTS = (cst.Multiply, cst.MatrixMultiply, cst.Divide, cst.Power)


def _int_index(rule, fn, e: cst.BaseExpression) -> bool:
    """An index that selects a view: an integer, a slice, ``...``/``None``, or arithmetic on range variables."""
    if isinstance(e, (cst.Integer, cst.Ellipsis)) or isinstance(e, cst.Name) and e.value == "None":
        return True
    if isinstance(e, cst.UnaryOperation):
        return _int_index(rule, fn, e.expression)
    if isinstance(e, cst.BinaryOperation):
        return _int_index(rule, fn, e.left) and _int_index(rule, fn, e.right)
    return isinstance(e, cst.Name) and e.value in _range_vars(fn)


def _range_vars(fn) -> set:
    return {t.value for f in walk_own(fn.body, cst.For) if isinstance(f.iter, cst.Call) and isinstance(
        f.iter.func, cst.Name) and f.iter.func.value == "range" for t in walk(f.target, cst.Name)}


def is_view_of(rule, fn, e: cst.BaseExpression, name: str) -> bool:
    """``e`` is ``name`` or basic indexing of it (``name[t, u - 1]``, ``name[:, 0]``): memory of ``name``."""
    if isinstance(e, cst.Name):
        return e.value == name
    if isinstance(e, cst.Subscript) and is_view_of(rule, fn, e.value, name):
        return all(isinstance(s.slice, cst.Slice) or _int_index(rule, fn, s.slice.value) for s in e.slice)
    return False


def saved_operands(rule, n: cst.CSTNode) -> List[cst.BaseExpression]:
    """The direct operands that the op ``n`` keeps for backward (empty when it keeps none)."""
    if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, _PRODUCTS):
        sides = [n.left, n.right]
        if any(isinstance(s, (cst.Integer, cst.Float)) for s in sides):  # x * 2 keeps nothing of x
            return []
        return [n.left] if isinstance(n.operator, cst.Power) else sides
    if isinstance(n, cst.Call):
        tf = torch_function(rule, n)
        if tf is not None:
            return [a.value for a in positional(n)] if tf in SAVES_INPUTS else []
        mc = method_call(n)
        if mc and mc[1] in SAVES_INPUT_METHODS:
            return [mc[0]] + [a.value for a in positional(n) if not isinstance(a.value, (cst.Integer, cst.Float))]
    return []


def local_table(rule, fn, name: str) -> bool:
    """``name`` is bound (only) to a fresh tensor made in ``fn``: ``x.new_zeros(...)``, ``torch.zeros(...)``."""
    vals = function_facts(rule, fn).assignments.get(name, [])
    if len(vals) != 1 or not isinstance(vals[0], cst.Call) or name in function_facts(rule, fn).params:
        return False
    tf = torch_function(rule, vals[0])
    mc = method_call(vals[0])
    return tf in TENSOR_FACTORIES | LIKE_FACTORIES if tf else bool(mc and mc[1] in NEW_METHODS)


def saved_view_written(rule, fn, name: str, node: cst.CSTNode, may_precede) -> Optional[cst.CSTNode]:
    """The op that kept a view of the table ``name`` for backward before the write ``node`` into it (same
    statement, earlier in the function, or in a loop around both), when values with a graph are written in.
    One write per table answers: the one holding such an op, else the first one after it."""
    key = ("saved-view-write", id(fn), name)
    if key not in rule.ctx.cache:
        rule.ctx.cache[key] = _first_saved_write(rule, fn, name, may_precede) if local_table(rule, fn, name) else None
    hit = rule.ctx.cache[key]
    return hit[1] if hit is not None and hit[0] is node else None


def _first_saved_write(rule, fn, name: str, may_precede):
    params = set(function_facts(rule, fn).params) - {"cls"}
    writes = [a for a in walk_own(fn.body, cst.Assign) for t in a.targets
              if isinstance(t.target, cst.Subscript) and is_view_of(rule, fn, t.target.value, name)]
    if not any(names_in(w.value) & params for w in writes if not in_no_grad(rule, w)):
        return None  # nothing with a graph flows into the table
    ops = [n for n in walk_own(fn.body, (cst.BinaryOperation, cst.Call)) if not in_no_grad(rule, n) and any(
        isinstance(o, cst.Subscript) and is_view_of(rule, fn, o, name) for o in saved_operands(rule, n))]
    for w in writes:
        for n in ops:
            if any(a is w for a in rule.ancestors(n)):
                return w, n
    for w in sorted(writes, key=rule.line_of):
        loops = {id(a) for a in rule.ancestors(w) if isinstance(a, (cst.For, cst.While))}
        for n in ops:
            if any(id(a) in loops for a in rule.ancestors(n)) or rule.line_of(n) < rule.line_of(w) and may_precede(
                    rule, n, w):
                return w, n
    return None


# -- tuple unpacking ---------------------------------------------------------------------------------------------
def unpacked_values(rule, fn, name: str) -> List[cst.BaseExpression]:
    """The element values bound to ``name`` by ``a, name = x.cuda(), y.cuda()`` style assignments in ``fn``."""
    out = []
    for a in walk_own(fn.body if fn is not None else rule.ctx.module, cst.Assign):
        for t in a.targets:
            if isinstance(t.target, (cst.Tuple, cst.List)) and isinstance(a.value, (cst.Tuple, cst.List)) and len(
                    t.target.elements) == len(a.value.elements):
                out += [v.value for e, v in zip(t.target.elements, a.value.elements)
                        if isinstance(e.value, cst.Name) and e.value.value == name]
    return out


def _host_weight(rule, fn, e: cst.BaseExpression, builders) -> bool:
    """A per-class loss weight built on the host: ``torch.tensor(weights)`` (1-D, so not a 0-dim scalar, which
    mixes with CUDA tensors), ``torch.ones(C)``, ``torch.from_numpy(w)``, without ``device=``."""
    if isinstance(e, cst.Name):
        from ._torch import assigned_values
        vals = assigned_values(rule, fn, e.value)
        return len(vals) == 1 and _host_weight(rule, fn, vals[0], builders)
    fname = torch_function(rule, e) if isinstance(e, cst.Call) else None
    if fname not in builders or kwarg(e, "device") is not None or not positional(e):
        return False
    return not isinstance(positional(e)[0].value, (cst.Integer, cst.Float, cst.UnaryOperation))


def loss_weight_on_host(rule, fn, call: cst.Call, builders):
    """``(keyword, weight)`` when ``call`` is a loss given a host-built ``weight=``/``pos_weight=``: a
    ``F.cross_entropy(..., weight=w)`` call, or a call of a loss module built so (``crit = nn.BCEWithLogitsLoss(
    pos_weight=w)``) that the document never moves (``crit.to(device)``/``.cuda()``)."""
    target = call
    tf = torch_function(rule, call) or ""
    if not tf.startswith("nn.functional.") and isinstance(call.func, cst.Name):
        from ._torch import assigned_values
        vals = assigned_values(rule, fn, call.func.value) or assigned_values(rule, None, call.func.value)
        built = vals[0] if len(vals) == 1 and isinstance(vals[0], cst.Call) else None
        if built is None or not (torch_function(rule, built) or "").endswith("Loss") or any(
                (method_call(c) or ("", ""))[1] in ("to", "cuda") and dotted_name(method_call(c)[0]) == call.func.value
                for c in walk(rule.ctx.module, cst.Call)):
            return None, None
        target, fn = built, None if not any(a is built for a in walk(fn.body if fn else rule.ctx.module)) else fn
    elif not tf.startswith("nn.functional."):
        return None, None
    for kw in ("weight", "pos_weight"):
        w = kwarg(target, kw)
        if w is not None and _host_weight(rule, fn, w.value, builders):
            return kw, w.value
    return None, None


# -- logging -------------------------------------------------------------------------------------------------------
LOG_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "critical", "exception", "log", "isEnabledFor"})


def logging_call(rule, call: cst.Call) -> Optional[str]:
    """``"logger.debug"`` when ``call`` is a ``logging`` call: ``logging.info(...)``, or a method of a logger
    from ``logging.getLogger`` (a module- or class-level name, ``self.logger``) or loguru's ``logger``."""
    mc = method_call(call)
    if mc is None or mc[1] not in LOG_METHODS:
        return None
    recv = mc[0]
    if rule.qnames(recv) & {"logging", "loguru.logger"}:
        return rule.code_for(call.func)
    text = dotted_name(recv) or ""
    last = text.rsplit(".", 1)[-1]
    if "logging" not in rule.ctx.names.aliases.values() and not any(
            v.startswith("logging.") for v in rule.ctx.names.aliases.values()):
        return None
    if isinstance(recv, cst.Name):
        from ._torch import assigned_values
        vals = assigned_values(rule, None, recv.value)
        if vals and all(isinstance(v, cst.Call) and rule.qnames(v.func) & {"logging.getLogger"} for v in vals):
            return rule.code_for(call.func)
    return rule.code_for(call.func) if last.lower().strip("_") in ("logger", "log", "_logger") and mc[1] != "log" \
        else None


# -- loss terms ------------------------------------------------------------------------------------------------------
_LINEAR_METHODS = frozenset({"mean", "sum", "squeeze", "view", "reshape", "flatten", "float", "double", "neg"})
_LINEAR_FUNCTIONS = frozenset({"mean", "sum", "neg"})


def linear_terms(rule, e: cst.BaseExpression, depth: int = 0) -> List[cst.BaseExpression]:
    """The additive terms of ``e`` through ``+``, ``-``, negation, scaling by a number and ``.mean()/.sum()``:
    ``[log_z, gold]`` for ``(log_z - gold).mean()``; an opaque expression is its own term."""
    if depth > 8:
        return [e]
    if isinstance(e, cst.BinaryOperation) and isinstance(e.operator, (cst.Add, cst.Subtract)):
        return linear_terms(rule, e.left, depth + 1) + linear_terms(rule, e.right, depth + 1)
    if isinstance(e, cst.BinaryOperation) and isinstance(e.operator, (cst.Multiply, cst.Divide)):
        for a, b in ((e.left, e.right), (e.right, e.left)):
            if isinstance(b, (cst.Integer, cst.Float)) or isinstance(b, cst.Attribute) and not isinstance(
                    a, (cst.Integer, cst.Float)) and dotted_name(b) and dotted_name(b).startswith("self."):
                if b is e.right or isinstance(e.operator, cst.Multiply):
                    return linear_terms(rule, a, depth + 1)
        return [e]
    if isinstance(e, cst.UnaryOperation):
        return linear_terms(rule, e.expression, depth + 1)
    if isinstance(e, cst.Call):
        mc = method_call(e)
        if mc and mc[1] in _LINEAR_METHODS and torch_function(rule, e) is None:
            return linear_terms(rule, mc[0], depth + 1)
        if torch_function(rule, e) in _LINEAR_FUNCTIONS and positional(e):
            return linear_terms(rule, positional(e)[0].value, depth + 1)
    return [e]


def no_grad_with(rule, node: cst.CSTNode) -> Optional[cst.With]:
    """The innermost ``with torch.no_grad():`` block around ``node`` inside its function."""
    for a in rule.ancestors(node):
        if isinstance(a, cst.FunctionDef):
            return None
        if isinstance(a, cst.With) and any(isinstance(i.item, cst.Call) and torch_function(rule, i.item)
                                           in NO_GRAD_CONTEXTS for i in a.items):
            return a
    return None


def distance_pair(rule, e: cst.BaseExpression) -> Optional[Tuple[cst.BaseExpression, cst.BaseExpression]]:
    """``(a, b)`` for ``F.mse_loss(a, b)``/``l1_loss``/``smooth_l1_loss``/``huber_loss`` and for
    ``((a - b) ** 2).mean()``/``(a - b).pow(2).sum(...)``."""
    if not isinstance(e, cst.Call):
        return None
    tf = torch_function(rule, e) or ""
    if tf.rsplit(".", 1)[-1] in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss") and len(positional(e)) >= 2:
        return positional(e)[0].value, positional(e)[1].value
    inner = e
    while isinstance(inner, cst.Call) and (method_call(inner) or ("", ""))[1] in ("mean", "sum"):
        inner = method_call(inner)[0]
    if torch_function(rule, e) in ("mean", "sum") and positional(e):
        inner = positional(e)[0].value
    base = None
    if isinstance(inner, cst.BinaryOperation) and isinstance(inner.operator, cst.Power):
        base = inner.left
    elif isinstance(inner, cst.Call) and (method_call(inner) or ("", ""))[1] in ("pow", "square", "abs"):
        base = method_call(inner)[0]
    if base is not inner and isinstance(base, cst.BinaryOperation) and isinstance(base.operator, cst.Subtract):
        return base.left, base.right
    return None


def detached(rule, e: cst.BaseExpression) -> Optional[str]:
    """The code of ``x`` when ``e`` is ``x.detach()`` (a stop-gradient); None otherwise."""
    mc = method_call(e)
    if mc and mc[1] == "detach" and not positional(e) and kwarg(e, "inplace") is None:
        return rule.code_for(mc[0]).replace(" ", "")
    return None
