"""Training-loop structure shared by the rules on the order of backward, clear, clip and step
(TR610, TR611, TR614-TR616): which names are optimizers, which call steps one, whether a statement
writes gradients, the straight-line block around a call, gradient accumulation (a step gated by a
modulo test on the loop counter), the loss a backward differentiates and GradScalers."""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import libcst as cst

from ._context import _classes_by_name, construction_of, self_attribute_values
from ._knowledge import GRAD_SCALER_CLASSES, SCALE_KEEPING_METHODS, SCALING_OPS, SUM_REDUCTIONS
from ._torch import (assigned_values, dotted_name, enclosing_class, enclosing_function, last_part, loop_targets,
                     method_call, module_functions, names_in, torch_function, walk, walk_own)

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


def clears(rule, recv: str, opt: str, node: cst.CSTNode) -> bool:
    """``recv.zero_grad()`` clears the gradients ``opt`` steps: ``recv`` is that optimizer, a model whose
    parameters it was built on, or (the document's only optimizer) a model called in the same function."""
    opts = optimizers(rule)
    if recv == opt or recv in opts or OPT_NAME.search(recv.rsplit(".", 1)[-1]):
        return recv == opt
    if param_roots(rule, opts.get(opt)):
        return recv in param_roots(rule, opts.get(opt))
    fn = enclosing_function(rule, node) or rule.ctx.module
    return set(opts) <= {opt} and any(rule.code_for(c.func) == recv for c in walk_own(fn, cst.Call))


def unconditional_in(rule, node: cst.CSTNode, loop: cst.CSTNode) -> bool:
    """``node`` runs on every pass through ``loop``'s body: no if, loop, except or lambda in between."""
    for a in rule.ancestors(node):
        if a is loop.body:
            return True
        if isinstance(a, (cst.If, cst.IfExp, cst.For, cst.While, cst.ExceptHandler, cst.BooleanOperation, cst.Lambda,
                          cst.FunctionDef, cst.ClassDef, cst.CompFor)):
            return False
    return False


def _modulo_divisor(rule, test: cst.CSTNode, loop, depth: int = 0) -> Optional[cst.BaseExpression]:
    """``N`` of a test such as ``(i + 1) % N == 0`` on a counter of ``loop`` (a loop target or a name or
    attribute incremented in its body), also through a name assigned such a test."""
    counters = loop_targets(loop) | {rule.code_for(n.target) for n in walk_own(loop.body, cst.AugAssign)}
    for n in walk(test):
        if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Modulo) and (
                names_in(n.left) | {rule.code_for(a) for a in walk(n.left, cst.Attribute)}) & counters and not (
                isinstance(n.right, cst.Integer) and n.right.value == "1"):
            return n.right
        if isinstance(n, cst.Name) and depth < 1 and n.value not in counters:
            for v in assigned_values(rule, enclosing_function(rule, loop), n.value):
                d = _modulo_divisor(rule, v, loop, depth + 1)
                if d is not None:
                    return d
    return None


def _counter_limit(rule, it: cst.If, loop) -> Optional[cst.BaseExpression]:
    """``N`` of ``if k == N:`` / ``if k >= N:`` on a counter ``k`` that the body of ``loop`` increments
    (``k += 1``) and this branch resets (``k = 0``)."""
    t = it.test
    if not isinstance(t, cst.Comparison) or len(t.comparisons) != 1 or not isinstance(
            t.comparisons[0].operator, (cst.Equal, cst.GreaterThanEqual)):
        return None
    k = rule.code_for(t.left)
    incs = {rule.code_for(a.target) for a in walk_own(loop.body, cst.AugAssign) if isinstance(a.operator, cst.AddAssign)}
    resets = {rule.code_for(x.target) for a in walk_own(it.body, cst.Assign) for x in a.targets
              if rule.code_for(a.value) == "0"}
    return t.comparisons[0].comparator if k in incs & resets else None


def accumulation(rule, loop: cst.CSTNode) -> Optional[Tuple[cst.BaseExpression, int, int]]:
    """Gradient accumulation in ``loop``: every optimizer step in its body runs only when a modulo test
    on its counter passes, ``if (i + 1) % N == 0: opt.step()`` or after ``if i % N: continue`` (or a counter
    the branch resets: ``if k == N: opt.step(); k = 0``).
    Returns ``(N, first, last)``, the lines of the body that run only on those iterations."""
    key = ("training-accumulation", id(loop))
    if key not in rule.ctx.cache:
        steps = [rule.line_of(c) for c in walk_own(loop.body, cst.Call) if stepped(rule, c)]
        found = None
        for it in _items(loop.body) if steps else []:
            n = _modulo_divisor(rule, it.test, loop) or _counter_limit(rule, it, loop) if isinstance(it, cst.If) else None
            if n is None:
                continue
            guard = all(isinstance(s, cst.Continue) for s in _items(it.body)) and it.orelse is None
            lo, hi = (rule.end_line_of(it) + 1, rule.end_line_of(loop)) if guard else (
                rule.line_of(it.body), rule.end_line_of(it.body))
            if all(lo <= s <= hi for s in steps):
                found = (n, lo, hi)
                break
        rule.ctx.cache[key] = found
    return rule.ctx.cache[key]


def backward_loss(rule, call: cst.Call) -> Optional[Tuple[cst.BaseExpression, Optional[cst.BaseExpression]]]:
    """``(loss, scaler)`` for ``loss.backward()`` (scaler None) and ``scaler.scale(loss).backward()``."""
    mc = method_call(call)
    if not mc or mc[1] != "backward" or torch_function(rule, call):
        return None
    inner = method_call(mc[0])
    if inner and inner[1] == "scale" and len(mc[0].args) == 1 and not mc[0].args[0].keyword:
        return mc[0].args[0].value, inner[0]
    return mc[0], None


def is_grad_scaler(rule, expr: cst.BaseExpression, node: cst.CSTNode) -> Optional[bool]:
    """``expr`` was built by ``torch.amp.GradScaler(...)`` (any import form, FSDP's sharded one too):
    True; built by something else: False; not known here (a parameter): None."""
    built = construction_of(rule, enclosing_function(rule, node), expr)
    if built is None:
        return None
    return last_part(torch_function(rule, built)) in GRAD_SCALER_CLASSES


SCALING_ASSIGN = (cst.DivideAssign, cst.MultiplyAssign, cst.FloorDivideAssign)
_KEEPING_FUNCTIONS = SUM_REDUCTIONS | {"add", "sub", "stack", "cat", "squeeze"}


def loss_may_be_scaled(rule, fn, loss: cst.BaseExpression, n: cst.BaseExpression) -> bool:
    """The loss ``loss`` (in ``fn``) may be divided or multiplied on its way to backward, by ``N`` or
    anything else, or we cannot tell (TR615)."""
    return _ScaleTrace(rule, fn, n).may_scale(loss)


class _ScaleTrace:
    """Follows a loss back through assignments, arithmetic and calls, looking for a scaling."""

    def __init__(self, rule, fn, n: cst.BaseExpression) -> None:
        self.rule, self.fn, self.n, self.roots = rule, fn, n, names_in(n)

    def may_scale(self, e: cst.BaseExpression, depth: int = 0) -> bool:
        """The value of ``e`` may have been divided or multiplied on its way (or we cannot tell)."""
        if depth > 6 or isinstance(e, (cst.List, cst.Tuple, cst.ListComp, cst.GeneratorExp)):
            return True
        if isinstance(e, (cst.Integer, cst.Float)):
            return False
        if isinstance(e, cst.Name):
            vals = assigned_values(self.rule, self.fn, e.value)
            return not vals or any(isinstance(a.operator, SCALING_ASSIGN) and self.rule.code_for(a.target) == e.value for a in
                                   walk_own(self.fn or self.rule.ctx.module, cst.AugAssign)) or any(
                self.may_scale(v, depth + 1) for v in vals)
        if isinstance(e, (cst.Attribute, cst.Subscript)):
            return self.rule.code_for(e).startswith("self.") or self.may_scale(e.value, depth + 1)
        if isinstance(e, cst.UnaryOperation):
            return self.may_scale(e.expression, depth + 1)
        if isinstance(e, cst.BinaryOperation):
            if isinstance(e.operator, (cst.Divide, cst.FloorDivide)) or isinstance(e.operator, cst.Multiply) and (
                    self._factor(e.left) or self._factor(e.right)):
                return True
            return self.may_scale(e.left, depth + 1) or self.may_scale(e.right, depth + 1)
        if not isinstance(e, cst.Call):
            return True
        tf, mc = torch_function(self.rule, e), method_call(e)
        name = last_part(tf) if tf else mc[1] if mc else ""
        if name in SCALING_OPS:
            return True
        if tf:
            return name in _KEEPING_FUNCTIONS and any(self.may_scale(a.value, depth + 1) for a in e.args if not a.keyword)
        if mc and name in SCALE_KEEPING_METHODS:
            return self.may_scale(mc[0], depth + 1) or any(self.may_scale(a.value, depth + 1) for a in e.args)
        return self._sees_n(e)

    def _factor(self, side: cst.BaseExpression) -> bool:
        """``side`` of a product may be ``1 / N``: it reads ``N`` or holds (or was assigned) a division."""
        values = [side, *(assigned_values(self.rule, self.fn, side.value) if isinstance(side, cst.Name) else [])]
        return bool(names_in(side) & self.roots) or any(isinstance(b, cst.BinaryOperation) and isinstance(
            b.operator, cst.Divide) for v in values for b in walk(v))

    def _sees_n(self, call: cst.Call) -> bool:
        """The callee could divide by ``N`` itself: it is passed ``N`` (or what ``N`` is read from), it reads
        ``N`` (a function or class of this document), or it is unknown and ``N`` is a literal, imported or
        read from ``self``."""
        mc, func = method_call(call), call.func
        built = [b for x in (func, mc[0] if mc else None) if x is not None and (b := construction_of(self.rule, self.fn, x))]
        if any(torch_function(self.rule, b) for b in built):
            return False  # a torch module (a loss, a layer) computes its own value
        names = [func.value] if isinstance(func, cst.Name) else []
        names += [b.func.value for b in built if isinstance(b.func, cst.Name)]
        functions, classes = module_functions(self.rule), _classes_by_name(self.rule)
        defs = [d for n in names for d in [*([functions[n]] if n in functions else []), *classes.get(n, ())]]
        if not self.roots:  # a literal N: an unknown callee may divide by it, a known one must divide
            return not defs or any(isinstance(b, cst.BinaryOperation) and isinstance(b.operator, (cst.Divide, cst.Multiply))
                                   for d in defs for b in walk(d))
        if any(self._passes_n(x) for x in [*(a.value for a in call.args), *built]):
            return True
        on_self = self.roots & {"self", "cls"}
        if on_self and isinstance(func, cst.Attribute) and self.rule.code_for(func.value) in on_self:
            own = self._on_self(func)
            return True if own is None else own  # an inherited or unknown method may read it
        n = self.rule.code_for(self.n)
        return bool(mc and self._passes_n(mc[0])) or any(
            n in self.rule.code_for(d) if on_self else names_in(d) & self.roots for d in defs) or any(
            r in self.rule.ctx.names.aliases for r in self.roots)

    def _passes_n(self, expr: cst.CSTNode) -> bool:
        """``expr`` reads ``N`` or what it is read from (``args`` for ``args.accum``; ``self`` or ``self.cfg``,
        not ``self.model``, for ``self.cfg.accum``)."""
        if not self.roots & {"self", "cls"}:
            return bool(names_in(expr) & self.roots)
        n = self.rule.code_for(self.n)
        chains = {d for x in walk(expr, (cst.Name, cst.Attribute)) if (d := dotted_name(x))}
        return any(n == d or n.startswith(d + ".") for d in chains if not any(c.startswith(d + ".") for c in chains))

    def _on_self(self, func: cst.BaseExpression) -> Optional[bool]:
        """For ``N`` read from ``self`` and a callee ``self.m``: a method of this class sees ``N`` when its body
        reads it or calls another method; an attribute (a submodule, a loss) when it was built from ``N``.
        None when ``m`` is neither (inherited, unknown)."""
        cls = enclosing_class(self.rule, func)
        if cls is None:
            return None
        n, attr = self.rule.code_for(self.n), func.attr.value
        methods = {d.name.value: d for d in walk_own(cls.body, cst.FunctionDef)}
        if attr in methods:
            calls = (self.rule.code_for(c.func) for c in walk_own(methods[attr].body, cst.Call))
            return n in self.rule.code_for(methods[attr].body) or any(
                c.startswith("self.") and c[5:] in methods for c in calls)
        values = self_attribute_values(self.rule, cls).get(attr)
        return any(n in self.rule.code_for(v) for v in values) if values else None


def calls_method(scope: cst.CSTNode, name: str) -> bool:
    return any((mc := method_call(c)) is not None and mc[1] == name and not c.args for c in walk(scope, cst.Call))


def is_training_loop(loop: cst.For) -> bool:
    """The loop body runs ``loss.backward()`` and ``<optimizer>.step()``."""
    return {"backward", "step"} <= {mc[1] for c in walk(loop.body, cst.Call) if (mc := method_call(c))}
