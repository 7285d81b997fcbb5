"""Reaching bindings: which assignments of a name can reach a given use in straight-line code.

A conservative, structural reaching-definitions analysis inside one function: walking back from the
use through the statements before it (``with`` bodies inlined, both branches of an ``if`` merged,
branches that end in ``return``/``raise``/``break``/``continue`` dropped). A binding that is not a
plain ``name = value`` (tuple unpacking, ``+=``, a loop target, ``with ... as``, a walrus, an import)
or any binding inside a loop or ``try`` that the use may come after makes the answer unknown.

Also: how many values a returned expression holds (one tensor, a tuple of n), which model class of the
document an instance called as ``model(x)`` was built from, and which names are bound from given calls.

Private module (not a rule), for the rules that need the value a name holds at a use (TR152, TR154,
TR306, TR607).
"""
from __future__ import annotations

from typing import List, Optional, Set, Tuple

import libcst as cst

from ._activations import activation_of
from ._context import _classes_by_name, bound_values, local_module_class
from ._knowledge import MODULE_MOVES
from ._torch import (dotted_name, enclosing_function, function_facts, is_method_call, method_call, names_in,
                     torch_function, walk, walk_own)

_UNKNOWN = object()  # a binding whose value cannot be read
_EXITS = (cst.Return, cst.Raise, cst.Break, cst.Continue)
_SCOPES = (cst.FunctionDef, cst.ClassDef, cst.Lambda, cst.Module)
_COMPREHENSIONS = (cst.ListComp, cst.SetComp, cst.GeneratorExp, cst.DictComp)


def _binds(node: cst.CSTNode, name: str) -> bool:
    """``node`` (a statement) binds ``name`` in its own scope, in any way."""
    for n in (node, *walk_own(node)):
        targets: list = []
        if isinstance(n, cst.Assign):
            targets = [t.target for t in n.targets]
        elif isinstance(n, (cst.AugAssign, cst.AnnAssign, cst.For)):
            targets = [n.target]
        elif isinstance(n, cst.WithItem) and n.asname is not None:
            targets = [n.asname.name]
        elif isinstance(n, cst.ExceptHandler) and n.name is not None:
            targets = [n.name.name]
        elif isinstance(n, cst.NamedExpr):
            targets = [n.target]
        elif isinstance(n, (cst.FunctionDef, cst.ClassDef)) and n is not node:
            targets = [n.name]
        elif isinstance(n, (cst.Import, cst.ImportFrom)) and not isinstance(n.names, cst.ImportStar):
            targets = [a.asname.name if a.asname else a.name for a in n.names]
        elif isinstance(n, cst.Del):
            targets = [n.target]
        elif isinstance(n, (cst.Global, cst.Nonlocal)):
            targets = [x.name for x in n.names]
        if any(_names(t, name) for t in targets):
            return True
    return False


def _names(target: cst.CSTNode, name: str) -> bool:
    """The assignment target binds ``name`` (not ``name[i] = ...`` or ``obj.name = ...``)."""
    if isinstance(target, (cst.Tuple, cst.List)):
        return any(_names(e.value, name) for e in target.elements)
    if isinstance(target, cst.StarredElement):
        return _names(target.value, name)
    return isinstance(target, cst.Name) and target.value == name


def _effect(s: cst.CSTNode, name: str) -> Tuple[list, bool]:
    """What statement ``s`` leaves bound to ``name`` on the way out: (values, complete), where
    ``complete`` says that every path through ``s`` binds it (or leaves the block)."""
    if isinstance(s, (cst.SimpleStatementLine, cst.SimpleStatementSuite)):
        return _scan(s.body, name)
    if isinstance(s, cst.Assign) and not _binds(s.value, name):
        plain = [t for t in s.targets if isinstance(t.target, cst.Name) and t.target.value == name]
        if plain and len(plain) == len([t for t in s.targets if _names(t.target, name)]):
            return [s.value], True
    if isinstance(s, cst.AnnAssign) and isinstance(s.target, cst.Name) and s.target.value == name:
        return ([s.value], True) if s.value is not None and not _binds(s.value, name) else ([_UNKNOWN], True)
    if isinstance(s, _EXITS):
        return [], True
    if isinstance(s, cst.With) and not any(_binds(i, name) for i in s.items):
        return _scan(s.body.body, name)
    if isinstance(s, cst.If) and not _binds(s.test, name):
        body = _scan(s.body.body, name)
        other = ([], False) if s.orelse is None else _effect(s.orelse, name) if isinstance(s.orelse, cst.If) \
            else _scan(s.orelse.body.body, name)
        return body[0] + other[0], body[1] and other[1]
    if isinstance(s, (cst.FunctionDef, cst.ClassDef)):
        return ([_UNKNOWN], True) if s.name.value == name else ([], False)
    return ([_UNKNOWN], True) if _binds(s, name) else ([], False)


def _scan(stmts, name: str) -> Tuple[list, bool]:
    """Values of ``name`` that reach the end of ``stmts`` from bindings in them."""
    vals: list = []
    for s in reversed(list(stmts)):
        got, complete = _effect(s, name)
        vals += got
        if complete:
            return vals, True
    return vals, False


def reaching_values(rule, fn: Optional[cst.FunctionDef], name: str,
                    node: cst.CSTNode) -> Optional[List[cst.BaseExpression]]:
    """The values of the plain assignments ``name = value`` in ``fn`` (or at module level when ``fn`` is
    None) that can reach ``node`` (source order not guaranteed); None when another kind of binding, a
    parameter, a loop carrying a later binding round, or an enclosing scope may reach instead."""
    vals: list = []
    child = node
    for a in rule.ancestors(node):
        if isinstance(a, (cst.IndentedBlock, cst.SimpleStatementLine, cst.SimpleStatementSuite, cst.Module)):
            body = list(a.body)
            idx = next((i for i, s in enumerate(body) if s is child), None)
            got, complete = _scan(body[:idx], name) if idx is not None else ([], False)
            vals += got
            if complete:
                break
        if isinstance(a, (cst.For, cst.While)) and child is not getattr(a, "iter", None) and _binds(a, name):
            return None  # a binding later in the loop comes round on the next iteration
        elif isinstance(a, cst.Try) and child is not a.body and _binds(a.body, name):
            return None  # the try body may have stopped before or after its binding
        elif isinstance(a, _COMPREHENSIONS) and any(
                _names(c.target, name) for c in walk(a.for_in, cst.CompFor)):
            return None  # a comprehension variable of the same name
        elif isinstance(a, _SCOPES):
            if a is not fn and not (fn is None and isinstance(a, cst.Module)) \
                    or fn is not None and name in function_facts(rule, fn).params:
                return None
            break
        child = a
    else:
        return None
    if any(v is _UNKNOWN for v in vals):
        return None
    return vals


def reaching_value(rule, fn: Optional[cst.FunctionDef], name: str, node: cst.CSTNode) -> Optional[cst.BaseExpression]:
    """The one value ``name`` holds at ``node`` (see :func:`reaching_values`); None when zero or several
    bindings can reach, or one cannot be read."""
    vals = reaching_values(rule, fn, name, node)
    return vals[0] if vals is not None and len(vals) == 1 else None


def same_binding(rule, fn, name: str, a: cst.CSTNode, b: cst.CSTNode) -> bool:
    """``name`` read at ``a`` and at ``b`` holds the same binding: the same reaching assignments, or at both
    an unknown one (a parameter never rebound in between, say)."""
    va, vb = reaching_values(rule, fn, name, a), reaching_values(rule, fn, name, b)
    return va is None and vb is None or va is not None and vb is not None and {id(v) for v in va} == {id(v) for v in vb}


def may_precede(rule, a: cst.CSTNode, b: cst.CSTNode) -> bool:
    """Control can get from ``a`` to ``b`` (``a`` earlier in the source): not when they sit in different
    branches of one ``if``, or ``a``'s block ends in ``return``/``raise``/``break``/``continue`` first."""
    around_b = {id(x): x for x in rule.ancestors(b)}
    child = a
    for p in rule.ancestors(a):
        if id(p) in around_b:
            if isinstance(p, cst.If) and child is not p.test:
                child_b = next(x for x in [b, *rule.ancestors(b)] if rule.parent(x) is p)
                return child_b is child or child_b is p.test
            return True
        last = p.body[-1] if isinstance(p, cst.IndentedBlock) and p.body else None
        if isinstance(last, cst.SimpleStatementLine) and isinstance(last.body[-1], _EXITS):
            return False
        child = p
    return True


# Torch functions and tensor methods that return a tuple/list (or a namedtuple) rather than one tensor.
TUPLE_RETURNING = frozenset({
    "split", "chunk", "unbind", "tensor_split", "hsplit", "vsplit", "dsplit", "split_with_sizes", "unsafe_split",
    "unsafe_chunk", "max", "min", "sort", "topk", "kthvalue", "median", "nanmedian", "mode", "var_mean", "std_mean",
    "aminmax", "unique", "unique_consecutive", "meshgrid", "broadcast_tensors", "frexp", "histogram", "cummax",
    "cummin", "lu", "qr", "svd", "eig", "eigh", "slogdet", "lstsq", "triangular_solve", "where", "nonzero",
    "gradient", "geqrf", "lobpcg", "pca_lowrank", "svd_lowrank", "lu_unpack", "size", "tolist", "atleast_1d",
    "atleast_2d", "atleast_3d", "block_diag_tuple", "grad", "chunk_cat"})


def _param_tensor(fn, expr, tensors) -> bool:
    """A parameter named in ``tensors`` that ``fn`` never rebinds."""
    return isinstance(expr, cst.Name) and expr.value in tensors and not _binds(fn.body, expr.value)


def _sequence(rule, fn, expr, tensors, depth: int) -> bool:
    """``expr`` is a tuple or list: a literal, ``*args``, or a name whose one reaching binding is one."""
    if isinstance(expr, (cst.Tuple, cst.List, cst.ListComp)) or isinstance(expr, cst.Name) and "*" + expr.value in tensors:
        return True
    v = reaching_value(rule, fn, expr.value, expr) if isinstance(expr, cst.Name) and depth < 6 else None
    return v is not None and _sequence(rule, fn, v, tensors, depth + 1)


def is_one_tensor(rule, fn, expr, tensors, depth: int = 0) -> bool:
    """``expr`` is one tensor: a parameter named in ``tensors``, the result of a torch function or of
    arithmetic on a tensor, a tensor method or an index into a tensor (or into a ``*grads`` parameter,
    named in ``tensors`` as ``"*grads"``), followed through the one binding of a name that reaches it."""
    if depth > 6:
        return False
    if isinstance(expr, cst.Name):
        if _param_tensor(fn, expr, tensors):
            return True
        v = reaching_value(rule, fn, expr.value, expr)
        return v is not None and is_one_tensor(rule, fn, v, tensors, depth + 1)
    if isinstance(expr, cst.Call):
        tf = torch_function(rule, expr)
        if tf is not None:
            tf = tf.replace("nn.functional.", "")
            return "." not in tf and tf[:1].islower() and tf not in TUPLE_RETURNING
        mc = method_call(expr)
        return mc is not None and mc[1] not in TUPLE_RETURNING and is_one_tensor(rule, fn, mc[0], tensors, depth + 1)
    if isinstance(expr, cst.Subscript):
        base = expr.value
        if all(isinstance(e.slice, cst.Index) for e in expr.slice) and isinstance(base, cst.Name) \
                and "*" + base.value in tensors and not _binds(fn.body, base.value):
            return True  # one element of the *grads tuple
        return is_one_tensor(rule, fn, base, tensors, depth + 1)
    if isinstance(expr, cst.BinaryOperation):
        sides = (expr.left, expr.right)
        if any(_sequence(rule, fn, s, tensors, depth + 1) for s in sides):
            return False
        # tuples only combine with + and *: other arithmetic always gives one value
        return not isinstance(expr.operator, (cst.Add, cst.Multiply)) or any(
            is_one_tensor(rule, fn, s, tensors, depth + 1) for s in sides)
    if isinstance(expr, cst.UnaryOperation):
        return is_one_tensor(rule, fn, expr.expression, tensors, depth + 1)
    return False


def value_count(rule, fn, expr, tensors, depth: int = 0) -> Optional[int]:
    """How many values ``expr`` holds when returned: the length of a tuple/list literal (also through the
    one binding of a name that reaches it), 1 for ``None`` or one tensor (:func:`is_one_tensor`), None
    when unknown (a call of an unknown function, ``*args``, a starred element)."""
    if depth > 6 or expr is None:
        return None
    if isinstance(expr, (cst.Tuple, cst.List)):
        return None if any(isinstance(e, cst.StarredElement) for e in expr.elements) else len(expr.elements)
    if isinstance(expr, cst.Name) and expr.value == "None":
        return 1
    if isinstance(expr, cst.Name) and not _param_tensor(fn, expr, tensors):
        v = reaching_value(rule, fn, expr.value, expr)
        return value_count(rule, fn, v, tensors, depth + 1) if v is not None else None
    if isinstance(expr, cst.IfExp):
        a, b = (value_count(rule, fn, e, tensors, depth + 1) for e in (expr.body, expr.orelse))
        return a if a == b else None
    return 1 if is_one_tensor(rule, fn, expr, tensors, depth + 1) else None


def instance_class(rule, fn, func: cst.CSTNode, depth: int = 0) -> Optional[cst.ClassDef]:
    """The document's nn.Module class that ``func`` (the callee of ``model(x)``: a name or ``self.attr``)
    is an instance of, through simple assignments: ``model = Net()``, ``model = Net().to(device)``,
    ``model = model.cuda()``, ``self.model = Net(...)`` (the one assignment in the class)."""
    v: Optional[cst.CSTNode] = func
    while depth < 6:
        depth += 1
        if isinstance(v, cst.Name):
            name, v = v.value, reaching_value(rule, fn, v.value, v)
            if v is None and fn is not None and name in function_facts(rule, fn).params:
                return _class_from_callers(rule, fn, name, depth)
        elif isinstance(v, cst.Attribute) and dotted_name(v.value) == "self":
            vals = bound_values(rule, fn, v)
            v = vals[0] if len(vals) == 1 else None
        elif isinstance(v, cst.Call) and is_method_call(rule, v, MODULE_MOVES):
            v = method_call(v)[0]  # Net().to(device), model.cuda()
        elif isinstance(v, cst.Call) and isinstance(v.func, cst.Name) and local_module_class(rule, v.func.value):
            classes = _classes_by_name(rule).get(v.func.value, [])
            return classes[0] if len(classes) == 1 else None
        else:
            return None
    return None


def _class_from_callers(rule, fn, param: str, depth: int) -> Optional[cst.ClassDef]:
    """The one class every caller of ``fn`` passes for ``param`` (``train(model, ...)`` called with
    ``model = Net().to(device)``), or None."""
    from ._call_sites import argument_for, call_sites  # late: _call_sites imports modules that import this one
    found = set()
    for call in call_sites(rule, fn)[:8]:
        arg = argument_for(rule, call, fn, param)
        cls = instance_class(rule, enclosing_function(rule, call), arg, depth + 1) if arg is not None else None
        if cls is None:
            return None
        found.add(id(cls))
        last = cls
    return last if len(found) == 1 else None


def forward_activation(rule, cls: cst.ClassDef, index: Optional[int] = None) -> Optional[Tuple[str, cst.Call]]:
    """``(kind, producing call)`` when every ``return`` of ``cls.forward`` gives the same activation
    output (softmax, sigmoid, log_softmax), e.g. ``return F.softmax(self.net(x), dim=-1)``; with ``index``,
    element ``index`` of the tuple every return gives (``return self.decode(z), mu, logvar``)."""
    key = ("forward-activation", id(cls), index)
    if key not in rule.ctx.cache:
        rule.ctx.cache[key] = None  # guards recursion
        fwd = next((f for f in cls.body.body if isinstance(f, cst.FunctionDef) and f.name.value == "forward"), None)
        rets = [r.value for r in walk_own(fwd.body, cst.Return)] if fwd is not None else []
        if index is not None:
            rets = [r.elements[index].value if isinstance(r, cst.Tuple) and len(r.elements) > index and not isinstance(
                r.elements[index], cst.StarredElement) else None for r in rets]
        got = [activation_of(rule, r, fwd, rule.line_of(r)) if r is not None else None for r in rets]
        if got and None not in got and len({g[0] for g in got}) == 1:
            rule.ctx.cache[key] = got[0]
    return rule.ctx.cache[key]


_NUMBER_CALLS = frozenset(f"builtins.{f}" for f in ("int", "float", "round", "len", "sum", "min", "max", "abs"))


def python_number(rule, value) -> bool:
    """A value that binds a Python number, not a tensor: a numeric literal, ``float(...)``, ``len(...)``,
    ``round(...)``, a ``math`` function."""
    return isinstance(value, (cst.Integer, cst.Float)) or isinstance(value, cst.Call) and any(
        q in _NUMBER_CALLS or q.startswith("math.") for q in rule.qnames(value.func))


def derived_names(scope: cst.CSTNode, sources) -> Set[str]:
    """Names that the assignments in ``scope`` bind from the expressions ``sources`` (e.g. the model calls
    of a loop body), directly or through names bound so (three steps): ``probs = model(x)``,
    ``pred = probs.argmax(1)``."""
    ids, out = {id(s) for s in sources}, set()
    assigns = list(walk_own(scope, cst.Assign))
    for _ in range(3):
        for a in assigns:
            if names_in(a.value) & out or any(id(n) in ids for n in walk(a.value)):
                out |= {n for t in a.targets for n in _bound_names(t.target)}
    return out


def _bound_names(target) -> List[str]:
    """The plain names an assignment target binds (``a, (b, *c) = ...``)."""
    if isinstance(target, (cst.Tuple, cst.List)):
        return [n for e in target.elements for n in _bound_names(e.value)]
    if isinstance(target, cst.StarredElement):
        return _bound_names(target.value)
    return [target.value] if isinstance(target, cst.Name) else []
