"""Facts learnt from an audit of real research code (TR103, TR105, TR304, TR406, TR621, TR805): whether a
script ever leaves the CPU, which names a loop carries from one iteration to the next (a recurrence), how
a parameter's default is used (only read, or its attributes assigned), whether an expression is an
``nn.Module`` (not a tensor), and what a ``**kwargs`` dict holds for one key on which branches.

Private module (not a rule); everything is cached per review run on ``rule.ctx.cache`` where it walks the
whole document.
"""
from __future__ import annotations

from typing import List, Optional, Set, Tuple

import libcst as cst

from ._context import _classes_by_name, is_module_class, module_kind, self_attribute_values
from ._torch import (assigned_values, dotted_name, enclosing_class, enclosing_function, names_in, walk,
                     walk_own)

_ACCEL_WORDS = ("cuda", "gpu", "mps", "xla", "tpu", "xpu", "npu", "hpu", "accelerat", "device", "fabric")
_FRAMEWORKS = frozenset({"pytorch_lightning", "lightning", "lightning_fabric", "accelerate", "deepspeed",
                         "transformers", "ignite", "fastai", "skorch", "poutyne", "colossalai", "horovod"})


def _is_script(rule, module: cst.Module) -> bool:
    """A notebook, or a file that runs on its own: an ``if __name__ == "__main__":`` guard or a loop at
    module level. A library module's tensors come from its callers, whose device it cannot see."""
    if rule.ctx.options.get("kind") == "notebook":
        return True
    for s in module.body:
        if isinstance(s, (cst.For, cst.While)):
            return True
        if isinstance(s, cst.If) and "__main__" in rule.code_for(s.test):
            return True
    return False


def cpu_only_script(rule) -> bool:
    """The document is a script that never mentions an accelerator: no ``.cuda()``, no device string, no
    ``device``/``map_location`` argument or ``torch.device``, no name or attribute that speaks of a device or a
    GPU, no training framework that places the model itself. Its tensors all live in host memory, so
    ``.item()``/``.tolist()`` reads memory instead of waiting for a device queue."""
    key = ("realcode-cpu-only",)
    if key in rule.ctx.cache:
        return rule.ctx.cache[key]
    module = rule.ctx.module
    result = module is not None and _is_script(rule, module)
    if result:
        if any(v.split(".")[0] in _FRAMEWORKS for v in rule.ctx.names.aliases.values()):
            result = False
        for n in walk(module, (cst.Name, cst.SimpleString, cst.Arg, cst.Call)):
            if isinstance(n, cst.Name):
                text = n.value.lower()
            elif isinstance(n, cst.SimpleString):  # not a docstring or a prose cell
                text = "" if isinstance(rule.parent(n), cst.Expr) else n.value.lower()
            elif isinstance(n, cst.Arg):
                text = n.keyword.value.lower() if n.keyword is not None else ""
                text = "" if "cpu" in rule.code_for(n.value) else "device" if text == "map_location" else text
            else:
                text = "device" if _moves(rule, n) else ""
            if any(w in text for w in _ACCEL_WORDS):
                result = False
                break
    rule.ctx.cache[key] = result
    return result


def _moves(rule, call: cst.Call) -> bool:
    """``x.cpu()`` (the author expects device tensors) or ``x.to(anything but a dtype)``."""
    f, pos = call.func, [a for a in call.args if a.keyword is None]
    if not isinstance(f, cst.Attribute) or f.attr.value not in ("cpu", "to"):
        return False
    first = rule.code_for(pos[0].value) if pos else ""
    return f.attr.value == "cpu" or bool(first) and "dtype" not in first and not first.startswith("torch.")


def carried_names(loop: cst.CSTNode) -> Set[str]:
    """Names the loop body assigns from their own previous value before anything else in the iteration binds
    them (``h = f(h, x[t])``, ``h, c = cell(x, (h, c))``, ``s += x[t]``): state carried from one iteration to
    the next. ``y = g(x); y = mask(y)`` reads this iteration's ``y`` and carries nothing."""
    out: Set[str] = set()
    bound: Set[str] = set()
    for n in walk_own(loop.body, (cst.Assign, cst.AugAssign, cst.For)):
        if isinstance(n, cst.For):
            bound |= names_in(n.target)
            continue
        targets = set().union(*(names_in(t.target) for t in (n.targets if isinstance(n, cst.Assign) else [n])
                                if isinstance(t.target, (cst.Name, cst.Tuple, cst.List))))
        reads = targets if isinstance(n, cst.AugAssign) else names_in(n.value)
        out |= (targets & reads) - bound
        bound |= targets
    return out


def loop_dependents(loop: cst.CSTNode, seeds: Set[str]) -> Set[str]:
    """``seeds`` and every name the loop body computes from them (transitively)."""
    out = set(seeds)
    assigns = [(set().union(*(names_in(t.target) for t in n.targets)), names_in(n.value))
               for n in walk_own(loop.body, cst.Assign)]
    for _ in range(4):
        grown = {t for targets, reads in assigns if reads & out for t in targets} - out
        if not grown:
            break
        out |= grown
    return out


def recurrence_feeds(loop: cst.CSTNode, expr: cst.CSTNode) -> Optional[str]:
    """The carried name of ``loop`` that ``expr`` depends on (a sequential scan: step t needs step t-1)."""
    carried = carried_names(loop)
    for c in sorted(carried):
        if names_in(expr) & loop_dependents(loop, {c}):
            return c
    return None


_READ_ONLY_CALLS = frozenset({"len", "list", "tuple", "sorted", "enumerate", "zip", "any", "all", "sum", "min", "max",
                              "set", "dict", "iter", "reversed", "str", "repr", "print", "isinstance", "bool", "map",
                              "filter", "frozenset", "hash"})
_READ_ONLY_METHODS = frozenset({"get", "keys", "items", "values", "copy", "index", "count", "__contains__"})


def only_read(rule, fn: cst.FunctionDef, name: str) -> bool:
    """Every use of the parameter ``name`` in ``fn`` (nested functions included) only reads it: unpacked
    (``f(*name)``, ``f(**name)``), iterated, measured (``len(name)``), tested (``x in name``), indexed, or
    through ``.get()``/``.items()``/``.copy()``. Stored, returned, passed on or mutated: False."""
    for n in walk(fn.body, cst.Name):
        if n.value != name:
            continue
        p = rule.parent(n)
        if isinstance(p, cst.Arg) and p.star in ("*", "**"):
            continue
        if isinstance(p, (cst.For, cst.CompFor)) and p.iter is n:
            continue
        if isinstance(p, cst.ComparisonTarget) and isinstance(p.operator, (cst.In, cst.NotIn)):
            continue
        if isinstance(p, cst.Arg) and p.keyword is None and isinstance(rule.parent(p), cst.Call) and \
                dotted_name(rule.parent(p).func) in _READ_ONLY_CALLS:
            continue
        if isinstance(p, cst.Subscript) and p.value is n and not isinstance(rule.parent(p),
                                                                            (cst.AssignTarget, cst.AugAssign, cst.Del)):
            continue
        if isinstance(p, cst.Attribute) and p.value is n and p.attr.value in _READ_ONLY_METHODS:
            continue
        return False
    return True


def mutated_attributes(rule, fn: cst.FunctionDef, name: str) -> List[str]:
    """The attributes of ``name`` that ``fn`` assigns or augments (``name.step += 1``, ``name.x = ...``)."""
    out = []
    for n in walk(fn.body, (cst.AssignTarget, cst.AugAssign)):
        t = n.target
        while isinstance(t, cst.Subscript):
            t = t.value
        if isinstance(t, cst.Attribute) and isinstance(t.value, cst.Name) and t.value.value == name:
            out.append(t.attr.value)
    return out


def document_class(rule, call: cst.CSTNode) -> Optional[cst.ClassDef]:
    """The class of this document that ``call`` (``TrainState()``) instantiates."""
    if isinstance(call, cst.Call) and isinstance(call.func, cst.Name):
        classes = _classes_by_name(rule).get(call.func.value)
        if classes and call.func.value not in rule.ctx.names.aliases:
            return classes[-1]
    return None


_MODULE_ITERATORS = frozenset({"modules", "children", "named_modules", "named_children"})


def is_module_expr(rule, expr: cst.BaseExpression, depth: int = 0) -> bool:
    """``expr`` is an ``nn.Module`` (not a tensor): a name bound to a module construction (``nn.Linear(...)``,
    a module class of this document), a loop variable over ``.modules()``/``.children()`` (or a list
    comprehension of them), ``self.attr`` assigned a module in its class, or ``<module>.attr`` of such."""
    if depth > 3:
        return False
    fn = enclosing_function(rule, expr)
    if isinstance(expr, cst.Name):
        if module_kind(rule, fn, expr) == "module":
            return True
        return _iterated_modules(rule, fn, expr, depth)
    if isinstance(expr, cst.Attribute):
        if dotted_name(expr.value) == "self":
            cls = enclosing_class(rule, expr)
            vals = self_attribute_values(rule, cls).get(expr.attr.value, []) if is_module_class(rule, cls) else []
            return bool(vals) and all(module_kind(rule, None, v) == "module" for v in vals)
    return False


def _iterated_modules(rule, fn, name: cst.Name, depth: int) -> bool:
    """``name`` is the target of ``for name in X.modules()`` (or of a loop over a list built from one)."""
    scope = fn.body if fn is not None else rule.ctx.module
    for loop in walk_own(scope, (cst.For, cst.CompFor)):
        if not (isinstance(loop.target, cst.Name) and loop.target.value == name.value):
            continue
        it = loop.iter
        if isinstance(it, cst.Name):
            vals = assigned_values(rule, fn, it.value)
            it = vals[0].for_in.iter if len(vals) == 1 and isinstance(vals[0], (cst.ListComp, cst.GeneratorExp)) \
                and isinstance(vals[0].elt, cst.Name) else it
        if isinstance(it, cst.Call) and isinstance(it.func, cst.Attribute) and it.func.attr.value in _MODULE_ITERATORS:
            return True
    return False


def dict_key_sources(rule, fn, name: str, key: str) -> Optional[List[Tuple[cst.BaseExpression, Optional[cst.CSTNode]]]]:
    """``[(value, guard)]`` for every place the dict ``name`` (a literal assigned in ``fn``) gets
    ``key``: in its literal, through ``name.update({...})``/``name.update(other)`` of another literal, or
    ``name[key] = v``; ``guard``: the ``if`` test (or ``try``) of ``fn`` that statement sits under, or None. None when
    the dict cannot be followed (not one literal, or updated from something unknown)."""
    vals = assigned_values(rule, fn, name)
    if len(vals) != 1 or not isinstance(vals[0], cst.Dict):
        return None
    out = [(v, _conditional(rule, vals[0])) for v in _literal_values(vals[0], key)]
    scope = fn.body if fn is not None else rule.ctx.module
    for c in walk_own(scope, cst.Call):
        f = c.func
        if not (isinstance(f, cst.Attribute) and isinstance(f.value, cst.Name) and f.value.value == name):
            continue
        if f.attr.value in ("pop", "setdefault", "clear"):
            return None
        if f.attr.value != "update":
            continue
        arg = c.args[0].value if len(c.args) == 1 and c.args[0].keyword is None else None
        if isinstance(arg, cst.Name):
            lit = assigned_values(rule, fn, arg.value)
            arg = lit[0] if len(lit) == 1 else None
        if not isinstance(arg, cst.Dict):
            return None
        out += [(v, _conditional(rule, c)) for v in _literal_values(arg, key)]
    for t in walk_own(scope, cst.AssignTarget):
        s = t.target
        if isinstance(s, cst.Subscript) and isinstance(s.value, cst.Name) and s.value.value == name:
            idx = s.slice[0].slice
            if isinstance(idx, cst.Index) and rule.code_for(idx.value).strip("'\"") == key:
                out.append((rule.parent(t).value, _conditional(rule, t)))
    return out


def _literal_values(d: cst.Dict, key: str) -> List[cst.BaseExpression]:
    return [e.value for e in d.elements if isinstance(e, cst.DictElement) and isinstance(e.key, cst.SimpleString)
            and e.key.evaluated_value == key]


def _conditional(rule, node: cst.CSTNode) -> Optional[cst.CSTNode]:
    """The ``if`` test that ``node`` runs under (in the ``if``'s body) inside its function; the statement itself
    for an ``else`` branch or a ``try``; None when unconditional."""
    child = node
    for a in rule.ancestors(node):
        if isinstance(a, (cst.FunctionDef, cst.Module)):
            return None
        if isinstance(a, (cst.If, cst.IfExp)):
            return a.test if child is a.body else a
        if isinstance(a, cst.Try):
            return a
        child = a
    return None


_OPTIMIZER_WORDS = ("opt", "sched", "scaler", "lr", "swa", "ema", "trainer", "engine", "model")


def _external_step(rule, call: cst.CSTNode) -> bool:
    """``env.step(a)``, ``envs.step(a)``, ``self.env.step(a)``: an environment (gym-like) that takes Python values."""
    f = call.func if isinstance(call, cst.Call) else None
    if not isinstance(f, cst.Attribute):
        return False
    recv = (dotted_name(f.value) or "").lower()
    return "env" in recv.split(".")[-1] or (f.attr.value == "step" and recv not in ("", "self")
                                            and not any(w in recv for w in _OPTIMIZER_WORDS))


def needed_on_host(rule, call: cst.Call) -> bool:
    """The helper's result must be a Python value where it is used: an argument of an environment's
    ``step`` (``env.step(select_action(state))``), directly or through a name the loop passes there."""
    p = rule.parent(call)
    if isinstance(p, cst.Arg) and _external_step(rule, rule.parent(p)):
        return True
    from ._torch import assigned_name, enclosing_loops

    name = assigned_name(rule, call)
    loop = next(iter(enclosing_loops(rule, call)), None)
    if name is None or not isinstance(loop, (cst.For, cst.While)):
        return False
    return any(isinstance(a.value, cst.Name) and a.value.value == name and _external_step(rule, c)
               for c in walk_own(loop.body, cst.Call) for a in c.args)


def forward_reading(rule, loop: cst.CSTNode, node: cst.CSTNode, acc: str) -> Optional[str]:
    """The callee of a model forward that reads ``acc`` (or a crop of it) in ``loop`` before ``node``:
    autoregressive decoding, whose per-step forward over the prefix costs at least as much as copying it."""
    from ._flow import runs_forward
    from ._torch import join_kind

    feeds = loop_dependents(loop, {acc})
    line = rule.line_of(node)
    for c in walk_own(loop.body, cst.Call):
        reads = set().union(*(names_in(a.value) for a in c.args)) if c.args else set()
        if reads & feeds and rule.line_of(c) < line and runs_forward(rule, c) and not join_kind(rule, c):
            return rule.code_for(c.func)
    return None
