"""Where a tensor's device matters (TR401, TR402): code that runs on the CPU by design (DataLoader
collate functions, ``worker_init_fn``, ``Dataset.__getitem__``/``__iter__`` and sampler iterators),
0-dim factories, whether a freshly built tensor meets a tensor derived from a function's inputs,
and CUDA guards that end a function early.

Private module (not a rule); everything resolves through qualified names where semantics exist and
is cached per review run on ``rule.ctx.cache``.
"""
from __future__ import annotations

from typing import Dict, Optional, Set

import libcst as cst

from ._context import _base_qnames, _classes_by_name, is_module_class
from ._knowledge import COMBINING_FUNCTIONS, DEVICE_MOVES, SHAPE_FACTORIES, TENSOR_FACTORIES
from ._torch import (dotted_name, enclosing_class, fast_children, function_facts, is_tensor_annotation, kwarg, names_in, positional, torch_function,
                     walk, walk_own)

# DataLoader arguments whose callables run in the loader's (CPU) worker processes.
_LOADER_CALLABLES = ("collate_fn", "worker_init_fn")
# Base classes of the data pipeline (torch.utils.data), whose item producers build CPU tensors.
_DATA_BASES = frozenset({"Dataset", "IterableDataset", "TensorDataset", "Sampler", "BatchSampler"})
_ITEM_METHODS = frozenset({"__getitem__", "__getitems__", "__iter__", "__next__"})
# Attributes / methods / builtins whose value is a Python number or tensor metadata, not a tensor.
_METADATA_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"})
_METADATA_METHODS = frozenset({"size", "dim", "numel", "item", "tolist", "stride", "get_device", "nelement",
                               "data_ptr", "element_size"})
_HOST_METHODS = frozenset({"numpy", "tolist", "item"})
# torch functions / tensor methods (also as ``name_``) whose tensor operands must share a device.
_PAIRING = frozenset({
    "cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "where", "matmul", "mm", "bmm", "mv",
    "einsum", "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "maximum", "minimum",
    "fmax", "fmin", "eq", "ne", "lt", "le", "gt", "ge", "gather", "scatter", "scatter_add", "scatter_reduce",
    "index_select", "masked_fill", "masked_select", "masked_scatter", "take_along_dim", "lerp", "atan2", "pow",
    "remainder", "fmod", "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor",
    "dot", "inner", "outer", "cdist", "searchsorted", "bucketize", "isin", "allclose", "isclose", "equal",
    "index_add", "index_copy", "index_fill", "index_put", "put", "kron", "tensordot", "cross", "dist", "addcmul",
    "addcdiv", "addmm", "baddbmm", "clamp", "float_power", "copysign", "hypot", "cosine_similarity",
})
_IDENTITY_TESTS = (cst.Is, cst.IsNot, cst.In, cst.NotIn)
_NOT_TENSOR_BUILTINS = frozenset({"len", "int", "float", "bool", "str", "repr", "type", "isinstance", "id", "hasattr",
                                  "callable"})
_NUMBER_BUILTINS = frozenset({"builtins.len", "builtins.int", "builtins.float", "builtins.bool", "builtins.min",
                              "builtins.max", "builtins.round", "math.ceil", "math.floor", "math.prod"})


def _callable_names(rule, value: cst.BaseExpression) -> Set[str]:
    """Function names a ``collate_fn=`` value designates: ``f``, ``self.f``, ``partial(f, ...)``,
    ``Collator(...)`` (its ``__call__``)."""
    if isinstance(value, cst.Name):
        return {value.value}
    if isinstance(value, cst.Attribute):
        return {value.attr.value}
    if isinstance(value, cst.Call):
        if rule.qnames(value.func) & {"functools.partial"} or dotted_name(value.func) in ("partial", "functools.partial"):
            return _callable_names(rule, value.args[0].value) if value.args else set()
        name = dotted_name(value.func)
        return {f"{name.split('.')[-1]}.__call__"} if name else set()
    return set()


def _loader_callables(rule) -> Set[str]:
    """Names passed anywhere in the document as ``collate_fn=``/``worker_init_fn=`` or assigned to
    ``<loader>.collate_fn``."""
    key = ("loader-callables",)
    cache = rule.ctx.cache
    if key not in cache:
        out: Set[str] = set()
        if rule.ctx.module is not None:
            for n in walk(rule.ctx.module, (cst.Arg, cst.Assign)):
                if isinstance(n, cst.Arg) and n.keyword is not None and n.keyword.value in _LOADER_CALLABLES:
                    out |= _callable_names(rule, n.value)
                elif isinstance(n, cst.Assign) and any(isinstance(t.target, cst.Attribute)
                                                       and t.target.attr.value in _LOADER_CALLABLES for t in n.targets):
                    out |= _callable_names(rule, n.value)
        cache[key] = out
    return cache[key]


def _data_class(rule, cls: Optional[cst.ClassDef], depth: int = 0) -> bool:
    """``cls`` derives from a torch.utils.data Dataset/IterableDataset/Sampler (directly or through a
    class of the same document)."""
    if cls is None or depth > 4:
        return False
    key = ("data-class", id(cls))
    cache = rule.ctx.cache
    if key not in cache:
        result = False
        for q in _base_qnames(rule, cls):
            last = q.split(".")[-1]
            if last in _DATA_BASES and (q.startswith("torch.utils.data") or q == last):
                result = True
            elif any(c is not cls and _data_class(rule, c, depth + 1) for c in _classes_by_name(rule).get(last, ())):
                result = True
            if result:
                break
        cache[key] = result
    return cache[key]


def _iterates_param(fn: cst.FunctionDef) -> bool:
    """``fn`` treats a parameter as a sequence of samples (``for s in batch``, ``zip(*batch)``)."""
    params = {p.name.value for p in fn.params.params}
    for n in walk_own(fn.body, (cst.For, cst.CompFor, cst.StarredElement, cst.Arg)):
        if isinstance(n, (cst.For, cst.CompFor)) and names_in(n.iter) & params:
            return True
        if isinstance(n, cst.Arg) and n.star == "*" and names_in(n.value) & params:
            return True
    return False


def cpu_by_design(rule, fn: cst.FunctionDef) -> Optional[str]:
    """Why ``fn`` builds CPU tensors on purpose (it runs in the data pipeline), or None."""
    name = fn.name.value
    cls = enclosing_class(rule, fn)
    qual = f"{cls.name.value}.{name}" if cls is not None else name
    if name in _loader_callables(rule) or qual in _loader_callables(rule):
        return "a DataLoader collate_fn / worker_init_fn"
    named = "collate" in name.lower() or (name == "__call__" and cls is not None and "collat" in cls.name.value.lower())
    if named and _iterates_param(fn):
        return "a collate function"
    if name == "__init__" and is_module_class(rule, cls):
        return "an nn.Module constructor (parameters and buffers are built on the CPU, then moved with .to())"
    if cls is not None and _data_class(rule, cls):
        methods = {s.name.value: s for s in walk_own(cls.body, cst.FunctionDef)}
        producers = [methods[m] for m in _ITEM_METHODS if m in methods]
        helpers = {c.func.attr.value for p in producers for c in walk_own(p.body, cst.Call)
                   if isinstance(c.func, cst.Attribute) and dotted_name(c.func.value) == "self"}
        if name in _ITEM_METHODS or name in helpers:
            return "a Dataset/Sampler item producer (runs in DataLoader workers)"
    return None


def zero_dim_factory(rule, call: cst.Call, fname: str) -> bool:
    """``torch.zeros(())``, ``torch.full([], v)``, ``torch.tensor(2.0)``, ``torch.scalar_tensor(x)``:
    a 0-dim tensor, which combines with tensors on any device."""
    if fname == "scalar_tensor":
        return True
    pos = positional(call)
    if fname in ("tensor", "as_tensor"):
        v = pos[0].value if pos else None
        while isinstance(v, cst.UnaryOperation):
            v = v.expression
        if isinstance(v, cst.Call) and rule.qnames(v.func) & {"builtins.float", "builtins.int", "builtins.bool"}:
            return True  # torch.tensor(float(a))
        return isinstance(v, (cst.Integer, cst.Float)) or (isinstance(v, cst.Name) and v.value in ("True", "False"))
    if fname in SHAPE_FACTORIES or fname == "full":
        size = kwarg(call, "size")
        v = size.value if size is not None else pos[0].value if pos else None
        if v is None and fname in SHAPE_FACTORIES and not pos:
            return False
        return isinstance(v, (cst.Tuple, cst.List)) and not v.elements
    return False


def _non_tensor(rule, v: cst.BaseExpression, known: Set[str]) -> bool:
    """``v`` is a Python number or metadata: ``x.shape[1]``, ``x.size(0)``, ``len(x)``, ``x.device``,
    ``T - 1`` with ``T`` a size."""
    while isinstance(v, cst.Subscript):
        v = v.value
    if isinstance(v, (cst.Integer, cst.Float)) or isinstance(v, cst.Name) and v.value in known:
        return True
    if isinstance(v, cst.Attribute):
        return v.attr.value in _METADATA_ATTRS
    if isinstance(v, cst.Call):
        if isinstance(v.func, cst.Attribute):
            return v.func.attr.value in _METADATA_METHODS
        return bool(rule.qnames(v.func) & _NUMBER_BUILTINS)
    if isinstance(v, cst.BinaryOperation):
        return _non_tensor(rule, v.left, known) and _non_tensor(rule, v.right, known)
    return False


def input_tensors(rule, fn: cst.FunctionDef) -> Set[str]:
    """Names that hold tensors derived from ``fn``'s tensor inputs: the tensor parameters and names
    assigned from torch calls, tensor methods, arithmetic or indexing on them, or from a call taking them
    (``h = self.layer(x)``). Left out: sizes/metadata (``B, T = x.shape``), names bound only to device-less
    factories, tuples unpacked from non-torch calls (their types are unknown) and tensors the function
    turns into numpy with ``x.numpy()`` (they are on the CPU)."""
    key = ("input-tensors", id(fn))
    cache: Dict = rule.ctx.cache
    if key not in cache:
        facts = function_facts(rule, fn)
        host = {n.func.value.value for n in walk_own(fn.body, cst.Call) if isinstance(n.func, cst.Attribute)
                and n.func.attr.value == "numpy" and isinstance(n.func.value, cst.Name)}
        host |= {name for name, vals in facts.assignments.items() if any(
            isinstance(v, cst.Call) and isinstance(v.func, cst.Attribute) and v.func.attr.value in ("cpu", "numpy")
            for v in vals)}
        host |= {p.name.value for p in fn.params.params if p.annotation is not None and not is_tensor_annotation(p.annotation)}
        if fn.name.value in ("__getitem__", "__setitem__") and len(facts.params) > 1:
            host.add(facts.params[1])  # the index of obj[idx]: an int, slice or tuple of them
        likely = set(facts.tensor_params) - host
        stmts = list(walk_own(fn.body, (cst.Assign, cst.AnnAssign, cst.AugAssign)))
        for _ in range(3):
            for a in stmts:
                targets = [t.target for t in a.targets] if isinstance(a, cst.Assign) else [a.target]
                for t in targets:
                    unpacked = isinstance(t, (cst.Tuple, cst.List))
                    if a.value is not None and _tensorish(rule, a.value, likely, unpacked):
                        likely |= {n.value for n in walk(t, cst.Name)} if unpacked else names_in(t) if isinstance(
                            t, cst.Name) else set()
        cache[key] = likely - host
    return cache[key]


def _tensorish(rule, v: cst.BaseExpression, likely: Set[str], unpacked: bool) -> bool:
    """``v`` evaluates to a tensor computed from the ``likely`` tensors."""
    if isinstance(v, cst.Name):
        return v.value in likely
    if isinstance(v, cst.Subscript):
        return _tensorish(rule, v.value, likely, False)
    if isinstance(v, cst.BinaryOperation):
        return _tensorish(rule, v.left, likely, False) or _tensorish(rule, v.right, likely, False)
    if isinstance(v, cst.UnaryOperation):
        return _tensorish(rule, v.expression, likely, False)
    if isinstance(v, cst.IfExp):
        return _tensorish(rule, v.body, likely, unpacked) or _tensorish(rule, v.orelse, likely, unpacked)
    if not isinstance(v, cst.Call):
        return False
    tf = torch_function(rule, v)
    args = set().union(*(tensor_names(a.value) for a in v.args)) if v.args else set()
    if tf is not None:
        if tf in TENSOR_FACTORIES:
            return kwarg(v, "device") is not None and bool(names_in(kwarg(v, "device").value) & likely)
        return not tf.split(".")[-1][:1].isupper() and bool(args & likely)
    if isinstance(v.func, cst.Attribute) and _tensorish(rule, v.func.value, likely, False):
        return v.func.attr.value not in _METADATA_METHODS and v.func.attr.value not in _HOST_METHODS
    return not unpacked and bool(args & likely) and not rule.qnames(v.func) & _NUMBER_BUILTINS


def _pairing_call(rule, call: cst.Call) -> Optional[str]:
    """``"function"``/``"method"`` when ``call`` needs its tensor operands on one device (``torch.cat``,
    ``F.cross_entropy``, ``x.masked_fill(m, v)``, ``out.index_add_(0, i, x)``), else None."""
    tf = torch_function(rule, call)
    if tf is not None:
        return "function" if tf in _PAIRING or tf.startswith("nn.functional.") else None
    if isinstance(call.func, cst.Attribute) and call.func.attr.value.rstrip("_") in _PAIRING:
        return "method"
    return None


def _meet_here(rule, n: cst.CSTNode, name: str, others: Set[str]) -> Optional[str]:
    """At node ``n``, does ``name`` meet one of ``others``? ``"meets"``: the two sides of an operator or
    comparison, a write into it (``name[i] = x``, ``name += x``), ``x`` indexing it, an operation that needs
    both on one device (``torch.cat``, ``x.masked_fill(name, 0)``, ``name.index_add_(0, i, x)``).
    ``"indexes"``: it indexes ``x`` (``x[name]``), which PyTorch allows for a CPU index into a CUDA tensor."""
    if isinstance(n, cst.Subscript):
        inside = [e for e in n.slice]
        if name in tensor_names(n.value, moved=False) and set().union(*(tensor_names(e) for e in inside)) & others:
            return "meets"
        if any(name in tensor_names(e, moved=False) for e in inside) and tensor_names(n.value) & others:
            return "indexes"
        return None
    if isinstance(n, cst.Assign):  # a write into the new tensor; a CPU value written into a CUDA tensor is a copy
        return "meets" if any(isinstance(t.target, cst.Subscript) and name in tensor_names(t.target.value, moved=False)
                              for t in n.targets) and tensor_names(n.value) & others else None
    if isinstance(n, cst.Comparison) and all(isinstance(c.operator, _IDENTITY_TESTS) for c in n.comparisons):
        return None  # type(x) is Parameter, x is None, k in d
    if isinstance(n, (cst.BinaryOperation, cst.Comparison, cst.AugAssign)):
        parts = list(fast_children(n))
    elif isinstance(n, cst.Call) and _pairing_call(rule, n) == "function":
        parts = [a.value for a in n.args]
    elif isinstance(n, cst.Call) and _pairing_call(rule, n) == "method":
        parts = [n.func.value] + [a.value for a in n.args]
    else:
        return None
    return "meets" if any(name in tensor_names(a, moved=False) and tensor_names(b) & others
                          for a in parts for b in parts if a is not b) else None


def meets_inputs(rule, fn: cst.FunctionDef, name: str, others: Set[str]) -> Optional[str]:
    """How ``name`` (or a name computed from it) meets ``others`` in ``fn``: ``"meets"``, ``"indexes"``
    (see ``_meet_here``) or None."""
    facts = function_facts(rule, fn)
    aliases = {name}
    for _ in range(3):
        for var, vals in facts.assignments.items():
            if var not in others and any(tensor_names(v) & aliases for v in vals):
                aliases.add(var)
    rest = others - aliases
    kinds = (cst.BinaryOperation, cst.Comparison, cst.AugAssign, cst.Assign, cst.Subscript, cst.Call)
    found = {_meet_here(rule, n, a, rest) for n in walk_own(fn.body, kinds) for a in aliases}
    return "meets" if "meets" in found else "indexes" if "indexes" in found else None


def tensor_names(node: cst.CSTNode, skip: Optional[cst.CSTNode] = None, moved: bool = True) -> Set[str]:
    """Names read as tensor values in ``node``: like ``names_in`` but not under ``.shape``/``.size()``/
    ``.device``/``len(...)``, nor in the index of a subscript (``x[idx] * y`` reads ``x`` and ``y``; ``idx``
    only picks elements); the subtree ``skip`` left out, and with ``moved=False`` tensors moved by
    ``.to(...)``/``.cuda()``/``.type_as(...)`` too."""
    out: Set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n is skip:
            continue
        if isinstance(n, cst.Name):
            out.add(n.value)
        elif isinstance(n, cst.Attribute):
            if n.attr.value not in _METADATA_ATTRS:
                stack.append(n.value)
        elif isinstance(n, cst.Subscript):
            stack.append(n.value)
        elif isinstance(n, cst.Call) and isinstance(n.func, cst.Attribute) and n.func.attr.value in _METADATA_METHODS:
            continue
        elif not moved and isinstance(n, cst.Call) and isinstance(n.func, cst.Attribute) \
                and n.func.attr.value in DEVICE_MOVES:
            continue
        elif isinstance(n, cst.Call) and isinstance(n.func, cst.Name) and n.func.value in _NOT_TENSOR_BUILTINS:
            continue
        elif isinstance(n, cst.Arg):
            stack.append(n.value)
        else:
            stack.extend(fast_children(n))
    return out


def _sibling_names(p: cst.CSTNode, child: cst.CSTNode) -> Set[str]:
    return set().union(*(tensor_names(c) for c in fast_children(p) if c is not child))


def inherits_device(rule, call: cst.Call, fname: str, inputs: Set[str]) -> bool:
    """``torch.normal(mean, std)``, ``torch.tensor(t)``, ``torch.sparse_coo_tensor(i, v)`` with an input
    tensor argument take that tensor's device."""
    return fname in ("normal", "tensor", "sparse_coo_tensor") and any(
        isinstance(a.value, cst.Name) and a.value.value in inputs for a in positional(call))


def inline_meets(rule, node: cst.CSTNode, others: Set[str]) -> Optional[str]:
    """Follow a factory result up its expression: ``"meets"`` when it meets ``others`` (``x + torch.arange(T)[None]``,
    ``torch.cat([x, torch.zeros(B, 1)])``, ``x.masked_fill(torch.ones(...) > 0, 0)``), ``"indexes"`` for
    ``x[torch.arange(B), t]``, ``"moved"`` after ``.to(...)``, ``"returned"`` in a ``return``,
    ``"assigned:<name>"`` when the chain is bound to a name, None otherwise (also when the expression ends in
    ``.numpy()``/``.tolist()``: host code)."""
    for a in rule.ancestors(node):
        if isinstance(a, cst.Attribute) and a.attr.value in _HOST_METHODS:
            return None
        if isinstance(a, (cst.BaseSmallStatement, cst.BaseCompoundStatement)):
            break
    child, p = node, rule.parent(node)
    while p is not None:
        if isinstance(p, cst.Attribute) and p.value is child and p.attr.value in DEVICE_MOVES:
            return "moved"
        if isinstance(p, cst.Attribute) and p.value is child and p.attr.value in _METADATA_ATTRS | _METADATA_METHODS:
            return None  # ``torch.arange(n).sum().item()``: a Python number from here on
        if isinstance(p, cst.Subscript):
            if child is not p.value:
                return "indexes" if tensor_names(p.value) & others else None
            if set().union(*(tensor_names(e) for e in p.slice)) & others:
                return "meets"
        if isinstance(p, (cst.BinaryOperation, cst.Comparison)) and _sibling_names(p, child) & others:
            return "meets"
        if isinstance(p, cst.Call):
            if _pairing_call(rule, p) and tensor_names(p, skip=node) & others:
                return "meets"
            if p.func is not child and torch_function(rule, p) not in COMBINING_FUNCTIONS:
                return None
        if isinstance(p, cst.Return):
            return "returned"
        if isinstance(p, cst.AugAssign):
            return "meets" if tensor_names(p.target) & others else None
        if isinstance(p, (cst.Assign, cst.AnnAssign)):
            t = p.targets[0].target if isinstance(p, cst.Assign) and len(p.targets) == 1 else getattr(p, "target", None)
            return f"assigned:{t.value}" if isinstance(t, cst.Name) else None
        if isinstance(p, (cst.BaseSmallStatement, cst.BaseCompoundStatement, cst.BaseSuite, cst.Lambda,
                          cst.BaseComp)):
            return None
        child, p = p, rule.parent(p)
    return None


def returned_directly(rule, fn: cst.FunctionDef, name: str) -> bool:
    """``name`` itself is (part of) a value ``fn`` returns: ``return h``, ``return h, x``, ``return {"h": h}``."""
    return any(r.value is not None and name in tensor_names(r.value, moved=False) for r in walk_own(fn.body, cst.Return))
