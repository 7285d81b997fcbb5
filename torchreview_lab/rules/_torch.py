"""Helpers shared by rules: resolving torch calls through qualified names, walking scopes,
and light-weight facts about a function (which parameters are tensors, which names loops range
over, what a name was assigned from).

Everything here works on libcst nodes plus the metadata of the rule that asks, so
``import torch as th`` and ``from torch import zeros`` resolve like ``torch.zeros``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

import libcst as cst
import libcst.matchers as m

from ._knowledge import JOIN_FUNCTIONS, NON_TENSOR_TORCH_CALLS, SIZE_ARG_POSITION, TENSOR_METHODS

TORCH_PREFIXES = ("torch.",)


def torch_function(rule, call: cst.Call) -> Optional[str]:
    """``"zeros"`` for ``torch.zeros(...)``/``th.zeros``/``zeros`` imported from torch;
    ``"nn.functional.softmax"`` for ``F.softmax``; None when the callee is not a torch function."""
    for q in rule.qnames(call.func):
        if q.startswith("torch."):
            return q[len("torch."):]
    # Unresolved ``torch.x`` (e.g. a notebook cell reviewed without its import cell)
    name = dotted_name(call.func)
    if name and name.startswith("torch.") and not rule.qnames(call.func):
        return name[len("torch."):]
    return None


def dotted_name(node: cst.CSTNode) -> Optional[str]:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted_name(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def method_call(call: cst.CSTNode) -> Optional[Tuple[cst.BaseExpression, str]]:
    """``(receiver, "cumsum")`` for ``x.cumsum(...)``; None for other calls."""
    if isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute):
        return call.func.value, call.func.attr.value
    return None


def is_method_call(rule, call: cst.Call, names) -> Optional[str]:
    """The method name if ``call`` is ``<expr>.<name>(...)`` with name in ``names`` and the callee
    is not a module function (``torch.cumsum`` is a function call, not a method call)."""
    mc = method_call(call)
    if mc is None or mc[1] not in names:
        return None
    if any(q.startswith(("torch.", "numpy.", "math.")) and q.count(".") == 1 for q in rule.qnames(call.func)):
        return None
    return mc[1]


def kwarg(call: cst.Call, name: str) -> Optional[cst.Arg]:
    for a in call.args:
        if a.keyword is not None and a.keyword.value == name:
            return a
    return None


def positional(call: cst.Call) -> List[cst.Arg]:
    return [a for a in call.args if a.keyword is None and not a.star]


def atom_code(rule, expr: cst.BaseExpression) -> str:
    """The code of ``expr``, parenthesized unless it is a name, call, attribute or subscript (so that
    ``.detach()`` or ``.sqrt()`` can be appended to it)."""
    code = rule.code_for(expr)
    return code if isinstance(expr, (cst.Name, cst.Call, cst.Attribute, cst.Subscript)) else f"({code})"


def last_part(dotted: Optional[str]) -> str:
    """``"cross_entropy"`` for ``"nn.functional.cross_entropy"``; ``""`` for None."""
    return dotted.rsplit(".", 1)[-1] if dotted else ""


def with_keyword(call: cst.Call, name: str, value: cst.BaseExpression) -> cst.Call:
    """``call`` with ``name=value`` appended after its last argument (``f(a, name=value)``)."""
    args = list(call.args)
    if args:
        args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
    args.append(cst.Arg(keyword=cst.Name(name), value=value,
                        equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                              whitespace_after=cst.SimpleWhitespace(""))))
    return call.with_changes(args=args)


def with_arg_value(call: cst.Call, arg: cst.Arg, value: cst.BaseExpression) -> cst.Call:
    """``call`` with the value of its argument ``arg`` replaced by ``value``."""
    return call.with_changes(args=[a.with_changes(value=value) if a is arg else a for a in call.args])


def without_arg(call: cst.Call, arg: cst.Arg) -> cst.Call:
    """``call`` without the argument ``arg`` (no comma left dangling)."""
    args = [a for a in call.args if a is not arg]
    if args:
        args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
    return call.with_changes(args=args)


def assigned_name(rule, node: cst.CSTNode) -> Optional[str]:
    """``"x"`` when ``node`` is the whole value of a plain ``x = node``; None otherwise."""
    p = rule.parent(node)
    if isinstance(p, cst.Assign) and len(p.targets) == 1 and isinstance(p.targets[0].target, cst.Name):
        return p.targets[0].target.value
    return None


def bound_codes(rule, target: cst.BaseExpression) -> List[str]:
    """The code of each name or attribute an assignment target binds (``["h", "self.c"]`` for
    ``h, *self.c``)."""
    if isinstance(target, (cst.Tuple, cst.List)):
        return [c for e in target.elements for c in bound_codes(rule, e.value)]
    return [rule.code_for(target.value if isinstance(target, cst.StarredElement) else target)]


def join_kind(rule, call: cst.Call) -> Optional[str]:
    """``"cat"`` for ``torch.cat``/``th.cat``/``cat`` from torch, ``"numpy.append"`` for ``np.append``;
    None when ``call`` is not a join of :data:`JOIN_FUNCTIONS`."""
    tf = torch_function(rule, call)
    if tf is not None:
        return tf if tf in JOIN_FUNCTIONS and tf != "append" else None
    return next((q for q in rule.qnames(call.func) if q.startswith("numpy.") and q[6:] in JOIN_FUNCTIONS), None)


def container_kind(rule, v: cst.BaseExpression) -> Optional[str]:
    """``"list"`` for ``[...]``, ``[... for ...]``, ``[m] * n``, ``list()``; ``"dict"`` for ``{k: v}``,
    ``{... for ...}``, ``dict()``; ``"tuple"``; ``"name"`` for a bare name; None for anything else."""
    if isinstance(v, (cst.List, cst.ListComp)) or isinstance(v, cst.BinaryOperation) and isinstance(v.left, cst.List):
        return "list"
    if isinstance(v, (cst.Dict, cst.DictComp, cst.Tuple)):
        return "tuple" if isinstance(v, cst.Tuple) else "dict"
    if isinstance(v, cst.Call) and not v.args and rule.qnames(v.func) & {"builtins.list", "builtins.dict"}:
        return "list" if "builtins.list" in rule.qnames(v.func) else "dict"
    return "name" if isinstance(v, cst.Name) else None


def container_elements(v: cst.BaseExpression) -> List[cst.BaseExpression]:
    """The element expressions of a list/tuple/dict literal (dict values), ``[m] * n`` or a
    comprehension (its element); empty for anything else."""
    v = v.left if isinstance(v, cst.BinaryOperation) else v
    if isinstance(v, (cst.List, cst.Tuple, cst.Dict)):
        return [e.value for e in v.elements]
    return [v.elt] if isinstance(v, cst.ListComp) else [v.value] if isinstance(v, cst.DictComp) else []


def shape_dims(rule, call: cst.Call, fname: str) -> Optional[List[cst.BaseExpression]]:
    """The size expressions of a shape factory call (``torch.zeros(B, T)``, ``torch.full((B, T), v)``),
    or None when they cannot be read."""
    size = kwarg(call, "size")
    if size is not None:
        v = size.value
        return [e.value for e in v.elements] if isinstance(v, (cst.Tuple, cst.List)) else None
    pos = positional(call)
    if fname in SIZE_ARG_POSITION:
        if not pos:
            return None
        v = pos[SIZE_ARG_POSITION[fname]].value
        return [e.value for e in v.elements] if isinstance(v, (cst.Tuple, cst.List)) else None
    if len(pos) == 1 and isinstance(pos[0].value, (cst.Tuple, cst.List)):
        return [e.value for e in pos[0].value.elements]
    if any(a.star for a in call.args):
        return None
    return [a.value for a in pos]


def nn_prefix(rule) -> Optional[str]:
    """How the document spells ``torch.nn`` (``"nn"``, ``"torch.nn"``, ``"th.nn"``); None when it
    imports neither ``torch.nn`` nor ``torch``."""
    aliases = rule.ctx.names.aliases
    return next((k for k, v in aliases.items() if v == "torch.nn"), None) or \
        next((f"{k}.nn" for k, v in aliases.items() if v == "torch"), None)


_CHILD_FIELDS: Dict[type, Tuple[str, ...]] = {}


def fast_children(node: cst.CSTNode) -> List[cst.CSTNode]:
    """The child nodes of ``node``, read straight from its dataclass fields.

    libcst's ``node.children`` re-visits (and rebuilds) the node to collect them, which dominated
    review time; nodes are immutable dataclasses, so their fields are the children. Order is field
    order (close to, but not always, source order)."""
    cls = type(node)
    names = _CHILD_FIELDS.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        _CHILD_FIELDS[cls] = names
    out: List[cst.CSTNode] = []
    for name in names:
        v = getattr(node, name)
        if isinstance(v, cst.CSTNode):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            out.extend(x for x in v if isinstance(x, cst.CSTNode))
    return out


def names_in(node: cst.CSTNode) -> Set[str]:
    """All plain names read in ``node`` (not attribute names, not keyword names of arguments)."""
    out: Set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, cst.Name):
            out.add(n.value)
        elif isinstance(n, cst.Attribute):
            stack.append(n.value)
        elif isinstance(n, cst.Arg):
            stack.append(n.value)
        else:
            stack.extend(fast_children(n))
    return out


def walk(node: cst.CSTNode, kind=None) -> Iterator[cst.CSTNode]:
    """Pre-order walk of ``node`` (nested functions and classes included)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if kind is None or isinstance(n, kind):
            yield n
        stack.extend(reversed(fast_children(n)))


# walk_own results per node for the review in progress: many rules walk the same function
# bodies. Entries keep their node alive, so ids cannot be reused; the engine clears it per review.
_OWN_CACHE: Dict[int, Tuple[cst.CSTNode, List[cst.CSTNode]]] = {}


def clear_caches() -> None:
    _OWN_CACHE.clear()


def _own_nodes(node: cst.CSTNode) -> List[cst.CSTNode]:
    hit = _OWN_CACHE.get(id(node))
    if hit is not None and hit[0] is node:
        return hit[1]
    out: List[cst.CSTNode] = []
    stack = list(reversed(fast_children(node)))
    while stack:
        n = stack.pop()
        out.append(n)
        if isinstance(n, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            continue
        stack.extend(reversed(fast_children(n)))
    _OWN_CACHE[id(node)] = (node, out)
    return out


def walk_own(node: cst.CSTNode, kind=None) -> Iterator[cst.CSTNode]:
    """Like ``walk`` but does not descend into nested functions, lambdas or classes."""
    nodes = _own_nodes(node)
    if kind is None:
        return iter(nodes)
    return (n for n in nodes if isinstance(n, kind))


def enclosing_function(rule, node: cst.CSTNode) -> Optional[cst.FunctionDef]:
    for a in rule.ancestors(node):
        if isinstance(a, cst.FunctionDef):
            return a
    return None


def enclosing_class(rule, node: cst.CSTNode) -> Optional[cst.ClassDef]:
    for a in rule.ancestors(node):
        if isinstance(a, cst.ClassDef):
            return a
    return None


def enclosing_loops(rule, node: cst.CSTNode) -> List[cst.CSTNode]:
    """For/While loops around ``node`` inside its function (innermost first)."""
    out = []
    for a in rule.ancestors(node):
        if isinstance(a, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            break
        if isinstance(a, (cst.For, cst.While)):
            out.append(a)
        if isinstance(a, (cst.ListComp, cst.GeneratorExp, cst.SetComp, cst.DictComp)):
            out.append(a)
    return out


def in_loop_body(rule, node: cst.CSTNode) -> bool:
    """True when ``node`` runs once per iteration of an enclosing loop (not in its header)."""
    child = node
    for a in rule.ancestors(node):
        if isinstance(a, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
            return False
        if isinstance(a, (cst.For, cst.While)) and child in (a.body, a.orelse):
            return child is a.body
        if isinstance(a, (cst.ListComp, cst.GeneratorExp, cst.SetComp, cst.DictComp)) and child is not a.for_in:
            return True
        child = a
    return False


def loop_targets(loop: cst.CSTNode) -> Set[str]:
    if isinstance(loop, cst.For):
        return names_in(loop.target)
    if isinstance(loop, (cst.ListComp, cst.GeneratorExp, cst.SetComp, cst.DictComp)):
        out: Set[str] = set()
        f = loop.for_in
        while f is not None:
            out |= names_in(f.target)
            f = f.inner_for_in
        return out
    return set()


def range_args(loop: cst.CSTNode) -> Optional[List[cst.BaseExpression]]:
    """The arguments of ``range(...)`` when ``loop`` is ``for v in range(...)``."""
    if isinstance(loop, cst.For) and m.matches(loop.iter, m.Call(func=m.Name("range"))):
        return [a.value for a in loop.iter.args]
    return None


def is_tensor_annotation(ann: Optional[cst.Annotation]) -> bool:
    if ann is None:
        return False
    text = cst.Module(body=[]).code_for_node(ann.annotation)
    return "Tensor" in text


@dataclass
class FunctionFacts:
    """Cheap facts about one function, computed once and cached per review run."""

    node: cst.FunctionDef
    params: List[str] = field(default_factory=list)
    tensor_params: Set[str] = field(default_factory=set)
    assignments: Dict[str, List[cst.BaseExpression]] = field(default_factory=dict)
    loop_ranged: Set[str] = field(default_factory=set)  # code of expressions that loops range over
    derived: Set[str] = field(default_factory=set)  # names computed from tensor params
    is_method: bool = False
    is_forward: bool = False


def _param_names(fn: cst.FunctionDef) -> List[cst.Param]:
    p = fn.params
    out = list(p.posonly_params) + list(p.params) + list(p.kwonly_params)
    if isinstance(p.star_arg, cst.Param):
        out.append(p.star_arg)
    return out


def function_facts(rule, fn: cst.FunctionDef) -> FunctionFacts:
    key = ("facts", id(fn))
    cache = rule.ctx.cache
    if key in cache:
        return cache[key]
    code = rule.ctx.code_for
    params = _param_names(fn)
    names = [p.name.value for p in params]
    facts = FunctionFacts(node=fn, params=names)
    facts.is_method = bool(names) and names[0] in ("self", "cls")
    facts.is_forward = fn.name.value == "forward" and facts.is_method
    candidates = set(n for n in names if n not in ("self", "cls"))
    for p in params:
        if p.name.value in candidates and is_tensor_annotation(p.annotation):
            facts.tensor_params.add(p.name.value)
    # assignments and loops in this function's own body
    for n in walk_own(fn.body):
        if isinstance(n, cst.Assign):
            for t in n.targets:
                for name in _target_names(t.target):
                    facts.assignments.setdefault(name, []).append(n.value)
        elif isinstance(n, (cst.AnnAssign, cst.AugAssign)) and isinstance(n.target, cst.Name) and n.value is not None:
            facts.assignments.setdefault(n.target.value, []).append(n.value)
        elif isinstance(n, cst.For):
            args = range_args(n)
            if args:
                for a in args:
                    facts.loop_ranged.add(code(a).replace(" ", ""))
                    facts.loop_ranged |= names_in(a)
        elif isinstance(n, cst.Attribute) and isinstance(n.value, cst.Name) and n.value.value in candidates:
            if n.attr.value in TENSOR_METHODS:
                facts.tensor_params.add(n.value.value)
        elif isinstance(n, cst.Subscript) and isinstance(n.value, cst.Name) and n.value.value in candidates:
            if any(isinstance(e.slice, cst.Index) and isinstance(e.slice.value, (cst.Name, cst.Integer, cst.Ellipsis))
                   or isinstance(e.slice, cst.Slice) for e in n.slice) and len(n.slice) > 1:
                facts.tensor_params.add(n.value.value)
            elif any(isinstance(e.slice, cst.Slice) or (isinstance(e.slice, cst.Index) and isinstance(e.slice.value, (cst.Ellipsis)))
                     for e in n.slice):
                facts.tensor_params.add(n.value.value)
        elif isinstance(n, cst.Call):
            tf = torch_function(rule, n)
            if tf and tf not in NON_TENSOR_TORCH_CALLS and not tf.startswith(("nn.", "optim", "cuda", "backends", "utils")):
                for a in n.args:
                    if isinstance(a.value, cst.Name) and a.value.value in candidates and a.keyword is None:
                        facts.tensor_params.add(a.value.value)
        elif isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.MatrixMultiply):
            for side in (n.left, n.right):
                if isinstance(side, cst.Name) and side.value in candidates:
                    facts.tensor_params.add(side.value)
    # names derived from tensor params (one pass in source order is enough in practice)
    derived = set(facts.tensor_params)
    for _ in range(3):
        for name, values in facts.assignments.items():
            if name not in derived and any(names_in(v) & derived for v in values):
                derived.add(name)
    facts.derived = derived
    cache[key] = facts
    return facts


def _target_names(t: cst.BaseExpression) -> Iterable[str]:
    if isinstance(t, cst.Name):
        yield t.value
    elif isinstance(t, (cst.Tuple, cst.List)):
        for e in t.elements:
            yield from _target_names(e.value)
    elif isinstance(t, cst.StarredElement):
        yield from _target_names(t.value)


def assigned_values(rule, fn: Optional[cst.FunctionDef], name: str) -> List[cst.BaseExpression]:
    """Expressions assigned to ``name`` in ``fn`` (or at module level when fn is None)."""
    if fn is not None:
        return function_facts(rule, fn).assignments.get(name, [])
    key = ("module-assignments",)
    cache = rule.ctx.cache
    if key not in cache:
        out: Dict[str, List[cst.BaseExpression]] = {}
        if rule.ctx.module is not None:
            for n in walk_own(rule.ctx.module):
                if isinstance(n, cst.Assign):
                    for t in n.targets:
                        for nm in _target_names(t.target):
                            out.setdefault(nm, []).append(n.value)
        cache[key] = out
    return cache[key].get(name, [])


def source_names(rule, fn: Optional[cst.FunctionDef], expr: cst.CSTNode) -> Set[str]:
    """The names read by the values assigned to the names of ``expr`` (one assignment back)."""
    out: Set[str] = set()
    for n in names_in(expr):
        for v in assigned_values(rule, fn, n):
            out |= names_in(v)
    return out


def is_none(node: Optional[cst.BaseExpression]) -> bool:
    return isinstance(node, cst.Name) and node.value == "None"


def is_constant(node: cst.BaseExpression) -> bool:
    return isinstance(node, (cst.Integer, cst.Float, cst.SimpleString, cst.ConcatenatedString,
                             cst.FormattedString, cst.Imaginary)) or (
        isinstance(node, cst.Name) and node.value in ("None", "True", "False"))


def in_raise(rule, node: cst.CSTNode) -> bool:
    """``node`` only runs while building an exception (``raise ValueError(f"... {t.item()}")``)."""
    for a in rule.ancestors(node):
        if isinstance(a, cst.Raise):
            return True
        if isinstance(a, (cst.FunctionDef, cst.SimpleStatementLine)):
            return False
    return False


def module_functions(rule) -> Dict[str, cst.FunctionDef]:
    """The document's top-level functions by name (every notebook cell's, since cells form one
    module), for rules that follow calls from one function into another."""
    key = ("module-functions",)
    if key not in rule.ctx.cache:
        body = rule.ctx.module.body if rule.ctx.module is not None else []
        rule.ctx.cache[key] = {s.name.value: s for s in body if isinstance(s, cst.FunctionDef)}
    return rule.ctx.cache[key]


def _code_and_line_starts(rule) -> Tuple[str, List[int]]:
    key = ("code-line-starts",)
    if key not in rule.ctx.cache:
        code = rule.ctx.module.code if rule.ctx.module is not None else ""
        import re

        starts = [0] + [mt.end() for mt in re.finditer(r"\r\n|\r|\n", code)]  # libcst's line breaks only
        rule.ctx.cache[key] = (code, starts)
    return rule.ctx.cache[key]


def source_text(rule, node: cst.CSTNode, edits: Iterable[Tuple[cst.CSTNode, str]] = ()) -> str:
    """The document's own text of ``node`` (indentation inside brackets kept, which ``code_for`` of a
    detached node loses), with each ``(inner node, new text)`` of ``edits`` spliced in: the text an
    autofix should put in place of ``node``'s span."""
    from libcst.metadata import PositionProvider

    code, starts = _code_and_line_starts(rule)

    def span(n: cst.CSTNode) -> Tuple[int, int]:
        p = rule.get_metadata(PositionProvider, n)
        return starts[p.start.line - 1] + p.start.column, starts[p.end.line - 1] + p.end.column

    start, end = span(node)
    text = code[start:end]
    for inner, new in sorted(edits, key=lambda e: span(e[0])[0], reverse=True):
        s, e = span(inner)
        text = text[:s - start] + new + text[e - start:]
    return text
