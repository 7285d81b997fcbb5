"""Helpers about loops: which loops a statement repeats in, how long a loop can run, what else
happens later in the same iteration, and which names a loop variable reaches.

Private module (not a rule), shared by the memory, gradient-flow and algorithm rules (TR105, TR156,
TR601) and by the per-step cost rules (TR403, TR404, TR406), which ask whether code runs once per batch
or once per epoch (:func:`loop_level`).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Set, Tuple

import libcst as cst

from ._flow import _model_of, const_int
from ._torch import (assigned_values, bound_codes, dotted_name, enclosing_class, enclosing_function, enclosing_loops,
                     fast_children, loop_targets, method_call, module_functions, names_in, torch_function, walk, walk_own)
from ._training import stepped

# Calls that differentiate a graph (besides ``.backward()``).
DIFFERENTIATING = ("autograd.grad", "autograd.backward")
# A loop over at most this many constant items is not a scaling problem.
SMALL_TRIP = 32
# Loops over (or bounded by) parts of a model or a tensor's dimensions do not grow with the data.
ARCHITECTURE_HINTS = ("layer", "head", "block", "level", "stage", "scale", "depth", "conv", "module", "children",
                      "branch", "dim", "shape")


def differentiated_later(rule, loop, node) -> bool:
    """Another ``.backward()`` or ``torch.autograd.grad``/``backward`` follows ``node`` in the body of
    ``loop``."""
    line = rule.line_of(node)
    for c in walk_own(loop.body, cst.Call):
        if c is node or rule.line_of(c) < line:
            continue
        mc = method_call(c)
        if mc and mc[1] == "backward" or torch_function(rule, c) in DIFFERENTIATING:
            return True
    return False


def loops_until(rule, node, stop: Callable[[cst.CSTNode], bool]) -> List[cst.CSTNode]:
    """The ``for``/``while`` loops whose body repeats ``node``, innermost first, up to (without) the
    first one for which ``stop(loop)`` holds; not past the enclosing function, class or lambda."""
    out, child = [], node
    for a in rule.ancestors(node):
        if isinstance(a, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            break
        if isinstance(a, (cst.For, cst.While)) and child is a.body:
            if stop(a):
                break
            out.append(a)
        child = a
    return out


def bindings_in(rule, loop, code: str) -> List[cst.CSTNode]:
    """``loop`` itself and the statements of its body that bind ``code`` (a name or ``self.attr``): as
    a loop target, an assignment target (tuples included) or ``with ... as code``."""
    out = []
    for n in [loop, *walk_own(loop.body, (cst.For, cst.Assign, cst.AnnAssign, cst.WithItem))]:
        if isinstance(n, cst.Assign):
            targets = [t.target for t in n.targets]
        elif isinstance(n, cst.WithItem):
            targets = [n.asname.name] if n.asname else []
        else:
            targets = [getattr(n, "target", None)]
        if code in {c for t in targets if t is not None for c in bound_codes(rule, t)}:
            out.append(n)
    return out


def bounded_iterable(it) -> bool:
    """The iterable has a small constant or architectural length: ``range(3)``, a literal tuple,
    ``self.layers``, ``range(n_heads)``, ``range(x.dim() - 1)``, ``zip(self.blocks, xs)``."""
    if isinstance(it, (cst.List, cst.Tuple, cst.Set)):
        return len(it.elements) <= SMALL_TRIP
    if isinstance(it, cst.Call) and isinstance(it.func, cst.Name) and it.func.value in ("range", "len"):
        stop = it.args[min(1, len(it.args) - 1)].value if it.args else None
        n = const_int(stop) if stop is not None else None
        return n is not None and n <= SMALL_TRIP or stop is not None and n is None and bounded_iterable(stop)
    if isinstance(it, cst.BinaryOperation):  # range(n_dims - 1)
        return any(bounded_iterable(a) and const_int(b) is not None
                   for a, b in ((it.left, it.right), (it.right, it.left)))
    if isinstance(it, cst.Call) and isinstance(it.func, cst.Name) and it.func.value in ("enumerate", "zip", "reversed"):
        return any(bounded_iterable(a.value) for a in it.args)
    if isinstance(it, cst.Call) and method_call(it) is not None:
        it = it.func  # self.children(), self.blocks.items()
    name = (dotted_name(it) or "").split(".")
    return any(h in part.lower() for part in name[1:] or name for h in ARCHITECTURE_HINTS)


def loop_derived(rule, node, expr, fn) -> bool:
    """A name in ``expr`` is (or is computed, within four assignments, from) the variable of a loop
    around ``node``."""
    targets: Set[str] = set()
    for lp in enclosing_loops(rule, node):
        targets |= loop_targets(lp)
    names, frontier = set(), names_in(expr)
    for _ in range(4):
        names |= frontier
        nxt: Set[str] = set()
        for n in frontier:
            for v in assigned_values(rule, fn, n):
                nxt |= names_in(v)
        frontier = nxt - names
    return bool(names & targets)


# -- batch loops and epoch loops (TR403, TR404, TR406) -------------------------------------------
# Weak corroboration only: names that say an iterable yields batches (``train_loader``, ``val_dl``).
BATCH_ITERABLE_HINTS = ("loader", "batches")


def _is_dataloader(rule, expr) -> bool:
    return any(q.split(".")[-1] == "DataLoader" and q.startswith("torch.") for q in rule.qnames(expr))


def _names_batches(rule, node, expr) -> bool:
    """``expr`` (a name or attribute) is a DataLoader: constructed here, a parameter annotated
    ``DataLoader``, or so named."""
    last = (dotted_name(expr) or "").split(".")[-1].lower()
    if any(h in last for h in BATCH_ITERABLE_HINTS) or last == "dl" or last.endswith("_dl"):
        return True
    if not isinstance(expr, cst.Name):
        return False
    fn = enclosing_function(rule, node)
    vals = assigned_values(rule, fn, expr.value) + (assigned_values(rule, None, expr.value) if fn else [])
    if any(isinstance(v, cst.Call) and _is_dataloader(rule, v.func) for v in vals):
        return True
    params = fn.params.params + fn.params.kwonly_params if fn is not None else ()
    return any(p.name.value == expr.value and p.annotation is not None and _is_dataloader(rule, p.annotation.annotation)
               for p in params)


def iterates_batches(rule, loop) -> bool:
    """``for ... in`` an iterable of batches, possibly wrapped: ``enumerate(loader)``, ``tqdm(loader)``,
    ``zip(loader_a, loader_b)``, ``range(len(loader))``, ``loaders["train"]``."""
    stack = [loop.iter] if isinstance(loop, cst.For) else []
    while stack:
        e = stack.pop()
        if isinstance(e, cst.Call) and _is_dataloader(rule, e.func):
            return True
        if isinstance(e, cst.Call) and method_call(e) is None:
            stack.extend(a.value for a in e.args if a.keyword is None)
        elif isinstance(e, cst.Subscript):
            stack.append(e.value)
        elif isinstance(e, (cst.Name, cst.Attribute)) and _names_batches(rule, loop, e):
            return True
    return False


def local_callee(rule, call: cst.Call) -> Optional[cst.FunctionDef]:
    """The document's function (``helper(...)``) or the enclosing class's method (``self.helper(...)``)
    that ``call`` runs."""
    if isinstance(call.func, cst.Name):
        return module_functions(rule).get(call.func.value)
    mc = method_call(call)
    cls = enclosing_class(rule, call)
    if mc and cls is not None and isinstance(mc[0], cst.Name) and mc[0].value == "self":
        return next((s for s in cls.body.body if isinstance(s, cst.FunctionDef) and s.name.value == mc[1]), None)
    return None


def caller_loops(rule, fn: cst.FunctionDef) -> List[cst.CSTNode]:
    """The outermost For/While loop around each call of ``fn`` in the document (``self.train_epoch()`` in
    ``fit``'s epoch loop): the loops that repeat a function which has no loop of its own around its work."""
    out = []
    for c in walk(rule.ctx.module, cst.Call):
        if local_callee(rule, c) is fn:
            loops = [a for a in enclosing_loops(rule, c) if isinstance(a, (cst.For, cst.While))]
            out += loops[-1:]
    return out


def _trains(rule, call: cst.Call) -> bool:
    mc = method_call(call)
    return bool(mc and mc[1] == "backward") or stepped(rule, call) is not None or \
        torch_function(rule, call) == "autograd.backward"


def _level_calls(body) -> List[cst.Call]:
    """The calls of ``body`` outside its nested loops, functions and classes."""
    out, stack = [], list(fast_children(body))
    while stack:
        n = stack.pop()
        if isinstance(n, (cst.For, cst.While, cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            continue
        if isinstance(n, cst.Call):
            out.append(n)
        stack.extend(fast_children(n))
    return out


def runs_step(rule, body, forward: bool, depth: int = 0) -> bool:
    """``body`` runs a training step (``.backward()``, ``opt.step()``), or with ``forward`` a network
    call, directly or in a local helper it calls."""
    for c in walk_own(body, cst.Call):
        fn = local_callee(rule, c)
        if fn is not None:  # followed, not guessed from its name (``_get_cpp_module()``)
            if depth < 2 and fn.body is not body and runs_step(rule, fn.body, forward, depth + 1):
                return True
        elif _trains(rule, c) or forward and _model_of(rule, c, ()) is not None:
            return True
    return False


def is_batch_loop(rule, loop, forward: bool = True) -> bool:
    """A loop over data: over batches, or over unboundedly many steps that each train (or, with
    ``forward``, run a network)."""
    if iterates_batches(rule, loop):
        return True
    bounded = isinstance(loop, cst.For) and bounded_iterable(loop.iter)
    return not bounded and runs_step(rule, loop.body, forward)


def holds_batch_loop(rule, body, depth: int = 0) -> bool:
    """``body`` contains a loop over batches that trains or iterates a loader, or calls a local function
    that does (``train_one_epoch(...)``, ``self.evaluate()``)."""
    key = ("holds-batch-loop", id(body))
    if key not in rule.ctx.cache:
        rule.ctx.cache[key] = False  # recursion guard
        rule.ctx.cache[key] = any(
            isinstance(n, (cst.For, cst.While)) and is_batch_loop(rule, n, forward=False)
            or isinstance(n, cst.Call) and depth < 3 and (fn := local_callee(rule, n)) is not None
            and fn.body is not body and holds_batch_loop(rule, fn.body, depth + 1)
            for n in walk_own(body))
    return rule.ctx.cache[key]


def loop_level(rule, node) -> Tuple[Optional[str], Optional[cst.CSTNode]]:
    """How often ``node`` runs, with the loop that decides it: ``("batch", loop)`` inside a loop over
    data; ``("epoch", loop)`` in the body of a loop that contains (or calls a function containing) the
    loop over data but outside it, so once per pass over the data; ``(None, None)`` otherwise."""
    child = node
    for a in rule.ancestors(node):
        if isinstance(a, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            break
        if isinstance(a, (cst.For, cst.While)) and child is a.body:
            if iterates_batches(rule, a):
                return "batch", a
            if holds_batch_loop(rule, a.body) and not any(_trains(rule, c) for c in _level_calls(a.body)):
                return "epoch", a
            if is_batch_loop(rule, a):
                return "batch", a
        child = a
    return None, None
