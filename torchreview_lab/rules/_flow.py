"""Helpers for gradient-flow, memory-correctness, numerics and shape rules (TR15x, TR2xx-TR3xx, TR6xx, TR9xx).

Private module (not a rule): what carries an autograd graph, whether code runs under ``no_grad``,
where a value goes (combined with others, returned, put in a container, turned into a number),
documented tensor shapes from comments/docstrings, numerics (max-shifted, centred, sums of squares),
and symbolic upper bounds of index expressions.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Set, Tuple

import libcst as cst

from ._context import self_attribute_values
from ._knowledge import (CENTRING_REDUCTIONS, COMBINING_FUNCTIONS, SHAPE_FACTORIES, SIZE_ARG_POSITION, SUM_REDUCTIONS,
                         TENSOR_METHODS)
from ._torch import (
    assigned_values,
    container_elements,
    dotted_name,
    enclosing_class,
    enclosing_function,
    enclosing_loops,
    fast_children,
    function_facts,
    in_loop_body,
    is_method_call,
    kwarg,
    method_call,
    names_in,
    positional,
    shape_dims,
    torch_function,
    walk,
    walk_own,
)

# Calls that end the graph: the value is a Python number or a tensor without history.
DETACHING_METHODS = frozenset({"item", "detach", "tolist", "numpy", "detach_"})
DETACHING_BUILTINS = frozenset({"float", "int", "bool", "len", "str", "round"})
# Reductions whose result still carries the graph of their input.
GRAPH_REDUCTIONS = frozenset({"sum", "mean", "max", "min", "prod", "logsumexp", "norm", "std", "var",
                              "amax", "amin", "squeeze", "view", "reshape", "flatten", "abs", "sqrt",
                              "pow", "mul", "add", "div", "sub", "neg", "exp", "log", "float", "double",
                              "to", "cpu", "cuda", "clone", "contiguous"})
# Callee names (last dotted part, lower-case) that are models or criteria: their outputs carry a graph.
MODEL_CALLEE_HINTS = ("model", "net", "criterion", "loss", "encoder", "decoder", "module", "policy", "critic")
NO_GRAD_CONTEXTS = frozenset({"no_grad", "inference_mode", "autograd.no_grad", "autograd.grad_mode.no_grad",
                              "autograd.grad_mode.inference_mode"})


def in_no_grad(rule, node: cst.CSTNode) -> bool:
    """True when ``node`` runs under ``torch.no_grad()``/``inference_mode()`` (a with-block or a
    decorator of an enclosing function)."""
    for a in rule.ancestors(node):
        if isinstance(a, cst.With):
            for item in a.items:
                if isinstance(item.item, cst.Call) and torch_function(rule, item.item) in NO_GRAD_CONTEXTS:
                    return True
                if isinstance(item.item, cst.Call) and torch_function(rule, item.item) == "set_grad_enabled":
                    return True
        if isinstance(a, cst.FunctionDef):
            for d in a.decorators:
                dec = d.decorator.func if isinstance(d.decorator, cst.Call) else d.decorator
                q = {x for x in rule.qnames(dec) if x.startswith("torch.")}
                name = dotted_name(dec) or ""
                if any(x[len("torch."):] in NO_GRAD_CONTEXTS for x in q) or name.endswith(("no_grad", "inference_mode")):
                    return True
    return False


def scope_of(rule, node):
    fn = enclosing_function(rule, node)
    return fn, (fn.body if fn is not None else rule.ctx.module)


def backward_called_on(rule, scope, name: str) -> bool:
    for c in walk_own(scope, cst.Call):
        mc = method_call(c)
        if mc and mc[1] == "backward" and isinstance(mc[0], cst.Name) and mc[0].value == name:
            return True
        if torch_function(rule, c) in ("autograd.backward",) and c.args and isinstance(c.args[0].value, cst.Name) \
                and c.args[0].value.value == name:
            return True
    return False


def _callee_hint(func: cst.BaseExpression) -> Optional[str]:
    name = dotted_name(func)
    if not name:
        return None
    last = name.split(".")[-1].lower()
    return last if any(h in last for h in MODEL_CALLEE_HINTS) else None


def graph_reason(rule, fn, scope, expr: cst.BaseExpression, depth: int = 0) -> Optional[str]:
    """Why ``expr`` carries an autograd graph (a short phrase), or None when it does not (or we cannot tell)."""
    if depth > 4:
        return None
    if isinstance(expr, cst.Name):
        if backward_called_on(rule, scope, expr.value):
            return f"`{expr.value}.backward()` is called on it"
        for v in assigned_values(rule, fn, expr.value):
            r = graph_reason(rule, fn, scope, v, depth + 1)
            if r:
                return r
        return None
    if isinstance(expr, cst.Call):
        mc = method_call(expr)
        if mc and mc[1] in DETACHING_METHODS:
            return None
        if isinstance(expr.func, cst.Name) and expr.func.value in DETACHING_BUILTINS:
            return None
        tf = torch_function(rule, expr)
        if tf is not None:
            if "loss" in tf or tf.endswith(("cross_entropy", "nll_loss", "kl_div", "binary_cross_entropy")):
                return f"it is the output of `torch.{tf}`"
            for a in positional(expr)[:1]:
                r = graph_reason(rule, fn, scope, a.value, depth + 1)
                if r:
                    return r
            return None
        if mc and mc[1] in GRAPH_REDUCTIONS:
            return graph_reason(rule, fn, scope, mc[0], depth + 1)
        hint = _callee_hint(expr.func)
        if hint:
            return f"it comes from a `{rule.code_for(expr.func)}(...)` call"
        return None
    if isinstance(expr, cst.BinaryOperation):
        return graph_reason(rule, fn, scope, expr.left, depth + 1) or graph_reason(rule, fn, scope, expr.right, depth + 1)
    if isinstance(expr, cst.UnaryOperation):
        return graph_reason(rule, fn, scope, expr.expression, depth + 1)
    if isinstance(expr, cst.Subscript):
        return graph_reason(rule, fn, scope, expr.value, depth + 1)
    if isinstance(expr, cst.Attribute) and expr.attr.value not in _NO_GRAPH_ATTRIBUTES:
        return graph_reason(rule, fn, scope, expr.value, depth + 1)  # out.loss, outputs.logits of a model call
    return None


_NO_GRAPH_ATTRIBUTES = frozenset({"shape", "dtype", "device", "grad", "data", "requires_grad", "ndim", "is_cuda",
                                  "layout", "names", "grad_fn", "is_leaf"})


def combined_with(rule, fn: cst.FunctionDef, name: str, others) -> bool:
    """In ``fn``, ``name`` meets one of the names ``others`` in an operation: arithmetic or a comparison
    (``name * x``), a write into it (``name[i] = x[i]``) or ``torch.cat``/``stack``/``where``/``matmul``."""
    for n in walk_own(fn.body):
        if isinstance(n, cst.BinaryOperation):
            sides = (n.left, n.right)
            for a, b in (sides, sides[::-1]):
                if name in names_in(a) and names_in(b) & others:
                    return True
        elif isinstance(n, cst.Assign):
            for t in n.targets:
                tgt = t.target
                if isinstance(tgt, cst.Subscript) and isinstance(tgt.value, cst.Name) and tgt.value.value == name:
                    if names_in(n.value) & others:
                        return True
        elif isinstance(n, cst.Call) and torch_function(rule, n) in COMBINING_FUNCTIONS:
            args = set()
            for a in n.args:
                args |= names_in(a.value)
            if name in args and args & others:
                return True
    return False


def returned_from(rule, node, name: Optional[str], fn: cst.FunctionDef) -> bool:
    """``node`` is (part of) a ``return`` value of ``fn``, or ``name`` (what it was assigned to) reaches
    one through up to three assignments (``cum -> out = torch.cat([zero, cum]) -> return out``)."""
    if any(isinstance(a, cst.Return) for a in rule.ancestors(node)):
        return True
    if name is None:
        return False
    flows = {name}
    for _ in range(3):
        for var, values in function_facts(rule, fn).assignments.items():
            if any(names_in(v) & flows for v in values):
                flows.add(var)
    return any(r.value is not None and names_in(r.value) & flows for r in walk_own(fn.body, cst.Return))


def values_added(rule, target: str, fns) -> List[cst.BaseExpression]:
    """Values put into the container ``target`` (a name or ``self.attr``, by code) in the functions
    ``fns``: by ``.append(x)``, ``.extend([...])``, ``.insert(i, x)``, ``.update(...)``, ``[k] = x``
    and ``+= [...]``."""
    out: List[cst.BaseExpression] = []
    for n in (n for fn in fns for n in walk_own(fn.body, (cst.Call, cst.Assign, cst.AugAssign))):
        if isinstance(n, cst.Call) and isinstance(n.func, cst.Attribute) and n.args \
                and rule.code_for(n.func.value) == target:
            if n.func.attr.value in ("append", "insert"):
                out.append(n.args[-1].value)
            elif n.func.attr.value in ("extend", "update"):
                out.extend(container_elements(n.args[0].value) or [n.args[0].value])
        elif isinstance(n, cst.Assign) and any(isinstance(t.target, cst.Subscript)
                                               and rule.code_for(t.target.value) == target for t in n.targets):
            out.append(n.value)
        elif isinstance(n, cst.AugAssign) and rule.code_for(n.target) == target:
            out.extend(container_elements(n.value) or [n.value])
    return out


# -- accumulation across loop iterations (TR151, TR155) ----------------------------------------
def training_step_in(rule, loop, consumers: bool = False) -> bool:
    """The loop body runs a training step: ``.backward()`` (``autograd.backward`` included) or
    ``optimizer.step()``/``scaler.step()``; with ``consumers``, also ``torch.autograd.grad`` (which
    frees the graph it differentiates, as an adversarial evaluation does)."""
    for c in walk_own(loop.body, cst.Call):
        f = c.func
        if isinstance(f, cst.Attribute) and (f.attr.value == "backward" or f.attr.value == "step" and any(
                h in rule.code_for(f.value).lower() for h in ("opt", "scaler", "solver"))):
            return True
        if consumers and torch_function(rule, c) in ("autograd.grad", "autograd.backward"):
            return True
    return False


def accumulations(node):
    """``(accumulator, value, rebuild)`` for ``acc.append(value)``, ``acc += value`` and
    ``acc = acc + value``; ``rebuild(new_value)`` is the statement with ``value`` replaced."""
    if isinstance(node, cst.Call):
        if isinstance(node.func, cst.Attribute) and node.func.attr.value == "append" and len(node.args) == 1 \
                and node.args[0].keyword is None and not node.args[0].star:
            yield node.func.value, node.args[0].value, \
                lambda new: node.with_changes(args=[node.args[0].with_changes(value=new)])
    elif isinstance(node, cst.AugAssign):
        if isinstance(node.operator, cst.AddAssign):
            yield node.target, node.value, lambda new: node.with_changes(value=new)
    elif isinstance(node, cst.Assign):
        if len(node.targets) != 1 or not isinstance(node.targets[0].target, cst.Name):
            return
        v = node.value
        if isinstance(v, cst.BinaryOperation) and isinstance(v.operator, cst.Add) and isinstance(v.left, cst.Name) \
                and v.left.value == node.targets[0].target.value:
            yield v.left, v.right, lambda new: node.with_changes(value=v.with_changes(right=new))


def accumulating_loop(rule, node, acc):
    """The innermost ``for``/``while`` loop across whose iterations ``node`` accumulates into ``acc``
    with autograd on; None when ``node`` is not in a loop body, runs under ``no_grad``, or the loop
    re-creates ``acc`` each iteration."""
    if not in_loop_body(rule, node) or in_no_grad(rule, node):
        return None
    loops = [lp for lp in enclosing_loops(rule, node) if isinstance(lp, (cst.For, cst.While))]
    if not loops or reset_in_loop(acc, loops[0]):
        return None
    return loops[0]


class AccumulationVisits:
    """Mixin for rules about accumulators: sends every :func:`accumulations` match of a visited
    ``Call``/``AugAssign``/``Assign`` to the rule's ``_check(node, acc, value, rebuild)``."""

    def visit_Call(self, node: cst.Call) -> None:
        for acc, value, rebuild in accumulations(node):
            self._check(node, acc, value, rebuild)

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        for acc, value, rebuild in accumulations(node):
            self._check(node, acc, value, rebuild)

    def visit_Assign(self, node: cst.Assign) -> None:
        for acc, value, rebuild in accumulations(node):
            self._check(node, acc, value, rebuild)


GRAD_SWITCHES = frozenset({"set_grad_enabled", "autograd.set_grad_enabled", "autograd.grad_mode.set_grad_enabled"})


def grad_disabled_before(rule, scope, line: int) -> bool:
    """``torch.set_grad_enabled(False)`` as a statement in ``scope`` before ``line`` (a notebook's
    global switch)."""
    for c in walk_own(scope, cst.Call):
        if torch_function(rule, c) in GRAD_SWITCHES \
                and c.args and isinstance(c.args[0].value, cst.Name) and c.args[0].value.value == "False" \
                and isinstance(rule.parent(c), cst.Expr) and rule.line_of(c) < line:
            return True
    return False


# Callee names (last dotted part, lower-case) that run a network, and methods of a network that run it.
MODEL_HINTS = ("model", "net", "encoder", "decoder", "module", "policy", "critic", "classifier", "backbone")
MODEL_FACTORY_PREFIXES = ("get_", "build_", "load_", "make_", "create_", "init_", "setup_", "register_", "add_",
                          "wrap_", "find_", "is_", "has_", "set_", "prepare_", "convert_", "replace_", "named_")
MODEL_METHODS = frozenset({"forward", "encode", "decode", "loss", "compute_loss", "log_prob", "elbo"})
MODEL_METHOD_PREFIXES = ("encode_", "decode_", "forward_")
LOSS_HINTS = ("loss", "criterion")
LOSS_REDUCTIONS = frozenset({"sum", "mean", "norm", "logsumexp", "prod", "std", "var", "nansum", "nanmean"})
LOSS_FUNCTIONS = frozenset({"cross_entropy", "kl_div", "binary_cross_entropy", "binary_cross_entropy_with_logits"})
# Ops whose output has no autograd history (integer/boolean results, shapes).
NON_DIFFERENTIABLE = frozenset({"argmax", "argmin", "eq", "ne", "lt", "gt", "le", "ge", "long", "int", "bool",
                                "isnan", "isinf", "isfinite", "nonzero", "count_nonzero", "numel", "size", "dim",
                                "argsort", "bincount", "sign"})
TRANSPARENT_BUILTINS = frozenset({"sum", "min", "max", "abs"})


def _model_hinted(name: str) -> bool:
    """``model``, ``self.net``, ``text_encoder``, ``resnet``, ``model_ema``, ``net_g`` name a network
    instance; ``ModuleInput`` (a class), ``build_model``, ``python_module_id`` do not."""
    last = name.split(".")[-1]
    if name == "self":
        return True
    if not last or last[0].isupper() or last.lower().startswith(MODEL_FACTORY_PREFIXES):
        return False
    low = last.lower().strip("_")
    return any(low == h or low.endswith(h) or low.startswith(h + "_") or re.fullmatch(rf"{h}\d+", low)
               for h in MODEL_HINTS)


def _model_of(rule, call: cst.Call, models) -> Optional[str]:
    """The network a call runs (its code, e.g. ``"self.model"``), or None."""
    if torch_function(rule, call) is not None:
        return None
    code = rule.code_for(call.func)
    name = dotted_name(call.func)
    if code in models or (name and _model_hinted(name)):
        return code
    mc = method_call(call)
    if mc and (mc[1] in MODEL_METHODS or mc[1].startswith(MODEL_METHOD_PREFIXES)):  # encode_image, forward_features
        recv = rule.code_for(mc[0])
        if recv in models or (dotted_name(mc[0]) and _model_hinted(dotted_name(mc[0]))):
            return recv
    if name and any(h in name.split(".")[-1].lower() for h in LOSS_HINTS):
        for a in positional(call):  # compute_loss(model, batch)
            arg = rule.code_for(a.value)
            if arg in models or (isinstance(a.value, (cst.Name, cst.Attribute)) and _model_hinted(arg)):
                return arg
    return None


def model_sources(rule, fn, expr, models, depth: int = 0) -> List[Tuple[cst.Call, str]]:
    """The network calls whose autograd graph ``expr`` carries, as ``(call, network code)``: followed
    through assignments, losses, reductions and arithmetic, stopped by ``.item()``/``.detach()``/
    ``float()`` and by ops without gradients (``argmax``, comparisons)."""
    if depth > 6:
        return []
    if isinstance(expr, cst.Name):
        return [s for v in assigned_values(rule, fn, expr.value) for s in model_sources(rule, fn, v, models, depth + 1)]
    if isinstance(expr, cst.Call):
        mc = method_call(expr)
        if mc and (mc[1] in DETACHING_METHODS or mc[1] in NON_DIFFERENTIABLE):
            return []
        if isinstance(expr.func, cst.Name) and expr.func.value in DETACHING_BUILTINS:
            return []
        model = _model_of(rule, expr, models)
        if model is not None:
            return [(expr, model)]
        tf = torch_function(rule, expr)
        name = (dotted_name(expr.func) or "").split(".")[-1].lower()
        if tf is not None:
            if tf.split(".")[-1] in NON_DIFFERENTIABLE:
                return []
            parts = [a.value for a in expr.args]
        elif mc and (mc[1] in GRAPH_REDUCTIONS or mc[1] in LOSS_REDUCTIONS):
            parts = [mc[0]]
        elif any(h in name for h in LOSS_HINTS) or (isinstance(expr.func, cst.Name) and name in TRANSPARENT_BUILTINS):
            parts = [a.value for a in expr.args]
        else:
            return []
        return [s for p in parts for s in model_sources(rule, fn, p, models, depth + 1)]
    if isinstance(expr, cst.Attribute):
        if expr.attr.value in ("data", "grad", "shape"):
            return []
        return model_sources(rule, fn, expr.value, models, depth + 1)
    if isinstance(expr, cst.Subscript):
        return model_sources(rule, fn, expr.value, models, depth + 1)
    if isinstance(expr, cst.BinaryOperation):
        return (model_sources(rule, fn, expr.left, models, depth + 1)
                + model_sources(rule, fn, expr.right, models, depth + 1))
    if isinstance(expr, cst.UnaryOperation):
        return model_sources(rule, fn, expr.expression, models, depth + 1)
    return []


def loss_like(rule, fn, expr, depth: int = 0) -> bool:
    """``expr`` is a loss value: a criterion/loss call, ``outputs.loss``, ``out["loss"]`` or a reduction
    (``.sum()``, ``.mean()``), possibly scaled."""
    if depth > 6:
        return False
    if isinstance(expr, cst.Name):
        return any(loss_like(rule, fn, v, depth + 1) for v in assigned_values(rule, fn, expr.value))
    if isinstance(expr, cst.Call):
        mc = method_call(expr)
        if mc and mc[1] in DETACHING_METHODS:
            return False
        tf = torch_function(rule, expr)
        if tf is not None:
            last = tf.split(".")[-1]
            return "loss" in last or last in LOSS_REDUCTIONS or last in LOSS_FUNCTIONS
        if mc and mc[1] in LOSS_REDUCTIONS:
            return True
        name = (dotted_name(expr.func) or "").split(".")[-1].lower()
        return any(h in name for h in LOSS_HINTS)
    if isinstance(expr, cst.Attribute):
        return "loss" in expr.attr.value.lower()
    if isinstance(expr, cst.Subscript):
        key = expr.slice[0].slice.value if len(expr.slice) == 1 and isinstance(expr.slice[0].slice, cst.Index) else None
        if isinstance(key, cst.SimpleString):
            return "loss" in key.value.lower()
        return loss_like(rule, fn, expr.value, depth + 1)
    if isinstance(expr, cst.BinaryOperation):
        return loss_like(rule, fn, expr.left, depth + 1) or loss_like(rule, fn, expr.right, depth + 1)
    if isinstance(expr, cst.UnaryOperation):
        return loss_like(rule, fn, expr.expression, depth + 1)
    return False


def runs_forward(rule, call: cst.Call) -> bool:
    """A call that runs a network or criterion (``model(x)``, ``rnn(x, h)``, ``F.mse_loss``): not another
    torch function, a builtin, a constructor, a data/model factory or a tensor method."""
    if torch_function(rule, call) is not None:
        return "loss" in torch_function(rule, call) or torch_function(rule, call).endswith("cross_entropy")
    last = (dotted_name(call.func) or "_").split(".")[-1]
    if any(q.startswith(("builtins.", "numpy.", "math.")) for q in rule.qnames(call.func)) or \
            (last[:1].isupper() or last.startswith(MODEL_FACTORY_PREFIXES)) and "loss" not in last.lower():
        return False  # a builtin, a constructor (``DataLoader(...)``) or a data/model factory
    mc = method_call(call)
    return not (mc and (mc[1] in TENSOR_METHODS or mc[1] in GRAPH_REDUCTIONS))


def data_names(expr: cst.CSTNode) -> List[str]:
    """Names read as data in ``expr`` (not callees: ``model`` in ``model(x)``, ``self.net``), followed
    through tensor methods to their receiver (``h`` in ``h.mean()``)."""
    out, stack = [], [expr]
    while stack:
        n = stack.pop()
        if isinstance(n, cst.Name):
            out.append(n.value)
        elif isinstance(n, cst.Call):
            mc = method_call(n)
            if mc and (mc[1] in TENSOR_METHODS or mc[1] in GRAPH_REDUCTIONS):
                stack.append(mc[0])
            elif not isinstance(n.func, (cst.Name, cst.Attribute)):
                stack.append(n.func)
            stack.extend(a.value for a in n.args)
        elif isinstance(n, cst.Attribute):
            stack.append(n.value)
        elif not isinstance(n, (cst.Lambda,)):
            stack.extend(fast_children(n))
    return out


def detached_value(value) -> bool:
    """``h.detach()``, ``h.item()``, ``Variable(h.data)``, ``total = 0``: a value that carries no graph on."""
    if isinstance(value, (cst.Integer, cst.Float)) or isinstance(value, cst.Attribute) and value.attr.value == "data":
        return True
    mc = method_call(value)
    return bool(mc and mc[1] in ("detach", "item", "tolist", "numpy")) or isinstance(value, cst.Call) and bool(
        value.args) and all(detached_value(a.value) for a in value.args)


# How a value is used after a loop: turned into a number, differentiated, returned or passed on.
NUMBER_BUILTINS = frozenset({"float", "int", "round", "str", "bool", "format", "repr", "print"})
NUMBER_SINKS = frozenset({"log", "info", "debug", "warning", "warn", "add_scalar", "add_scalars", "log_metric",
                          "log_metrics", "log_dict", "set_postfix", "set_description", "write", "echo", "secho"})
NUMBER_METHODS = frozenset({"item", "tolist", "numpy"})
NEUTRAL_METHODS = frozenset({"append", "extend", "insert", "clear", "copy", "sort", "reverse", "zero_", "fill_"})
PASS_METHODS = GRAPH_REDUCTIONS | LOSS_REDUCTIONS | frozenset({"detach", "cpu", "float", "double", "to", "squeeze"})
NUMERIC_MODULES = ("numpy.", "math.", "statistics.", "builtins.")


def numeric_uses_after(rule, scope, acc: cst.Name, after_line: int, depth: int = 0) -> set:
    """How ``acc`` is used in ``scope`` after ``after_line``: a set of ``numeric`` (made a number,
    printed, logged, formatted, compared), ``backward``, ``returned`` / ``returned_mean`` (returned,
    after a division or mean), ``stored`` (appended, put in a dict or an attribute), ``other`` (passed
    to an unknown call) and ``neutral`` (rebound, ``len``)."""
    kinds: set = set()
    for n in walk_own(scope, cst.Name):
        if n.value != acc.value or rule.line_of(n) <= after_line:
            continue
        p = rule.parent(n)
        if isinstance(p, cst.Attribute) and p.attr is n or isinstance(p, cst.Arg) and p.keyword is n \
                or isinstance(p, (cst.Param, cst.ImportAlias, cst.FunctionDef, cst.ClassDef)):
            continue
        kinds.add(_use_kind(rule, scope, n, depth))
    return kinds


def _use_kind(rule, scope, node, depth: int) -> str:
    reduced = False
    for _ in range(40):
        p = rule.parent(node)
        if p is None or isinstance(p, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            return "other"
        if isinstance(p, (cst.AssignTarget, cst.For)) \
                or isinstance(p, (cst.AugAssign, cst.AnnAssign)) and node is p.target:
            return "neutral"
        if isinstance(p, cst.Attribute):
            call = rule.parent(p)
            if not (isinstance(call, cst.Call) and call.func is p):
                if p.attr.value == "data":
                    node = p
                    continue
                return "neutral"  # .shape, .dtype
            meth = p.attr.value
            if meth == "backward":
                return "backward"
            if meth in NUMBER_METHODS:
                return "numeric"
            if meth in NEUTRAL_METHODS:
                return "neutral"
            if meth not in PASS_METHODS:
                return "other"
            reduced = reduced or meth == "mean"
            node = call
            continue
        if isinstance(p, cst.Arg):
            call = rule.parent(p)
            if not isinstance(call, cst.Call):
                return "other"
            q = rule.qnames(call.func)
            name = (dotted_name(call.func) or "").split(".")[-1]
            if q & {f"builtins.{b}" for b in NUMBER_BUILTINS} or name in NUMBER_SINKS \
                    or isinstance(call.func, cst.Attribute) and call.func.attr.value == "format":
                return "numeric"
            if q & {"builtins.len", "builtins.isinstance", "builtins.type"}:
                return "neutral"
            if isinstance(call.func, cst.Attribute) and call.func.attr.value in ("append", "extend", "insert", "add"):
                return "stored"
            if q & {f"builtins.{b}" for b in TRANSPARENT_BUILTINS}:
                node = call
                continue
            tf = torch_function(rule, call)
            if tf is not None and tf not in ("save",):
                reduced = reduced or tf == "mean"
                node = call
                continue
            if any(x.startswith(NUMERIC_MODULES) for x in q):
                return "numeric"
            return "other"
        if isinstance(p, cst.BinaryOperation):
            reduced = reduced or isinstance(p.operator, cst.Divide) and node is p.left
            node = p
            continue
        if isinstance(p, (cst.UnaryOperation, cst.Subscript, cst.SubscriptElement, cst.Index, cst.Element,
                          cst.DictElement, cst.List, cst.Tuple, cst.Dict)):
            if isinstance(p, cst.DictElement) and node is p.key:
                return "neutral"
            node = p
            continue
        if isinstance(p, (cst.Comparison, cst.ComparisonTarget, cst.FormattedStringExpression, cst.BooleanOperation)):
            return "numeric"
        if isinstance(p, (cst.If, cst.While, cst.IfExp)) and node is p.test:
            return "numeric"
        if isinstance(p, cst.Return):
            return "returned_mean" if reduced else "returned"
        if isinstance(p, (cst.Assign, cst.AugAssign)) and node is p.value:
            targets = [t.target for t in p.targets] if isinstance(p, cst.Assign) else [p.target]
            if len(targets) == 1 and isinstance(targets[0], cst.Name) and depth < 3:
                later = numeric_uses_after(rule, scope, targets[0], rule.line_of(p), depth + 1) - {"neutral"}
                if not later:
                    return "neutral"
                kind = "numeric" if later == {"numeric"} else sorted(later - {"numeric"})[0]
                return "returned_mean" if kind == "returned" and reduced else kind
            return "stored"
        if isinstance(p, cst.CompFor) and node is p.iter:
            comp = next((a for a in rule.ancestors(p) if not isinstance(a, cst.CompFor)), None)
            elt = getattr(comp, "elt", None) or getattr(comp, "value", None)
            if elt is not None and any(method_call(c) and method_call(c)[1] in NUMBER_METHODS
                                       or isinstance(c.func, cst.Name) and c.func.value in ("float", "int")
                                       for c in walk(elt, cst.Call)):
                return "numeric"
            node = comp
            continue
        if isinstance(p, cst.Expr):
            return "numeric" if rule.ctx.options.get("kind") == "notebook" else "neutral"
        if isinstance(p, (cst.BaseSmallStatement, cst.BaseCompoundStatement, cst.Yield, cst.Await,
                          cst.StarredElement)):
            return "other"
        node = p
    return "other"


def modes_before(rule, scope, line: int):
    """Networks in eval mode at ``line`` (their last ``.eval()``/``.train(b)`` call in ``scope`` before
    it turned training off) and networks frozen with ``.requires_grad_(False)``, as two sets of codes."""
    last: dict = {}
    frozen = set()
    for c in walk_own(scope, cst.Call):
        mc = method_call(c)
        if not mc or mc[1] not in ("eval", "train", "requires_grad_") or rule.line_of(c) >= line:
            continue
        arg = c.args[0].value if c.args else None
        off = isinstance(arg, cst.Name) and arg.value == "False"
        key = rule.code_for(mc[0])
        if mc[1] == "requires_grad_":
            if off:
                frozen.add(key)
        elif not (mc[1] == "eval" and c.args):
            at = rule.line_of(c)
            if key not in last or last[key][0] <= at:
                last[key] = (at, mc[1] == "eval" or off)
    return {k for k, (_, ev) in last.items() if ev}, frozen


def called_only_under_no_grad(rule, fn) -> bool:
    """Every call of ``fn`` in the document (``evaluate(...)``, ``self.evaluate(...)``) runs under
    ``no_grad``/``inference_mode``, and there is at least one."""
    if fn is None or rule.ctx.module is None:
        return False
    key = ("calls-by-name",)
    if key not in rule.ctx.cache:
        calls: Dict[str, list] = {}
        for c in walk(rule.ctx.module, cst.Call):
            f = c.func
            name = f.value if isinstance(f, cst.Name) else f.attr.value if isinstance(f, cst.Attribute) else None
            if name:
                calls.setdefault(name, []).append(c)
        rule.ctx.cache[key] = calls
    sites = rule.ctx.cache[key].get(fn.name.value, [])
    return bool(sites) and all(in_no_grad(rule, c) for c in sites)


def backwarded_later(rule, acc, scope, fn) -> bool:
    """``sum(values).backward()`` / ``loss = torch.stack(values).sum(); loss.backward()`` somewhere in
    the scope: the accumulator feeds a backward pass, so summing it was deliberate."""
    name = rule.code_for(acc)
    for c in walk_own(scope, cst.Call):
        if isinstance(c.func, cst.Attribute) and c.func.attr.value == "backward":
            recv = c.func.value
            texts = [rule.code_for(recv)] + [rule.code_for(v) for v in (
                assigned_values(rule, fn, recv.value) if isinstance(recv, cst.Name) else [])]
            if any(re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", t) for t in texts):
                return True
    return False


def reset_in_loop(acc, loop) -> bool:
    """The accumulator is (re)created inside the loop: not an accumulation across iterations."""
    name = acc.value if isinstance(acc, cst.Name) else None
    if name is None:
        return False
    for n in walk_own(loop.body, cst.Assign):
        if any(isinstance(t.target, cst.Name) and t.target.value == name for t in n.targets):
            if not (isinstance(n.value, cst.BinaryOperation) and isinstance(n.value.left, cst.Name)
                    and n.value.left.value == name):
                return True
    return False


# -- documented shapes -------------------------------------------------------------------------
_SHAPE_DOC = re.compile(
    r"^\s*(?:#\s*)?(?:[-*]\s*)?`?(\w+)`?\s*(?:\([^()]*\))?\s*:\s*(?:[A-Za-z_.]+\s+){0,3}?(?:of\s+)?(?:shape\s*)?"
    r"[\(\[]([\w\s,+\-*]+)[\)\]]")


def documented_shapes(text: str) -> Dict[str, List[str]]:
    """``{"x": ["batch", "T", "C"]}`` from lines like ``# x: (batch, T, C)`` or a docstring
    ``x (Tensor): shape (batch, T, C)``. Dimensions that are not names or integers become ``"?"``."""
    out: Dict[str, List[str]] = {}
    for line in text.splitlines():
        m = _SHAPE_DOC.match(line)
        if not m:
            continue
        dims = [d.strip() for d in m.group(2).split(",") if d.strip()]
        if len(dims) < 1 or (len(dims) == 1 and "," not in m.group(2)):
            continue
        out.setdefault(m.group(1), [d if re.fullmatch(r"\w+", d) else "?" for d in dims])
    return out


def comment_and_doc_text(rule, node: cst.CSTNode) -> str:
    """Comments and docstring text of a function (or module)."""
    text = rule.code_for(node)
    lines = []
    in_doc = False
    for line in text.splitlines():
        s = line.strip()
        quotes = s.count('"""') + s.count("'''")
        if in_doc or quotes or s.startswith("#"):
            lines.append(s.strip("\"'rbuRBU ") if quotes else s)
        elif "#" in s:
            lines.append(s[s.index("#"):])
        if quotes % 2 == 1:
            in_doc = not in_doc
    return "\n".join(lines)


def doc_shapes(rule, fn) -> Dict[str, List[str]]:
    """:func:`documented_shapes` of a function's comments and docstring (the module's when ``fn`` is
    None), cached per review."""
    key = ("doc-shapes", id(fn))
    if key not in rule.ctx.cache:
        node = fn if fn is not None else rule.ctx.module
        rule.ctx.cache[key] = documented_shapes(comment_and_doc_text(rule, node)) if node is not None else {}
    return rule.ctx.cache[key]


# -- numerics ------------------------------------------------------------------------------------
MAX_LIKE = frozenset({"max", "amax", "logsumexp", "cummax", "detach"})
BOUNDED_ABOVE = frozenset({"log_softmax", "nn.functional.log_softmax", "nn.functional.logsigmoid", "logsigmoid",
                           "special.log_softmax", "special.log_ndtr"})


def exp_arg(rule, call: cst.Call) -> Optional[cst.BaseExpression]:
    """The argument of ``torch.exp(a)`` / ``a.exp()``; None for other calls."""
    tf = torch_function(rule, call)
    if tf in ("exp", "special.exp"):
        pos = positional(call)
        return pos[0].value if pos else (kwarg(call, "input").value if kwarg(call, "input") else None)
    if is_method_call(rule, call, {"exp"}) and not call.args:
        return method_call(call)[0]
    return None


def _has_max_call(rule, fn, expr, depth=0) -> bool:
    for c in walk(expr, cst.Call):
        tf = torch_function(rule, c)
        if tf in MAX_LIKE or is_method_call(rule, c, MAX_LIKE):
            return True
        callee = (dotted_name(c.func) or "").split(".")[-1].lower()
        bare = callee.replace("softmax", "").replace("argmax", "")
        if tf is None and ("max" in bare or "logsumexp" in bare or "lse" in bare):
            return True  # a helper such as _safe_amax(x, dim)
    if isinstance(expr, cst.Name) and depth < 3:
        return any(_has_max_call(rule, fn, v, depth + 1) for v in assigned_values(rule, fn, expr.value))
    return False


def is_shifted_or_bounded(rule, fn, expr, depth: int = 0) -> bool:
    """``expr`` is max-subtracted (``x - x.max(...)``, ``x - m`` with ``m`` a max/logsumexp), negative by
    construction (``-x.abs()``, ``-softplus``), clamped from above, or a log-probability."""
    if depth > 4:
        return True  # give up quietly
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Subtract):
        return _has_max_call(rule, fn, expr.right) or is_shifted_or_bounded(rule, fn, expr.left, depth + 1)
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Multiply, cst.Divide)):
        return is_shifted_or_bounded(rule, fn, expr.left, depth + 1) and is_constant_like(expr.right) or \
            is_shifted_or_bounded(rule, fn, expr.right, depth + 1) and is_constant_like(expr.left)
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        inner = expr.expression
        return isinstance(inner, cst.Call) and (
            torch_function(rule, inner) in ("abs", "nn.functional.softplus", "nn.functional.relu", "relu", "square")
            or bool(is_method_call(rule, inner, {"abs", "relu", "square", "pow"}))) or is_constant_like(inner)
    if isinstance(expr, cst.Call):
        tf = torch_function(rule, expr)
        if tf in BOUNDED_ABOVE or is_method_call(rule, expr, {"log_softmax"}):
            return True
        if tf == "clamp" or tf == "clip" or is_method_call(rule, expr, {"clamp", "clip", "clamp_max"}):
            return kwarg(expr, "max") is not None or len(positional(expr)) >= (3 if tf else 2) or \
                bool(is_method_call(rule, expr, {"clamp_max"}))
        if tf in ("log", "log1p") or is_method_call(rule, expr, {"log", "log1p"}):
            return True  # exp(log(x)) is bounded by x
        if tf in ("where", "minimum"):
            return False
        return False
    if isinstance(expr, (cst.Integer, cst.Float)):
        return True
    if isinstance(expr, cst.Name):
        low = expr.value.lower()
        if low.startswith(("log_p", "logp", "log_prob", "logprob", "log_alpha", "log_beta", "lse", "log_")):
            return True
        vals = assigned_values(rule, fn, expr.value)
        if not vals:
            return False  # a parameter: nothing shows it is bounded
        return all(is_shifted_or_bounded(rule, fn, v, depth + 1) for v in vals)
    if isinstance(expr, cst.Subscript):
        return is_shifted_or_bounded(rule, fn, expr.value, depth + 1)
    return False


def is_constant_like(expr) -> bool:
    if isinstance(expr, (cst.Integer, cst.Float)):
        return True
    if isinstance(expr, cst.Name):
        return expr.value.isupper() or expr.value in ("temperature", "tau", "scale", "beta")
    if isinstance(expr, cst.Attribute):
        return True  # self.temperature, math.pi
    return False


def is_centring_call(rule, call: cst.Call) -> bool:
    """``x.mean(...)``, ``torch.median(x)``: a reduction that centres a tensor when subtracted."""
    return torch_function(rule, call) in CENTRING_REDUCTIONS or bool(is_method_call(rule, call, CENTRING_REDUCTIONS))


def is_centred(rule, fn, expr, depth: int = 0) -> bool:
    """``x - x.mean(...)``, ``x - m`` with ``m`` a mean, or a name assigned only such values."""
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Subtract):
        return any(is_centring_call(rule, n) for n in walk(expr.right, cst.Call)) or (
            isinstance(expr.right, cst.Name) and any(
                any(is_centring_call(rule, n) for n in walk(v, cst.Call))
                for v in assigned_values(rule, fn, expr.right.value)))
    if isinstance(expr, cst.Name) and depth < 3:
        vals = assigned_values(rule, fn, expr.value)
        return bool(vals) and all(is_centred(rule, fn, v, depth + 1) for v in vals)
    return False


def document_differences_subscripts(rule) -> bool:
    """Somewhere in the document two subscripts of one tensor are subtracted (``cum[:, e] - cum[:, s]``):
    prefix sums are turned into window sums."""
    key = ("prefix-differences",)
    if key not in rule.ctx.cache:
        found = False
        for b in walk(rule.ctx.module, cst.BinaryOperation):
            if (isinstance(b.operator, cst.Subtract) and isinstance(b.left, cst.Subscript)
                    and isinstance(b.right, cst.Subscript)
                    and rule.code_for(b.left.value) == rule.code_for(b.right.value)):
                found = True
                break
        rule.ctx.cache[key] = found
    return rule.ctx.cache[key]


def is_square(rule, fn, expr, depth: int = 0) -> bool:
    """``y ** 2``, ``y.pow(2)``, ``torch.pow(y, 2)``, ``y.square()``, ``torch.square(y)``, ``y * y``."""
    if isinstance(expr, cst.Name) and depth < 3:
        vals = assigned_values(rule, fn, expr.value)
        return len(vals) == 1 and is_square(rule, fn, vals[0], depth + 1)
    if isinstance(expr, cst.BinaryOperation):
        if isinstance(expr.operator, cst.Power):
            return const_int(expr.right) == 2
        if isinstance(expr.operator, cst.Multiply):
            return rule.code_for(expr.left) == rule.code_for(expr.right) \
                and not isinstance(expr.left, (cst.Integer, cst.Float))
        return False
    if isinstance(expr, cst.Call):
        tf = torch_function(rule, expr)
        if tf == "square" or is_method_call(rule, expr, {"square"}) and not expr.args:
            return True
        if tf == "pow" and len(expr.args) == 2:
            return const_int(expr.args[1].value) == 2
        if is_method_call(rule, expr, {"pow"}) and len(expr.args) == 1:
            return const_int(expr.args[0].value) == 2
    return False


def sum_of_squares(rule, fn, expr, depth: int = 0) -> Optional[str]:
    """A description when ``expr`` is a sum/mean of squares (``((a - b) ** 2).sum(-1)``, ``x ** 2 + y ** 2``,
    a name assigned one), for messages; None otherwise."""
    if depth > 4:
        return None
    if isinstance(expr, cst.Name):
        vals = assigned_values(rule, fn, expr.value)
        inner = sum_of_squares(rule, fn, vals[0], depth + 1) if len(vals) == 1 else None
        return f"`{expr.value}`, {inner}" if inner else None
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Add):
        left, right = (sum_of_squares(rule, fn, side, depth + 1) or is_square(rule, fn, side)
                       for side in (expr.left, expr.right))
        return "a sum of squares" if left and right else None
    if isinstance(expr, cst.Call):
        tf = torch_function(rule, expr)
        if tf in SUM_REDUCTIONS and positional(expr):
            inner = positional(expr)[0].value
        elif tf is None and is_method_call(rule, expr, SUM_REDUCTIONS):
            inner = method_call(expr)[0]
        else:
            return None
        return "a sum of squares" if is_square(rule, fn, inner) else None
    return None


# -- symbolic upper bounds of index expressions ------------------------------------------------
# A bound is (symbol, offset): the value is at most symbol + offset; symbol None means a constant.
Bound = Tuple[Optional[str], int]


def const_int(expr) -> Optional[int]:
    if isinstance(expr, cst.Integer):
        try:
            return int(expr.value, 0)
        except ValueError:
            return None
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        v = const_int(expr.expression)
        return -v if v is not None else None
    return None


def _single_value(rule, fn, name: str):
    """The one expression ``name`` is assigned from in ``fn`` (None when reassigned or augmented)."""
    vals = assigned_values(rule, fn, name)
    if len(vals) != 1:
        return None
    scope = fn.body if fn is not None else rule.ctx.module
    for n in walk_own(scope, cst.AugAssign):
        if isinstance(n.target, cst.Name) and n.target.value == name:
            return None
    return vals[0]


def canonical_size(rule, fn, expr, depth: int = 0) -> Optional[str]:
    """A canonical symbol for a size expression: ``"x.shape[1]"`` for ``x.shape[1]``/``x.size(1)``/``T``
    with ``T = x.shape[1]`` (or ``B, T, C = x.shape``); ``"len(x)"`` maps to ``"x.shape[0]"``; a plain
    name that is not a shape stays itself."""
    code = rule.code_for(expr).replace(" ", "")
    if isinstance(expr, cst.Subscript) and isinstance(expr.value, cst.Attribute) and expr.value.attr.value == "shape" \
            and len(expr.slice) == 1 and isinstance(expr.slice[0].slice, cst.Index):
        i = const_int(expr.slice[0].slice.value)
        return f"{rule.code_for(expr.value.value)}.shape[{i}]" if i is not None and i >= 0 else code
    if isinstance(expr, cst.Call):
        mc = method_call(expr)
        if mc and mc[1] == "size" and len(expr.args) == 1 and const_int(expr.args[0].value) is not None \
                and const_int(expr.args[0].value) >= 0:
            return f"{rule.code_for(mc[0])}.shape[{const_int(expr.args[0].value)}]"
        if isinstance(expr.func, cst.Name) and expr.func.value == "len" and len(expr.args) == 1:
            return f"{rule.code_for(expr.args[0].value)}.shape[0]"
        return code
    if isinstance(expr, cst.Name) and depth < 3:
        v = _single_value(rule, fn, expr.value)
        if v is not None and not isinstance(v, (cst.Tuple, cst.List)):
            if isinstance(v, (cst.Subscript, cst.Call, cst.Name)):
                c = canonical_size(rule, fn, v, depth + 1)
                if c and ".shape[" in c:
                    return c
        unpacked = _unpacked_shape(rule, fn, expr.value)
        if unpacked:
            return unpacked
        return expr.value
    return code


def _unpacked_shape(rule, fn, name: str) -> Optional[str]:
    scope = fn.body if fn is not None else rule.ctx.module
    if scope is None:
        return None
    for n in walk_own(scope, cst.Assign):
        for t in n.targets:
            if isinstance(t.target, (cst.Tuple, cst.List)):
                names = [e.value.value if isinstance(e.value, cst.Name) else None for e in t.target.elements]
                if name in names:
                    v = n.value
                    if isinstance(v, cst.Attribute) and v.attr.value == "shape":
                        return f"{rule.code_for(v.value)}.shape[{names.index(name)}]"
                    if isinstance(v, cst.Call) and method_call(v) and method_call(v)[1] == "size" and not v.args:
                        return f"{rule.code_for(method_call(v)[0])}.shape[{names.index(name)}]"
    return None


def size_bound(rule, fn, expr) -> Optional[Bound]:
    """``K + 1`` -> ("K", 1); ``x.size(0) - 1`` -> ("x.shape[0]", -1); ``7`` -> (None, 7)."""
    c = const_int(expr)
    if c is not None:
        return (None, c)
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Add, cst.Subtract)):
        sign = 1 if isinstance(expr.operator, cst.Add) else -1
        r = const_int(expr.right)
        if r is not None:
            b = size_bound(rule, fn, expr.left)
            return (b[0], b[1] + sign * r) if b else None
        lft = const_int(expr.left)
        if lft is not None and sign == 1:
            b = size_bound(rule, fn, expr.right)
            return (b[0], b[1] + lft) if b else None
        return None
    if isinstance(expr, (cst.Name, cst.Subscript, cst.Call, cst.Attribute)):
        if isinstance(expr, cst.Call) and not (method_call(expr) or (isinstance(expr.func, cst.Name) and expr.func.value == "len")):
            return None
        return (canonical_size(rule, fn, expr), 0)
    return None


def upper_bounds(rule, fn, node, expr, depth: int = 0) -> Optional[List[Bound]]:
    """Alternative upper bounds of an index expression (the value is at most each of them);
    None when unknown."""
    if depth > 5:
        return None
    c = const_int(expr)
    if c is not None:
        return [(None, c)]
    if isinstance(expr, cst.Name):
        loop = _loop_for(rule, node, expr.value)
        if loop is not None:
            args = [a for a in loop.iter.args]
            if any(a.keyword or a.star for a in args) or not args or len(args) > 3:
                return None
            if len(args) == 3:
                step = const_int(args[2].value)
                if step is None or step <= 0:
                    return None
            stop = args[0].value if len(args) == 1 else args[1].value
            b = size_bound(rule, fn, stop)
            return [(b[0], b[1] - 1)] if b else None
        if not assigned_values(rule, fn, expr.value) and not _unpacked_shape(rule, fn, expr.value):
            return [(expr.value, 0)]  # a parameter or global: itself
        canon = canonical_size(rule, fn, expr)
        if canon and ".shape[" in canon:
            return [(canon, 0)]
        v = _single_value(rule, fn, expr.value)
        if v is None:
            return None
        return upper_bounds(rule, fn, node, v, depth + 1)
    if isinstance(expr, (cst.Subscript, cst.Call)):
        canon = canonical_size(rule, fn, expr)
        if canon and ".shape[" in canon:
            return [(canon, 0)]
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Add, cst.Subtract)):
        sign = 1 if isinstance(expr.operator, cst.Add) else -1
        r = const_int(expr.right)
        if r is not None:
            bs = upper_bounds(rule, fn, node, expr.left, depth + 1)
            return [(s, o + sign * r) for s, o in bs] if bs else None
        lft = const_int(expr.left)
        if lft is not None and sign == 1:
            bs = upper_bounds(rule, fn, node, expr.right, depth + 1)
            return [(s, o + lft) for s, o in bs] if bs else None
        return None
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name) and expr.func.value in ("min", "max") \
            and len(expr.args) >= 2 and not any(a.star or a.keyword for a in expr.args):
        parts = [upper_bounds(rule, fn, node, a.value, depth + 1) for a in expr.args]
        if expr.func.value == "min":
            out = [b for p in parts if p for b in p]
            return out if any(parts) and all(p is not None for p in parts) else (out or None)
        known = [p for p in parts if p is not None]
        if len(known) != len(parts):
            return None
        sym = [b for p in known for b in p if b[0] is not None]
        return sym or [b for p in known for b in p]
    return None


def attribute_dim_sizes(rule, arr, dim: int) -> Set[str]:
    """Sizes of ``self.table``'s dimension ``dim`` from the class that builds it, e.g.
    ``self.duration = nn.Parameter(torch.randn(max_duration, C))`` gives ``max_duration`` and every
    ``self.K = max_duration`` alias of it."""
    if not (isinstance(arr, cst.Attribute) and isinstance(arr.value, cst.Name) and arr.value.value == "self"):
        return set()
    cls = enclosing_class(rule, arr)
    if cls is None:
        return set()
    assigns = self_attribute_values(rule, cls)
    values = assigns.get(arr.attr.value, [])
    if len(values) != 1:
        return set()
    v = values[0]
    while isinstance(v, cst.Call) and (dotted_name(v.func) or "").split(".")[-1] == "Parameter" and v.args:
        v = v.args[0].value
    fname = torch_function(rule, v) if isinstance(v, cst.Call) else None
    dims = shape_dims(rule, v, fname) if fname in SHAPE_FACTORIES or fname in SIZE_ARG_POSITION else None
    if not dims or dim >= len(dims):
        return set()
    size = rule.code_for(dims[dim]).replace(" ", "")
    if size.isdigit():
        return set()
    out = {size}
    for name, vals in assigns.items():
        if len(vals) == 1 and rule.code_for(vals[0]).replace(" ", "") == size:
            out.add(f"self.{name}")
    return out


def _loop_for(rule, node, name: str) -> Optional[cst.For]:
    for a in rule.ancestors(node):
        if isinstance(a, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            return None
        if isinstance(a, cst.For) and isinstance(a.target, cst.Name) and a.target.value == name:
            if isinstance(a.iter, cst.Call) and isinstance(a.iter.func, cst.Name) and a.iter.func.value == "range":
                return a
            return None
    return None
