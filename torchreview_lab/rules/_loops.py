"""Helpers about loops: which loops a statement repeats in, how long a loop can run, what else
happens later in the same iteration, and which names a loop variable reaches.

Private module (not a rule), shared by the memory, gradient-flow and algorithm rules (TR105, TR156,
TR601).
"""
from __future__ import annotations

from typing import Callable, List, Set

import libcst as cst

from ._flow import const_int
from ._torch import (assigned_values, bound_codes, dotted_name, enclosing_loops, loop_targets, method_call, names_in,
                     torch_function, walk_own)

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
