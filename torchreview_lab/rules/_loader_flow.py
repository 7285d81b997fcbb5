"""Where a ``DataLoader`` goes and what feeds it (TR621): the loops that iterate it (through names, ``tqdm`` /
``enumerate`` / ``zip`` / ``iter`` wrappers, ``return`` to a caller of the document, parameters of local
functions and classes, ``accelerator.prepare``), whether such a loop trains, the trainer calls that fit on it,
and the signs that a dataset is meant to be read in order (evaluation names, iterable or synthetic data,
shuffling done by hand, a dataset that ignores its index)."""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

import libcst as cst

from ._bindings import reaching_values
from ._context import _classes_by_name, construction_of, self_attribute_values
from ._flow import called_only_under_no_grad, in_no_grad
from ._loops import local_callee
from ._torch import (assigned_values, bound_codes, dotted_name, enclosing_class, enclosing_function, function_facts,
                     loop_targets, method_call, module_functions, names_in, positional, torch_function, walk, walk_own)
from ._training import OPT_NAME, stepped

# A loader, dataset or function for evaluation: never a training loader.
EVAL_NAME = re.compile(r"(?<![a-z])(val(?!ue)|test|eval|calib|infer|predict|holdout|heldout|dev(?!ice))")
# Text that makes a document stream data (no shuffling possible) or shuffle it by hand.
_ORDERED_DOCUMENT = re.compile(r"IterableDataset|IterDataPipe|iterable_dataset|streaming\s*=\s*True|[wW]eb[dD]ataset|"
                               r"__iter__|shuffle\w*\s*\(|sample\(\s*frac\s*=\s*1|curriculum|stateful")
# Data made up on the spot (benchmarks, smoke tests: its order means nothing) or put in order on purpose.
_SYNTHETIC = re.compile(r"random|synthetic|dummy|fake|toy|sort|bucket", re.I)
_RANDOM_FACTORIES = frozenset({"rand", "randn", "randint", "normal", "rand_like", "randn_like"})
_WRAPPERS = frozenset({"enumerate", "zip", "iter", "cycle", "islice", "chain", "next"})
# Trainer classes (by package and name) and the method and argument that take the training data.
_FITS = {"Trainer": ("fit", 1, "train_dataloaders"), "create_supervised_trainer": ("run", 0, "data"),
         "Model": ("fit_generator", 0, "train_generator")}
_FIT_PACKAGES = ("lightning", "pytorch_lightning", "ignite", "poutyne")


def _sources(rule, fn, expr, depth: int = 0):
    """``expr`` and what it is built from: positional arguments, operands, receivers and (three steps back)
    the values assigned to the names it reads."""
    yield expr
    if depth > 3:
        return
    if isinstance(expr, cst.Name):
        for v in assigned_values(rule, fn, expr.value) or (assigned_values(rule, None, expr.value) if fn else []):
            yield from _sources(rule, fn, v, depth + 1)
    parts = ([a.value for a in expr.args if not a.keyword] + [expr.func.value] * bool(method_call(expr))
             if isinstance(expr, cst.Call) else [expr.left, expr.right] if isinstance(expr, cst.BinaryOperation)
             else [expr.value] if isinstance(expr, cst.Subscript) else [])
    for p in parts:
        yield from _sources(rule, fn, p, depth + 1)


def _ordered_class(rule, cls: cst.ClassDef) -> bool:
    """A dataset class of the document that iterates, shuffles itself or picks items without its index."""
    methods = {s.name.value: s for s in walk_own(cls.body, cst.FunctionDef)}
    get = methods.get("__getitem__")
    params = [p.name.value for p in get.params.params] if get is not None else []
    if "__iter__" in methods or "shuffle" in rule.code_for(cls) or any("Iter" in rule.code_for(b.value)
                                                                       for b in cls.bases):
        return True
    rebound = function_facts(rule, get).assignments.get(params[1], ()) if len(params) > 1 else ()
    return len(params) > 1 and (params[1] not in names_in(get.body) or any(params[1] not in names_in(v)
                                                                           for v in rebound))


def dataset_exempt(rule, node: cst.Call, data: cst.BaseExpression, bs: Optional[cst.Arg]) -> bool:
    """The loader reads evaluation, streamed, synthetic or hand-shuffled data, holds everything in one batch, or
    is built in a test (deterministic on purpose) or an evaluation function."""
    fn = enclosing_function(rule, node)
    name = fn.name.value.lower() if fn is not None else ""
    if name.startswith("test") or EVAL_NAME.search(name) and not re.search("train|fit", name) or re.search(
            r"(^|/)(tests?/|test_[^/]*$|[^/]*_test\.py$)", str(rule.ctx.options.get("path", ""))):
        return True
    made = construction_of(rule, fn, data)
    p = rule.parent(node)
    names = [rule.code_for(data), rule.code_for(made) if made is not None else ""] + [
        rule.code_for(t.target) for t in (p.targets if isinstance(p, cst.Assign) else ())]
    joined = " ".join(names).lower()
    if EVAL_NAME.search(joined) or "shuffl" in joined or "train=False" in names[1].replace(" ", ""):
        return True
    if _ORDERED_DOCUMENT.search(rule.ctx.source or rule.ctx.module.code) or bs is not None and any(re.search(
            r"^None$|len\(|\.shape|\.size\(|num_samples", rule.code_for(s)) for s in _sources(rule, fn, bs.value)):
        return True
    for s in _sources(rule, fn, data):
        if not isinstance(s, cst.Call):
            continue
        if torch_function(rule, s) in _RANDOM_FACTORIES or any(q.startswith(("numpy.random", "sklearn.datasets.make_"))
                                                               for q in rule.qnames(s.func)) \
                or _SYNTHETIC.search((dotted_name(s.func) or "").rsplit(".", 1)[-1]):
            return True
        local = _classes_by_name(rule).get(s.func.value) if isinstance(s.func, cst.Name) else None
        if local and s.func.value not in rule.ctx.names.aliases and _ordered_class(rule, local[-1]):
            return True
    scope = fn or rule.ctx.module
    return any((dotted_name(c.func) or "").rsplit(".", 1)[-1] in ("randperm", "permutation")
               and rule.line_of(c) < rule.line_of(node) for c in walk_own(scope, cst.Call))


class _Flow:
    """Follows the loader from its construction to the loops and trainer calls that consume it."""

    def __init__(self, rule) -> None:
        self.rule, self.todo, self.seen, self.found, self.loops = rule, [], set(), [], []

    def run(self, node: cst.Call) -> Optional[Tuple[int, str]]:
        self.todo.append((node, 0))
        while self.todo and len(self.seen) < 64:
            self._climb(*self.todo.pop())
        return min(self.found) if self.found else None

    def _climb(self, e: cst.CSTNode, depth: int) -> None:
        r = self.rule
        while True:
            p = r.parent(e)
            if isinstance(p, cst.Arg) and p.value is e and not p.star and isinstance(r.parent(p), cst.Call):
                call = r.parent(p)
                last = (dotted_name(call.func) or "").rsplit(".", 1)[-1]
                if last == "next" and isinstance(e, cst.Name):  # it = iter(loader) ... next(it)
                    loop = next((a for a in r.ancestors(call) if isinstance(a, (cst.For, cst.While, cst.FunctionDef))),
                                None)
                    return self._loop(loop) if isinstance(loop, (cst.For, cst.While)) else None
                if p.keyword is None and last != "next" and (last in _WRAPPERS or re.search("tqdm|progress|track",
                                                                                              last)):
                    e = call
                    continue
                return self._handoff(call, p, depth)
            if isinstance(p, cst.For) and p.iter is e:
                return self._loop(p)
            if isinstance(p, cst.Assign) and p.value is e and len(p.targets) == 1:
                return self._bind(p.targets[0].target, depth, value=e)
            if isinstance(p, cst.AnnAssign) and p.value is e:
                return self._bind(p.target, depth, value=e)
            if isinstance(p, cst.WithItem) and p.item is e and p.asname is not None:  # with tqdm(loader) as bar:
                name = r.code_for(p.asname.name)
                self.todo.extend((n, depth) for n in walk_own(r.parent(p).body, cst.Name) if n.value == name)
                return None
            if isinstance(p, cst.Return):
                return self._returned(p, None, depth)
            if isinstance(p, cst.Element) and isinstance(r.parent(p), (cst.Tuple, cst.List)) and isinstance(
                    r.parent(r.parent(p)), cst.Return):
                return self._returned(r.parent(r.parent(p)), r.parent(p).elements.index(p), depth)
            return None

    def _bind(self, target: cst.CSTNode, depth: int, fn: Optional[cst.FunctionDef] = None, value=None) -> None:
        """The loader is bound to ``target`` (a name, ``self.attr`` or a parameter of ``fn``), assigned ``value``
        when known: follow the reads that get it (where another value may reach, none)."""
        r, code = self.rule, self.rule.code_for(target)
        if EVAL_NAME.search(code.lower()):
            return
        if isinstance(target, cst.Attribute):
            cls = enclosing_class(r, target)
            if code.count(".") == 1 and code.startswith("self.") and cls is not None and len(
                    self_attribute_values(r, cls).get(target.attr.value, [])) == 1 and self._new(cls, code):
                self.todo.extend((a, depth) for a in walk(cls, cst.Attribute) if r.code_for(a) == code)
            return
        if not isinstance(target, cst.Name):
            return
        fn = fn or enclosing_function(r, target)
        if not self._new(fn, code, value):
            return
        values = {r.code_for(v) for v in assigned_values(r, fn, code) if not (
            method_call(v) and method_call(v)[1] in ("prepare", "setup_dataloaders"))}
        single = len(values) == (0 if fn is not None and code in function_facts(r, fn).params else 1)
        scopes = [fn] if fn is not None else [r.ctx.module] + [f for f in walk(r.ctx.module, cst.FunctionDef) if not (
            code in function_facts(r, f).params or code in function_facts(r, f).assignments)]
        reads = (n for s in scopes for n in walk_own(s if s is r.ctx.module else s.body, cst.Name) if n.value == code)
        for n in reads:
            reach = reaching_values(r, enclosing_function(r, n), code, n) if value is not None else None
            if reach and all(r.code_for(v) == r.code_for(value) for v in reach) or not reach and single:
                self.todo.append((n, depth))

    def _new(self, *key) -> bool:
        key = tuple(k if isinstance(k, str) else id(k) for k in key)
        return key not in self.seen and not self.seen.add(key)

    def _handoff(self, call: cst.Call, arg: cst.Arg, depth: int) -> None:
        """The loader is an argument of ``call``: a trainer's fit, ``accelerator.prepare`` or a local function."""
        r, mc, pos = self.rule, method_call(call), positional(call)
        built = construction_of(r, enclosing_function(r, call), mc[0]) if mc else None
        for q in r.qnames(built.func) if built is not None else ():
            meth, i, kw = _FITS.get(q.rsplit(".", 1)[-1], ("", 0, ""))
            if q.split(".")[0] in _FIT_PACKAGES and mc[1] == meth and (
                    arg.keyword.value == kw if arg.keyword else pos.index(arg) == i):
                self.found.append((r.line_of(call), f"it is the training data of `{r.code_for(call.func)}` "
                                                    f"({r.where(call)})"))
        p = r.parent(call)
        if mc and mc[1] in ("prepare", "setup_dataloaders") and not arg.keyword and isinstance(p, cst.Assign):
            t = p.targets[0].target
            if isinstance(t, (cst.Tuple, cst.List)) and len(t.elements) == len(pos) == len(call.args):
                self._bind(t.elements[pos.index(arg)].value, depth)
            elif len(call.args) == 1:
                self._bind(t, depth)
            return
        if any(a.star for a in call.args):
            return  # positions unknown
        callee, skip = local_callee(r, call), int(bool(mc))
        made = built if mc else call  # trainer.fit(loader) on a class of the document, or Trainer(loader)
        named = made is not None and isinstance(made.func, cst.Name)
        local = _classes_by_name(r).get(made.func.value) if named else None
        if callee is None and local and made.func.value not in r.ctx.names.aliases:
            method = mc[1] if mc else "__init__"
            callee = next((s for s in walk_own(local[-1].body, cst.FunctionDef) if s.name.value == method), None)
            skip = 1
        if callee is None or depth >= 4:
            return
        params = [p.name.value for p in (*callee.params.posonly_params, *callee.params.params)][skip:]
        name = arg.keyword.value if arg.keyword else params[pos.index(arg)] if pos.index(arg) < len(params) else None
        if name is not None:
            self._bind(cst.Name(name), depth + 1, callee)

    def _returned(self, ret: cst.Return, index: Optional[int], depth: int) -> None:
        """The loader is returned (alone, or at ``index`` of a tuple): follow the callers of the document."""
        r, fn = self.rule, enclosing_function(self.rule, ret)
        if fn is None or depth >= 4:
            return
        cls = enclosing_class(r, fn)
        if fn.name.value == "train_dataloader" and cls is not None and "Lightning" in " ".join(
                r.code_for(b.value) for b in cls.bases):
            self.found.append((r.line_of(fn), "Lightning trains on what the `train_dataloader` hook "
                                              f"({r.where(fn)}) returns"))
        for c in walk(r.ctx.module, cst.Call):
            mc = method_call(c)
            own = module_functions(r).get(fn.name.value) is fn and r.code_for(c.func) == fn.name.value
            if not (own or mc and mc[1] == fn.name.value and r.code_for(mc[0]) == "self"
                    and enclosing_class(r, c) is cls is not None):
                continue
            p = r.parent(c)
            if index is None:
                self.todo.append((c, depth + 1))
            elif isinstance(p, cst.Assign) and isinstance(p.targets[0].target, (cst.Tuple, cst.List)) and len(
                    p.targets[0].target.elements) == len(ret.value.elements):
                self._bind(p.targets[0].target.elements[index].value, depth + 1)

    def _loop(self, loop) -> None:
        """Record ``loop`` when it trains: it steps an optimizer, outside ``no_grad``, carrying no recurrent state."""
        r = self.rule
        self.loops.append(loop)
        if in_no_grad(r, loop) or called_only_under_no_grad(r, enclosing_function(r, loop)):
            return
        if any((torch_function(r, c) or "").startswith("optim.") for c in walk_own(loop.body, cst.Call)):
            return  # an optimizer per batch (inversion, test-time optimization): no model trains across batches
        target = loop.target if isinstance(loop, cst.For) else None
        first = target.elements[0].value if isinstance(target, cst.Tuple) else None
        if isinstance(first, cst.Name) and "enumerate" in r.code_for(loop.iter) and any(
                first.value in names_in(e) for s in walk_own(loop.body, cst.Subscript) for e in s.slice):
            return  # batch i is matched with row i of something computed in the same order (teacher outputs)
        bodies = _bodies(r, loop.body)
        if any(_steps(r, c) for b in bodies for c in walk_own(b, cst.Call)) and not _carries_state(r, loop, bodies):
            line = r.line_of(loop)
            self.found.append((line, f"the loop at {r.where(loop)} steps an optimizer on its batches"))


def _bodies(rule, body, depth: int = 0) -> List[cst.CSTNode]:
    """``body`` and the bodies of the local functions it calls (two levels)."""
    out = [body]
    for c in walk_own(body, cst.Call) if depth < 2 else ():
        fn = local_callee(rule, c)
        if fn is not None and fn.body is not body:
            out += _bodies(rule, fn.body, depth + 1)
    return out


def _steps(rule, call: cst.Call) -> bool:
    mc = method_call(call)
    return stepped(rule, call) is not None or bool(mc and mc[1] == "step" and not call.args and OPT_NAME.search(
        rule.code_for(mc[0]).rsplit(".", 1)[-1]))


def _carries_state(rule, loop, bodies) -> bool:
    """A recurrent state crosses iterations (truncated BPTT): ``hidden = repackage_hidden(hidden)``, ``h = h.detach()``,
    ``out, h = model(x, h)`` as the first binding of a name in the loop (of ``self.h`` in a helper), or a state set
    up outside the loop (``model.reset_states()``, ``init_hidden()`` before it) that the model keeps."""
    scope = enclosing_function(rule, loop) or rule.ctx.module
    if any(re.search(r"(init|reset)\w*(hidden|state)", (method_call(c) or (None, rule.code_for(c.func)))[1])
           and not any(a is loop for a in rule.ancestors(c)) for c in walk_own(scope, cst.Call)):
        return True
    targets = loop_targets(loop)
    for i, body in enumerate(bodies):
        seen = set(targets)
        for a in walk_own(body, cst.Assign):
            for code in (c for t in a.targets for c in bound_codes(rule, t.target)):
                if code in seen or i and not code.startswith("self."):
                    continue
                seen.add(code)
                reads = {rule.code_for(x) for x in walk(a.value, (cst.Name, cst.Attribute))}
                if code in reads and isinstance(a.value, cst.Call) and (re.search(r"detach|repackage", rule.code_for(
                        a.value)) or not any(q.startswith("builtins.") for q in rule.qnames(a.value.func))):
                    return True
    bound = targets | set().union(*(names_in(t.target) for a in walk_own(loop.body, cst.Assign) for t in a.targets))
    return any("repackage" in rule.code_for(c.func) or (method_call(c) or ("", ""))[1] == "detach_" and isinstance(
        c.func.value, cst.Name) and c.func.value.value not in bound for b in bodies for c in walk_own(b, cst.Call))


def training_use(rule, node: cst.Call) -> Optional[Tuple[int, str]]:
    """``(line, how)`` of the first loop or trainer call that trains on the loader built by ``node``; None if none."""
    return _Flow(rule).run(node)


def loops_over(rule, node: cst.Call) -> List[cst.CSTNode]:
    """Every loop that iterates the loader built by ``node``, wherever the loader is passed or returned to."""
    flow = _Flow(rule)
    flow.run(node)
    return flow.loops
