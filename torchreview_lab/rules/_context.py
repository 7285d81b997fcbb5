"""Where code runs: inside an ``nn.Module.forward`` or a ``torch.compile``/``torch.jit.script``
function (graph context), in a public API function, under a CUDA-availability guard, a device context
or a test of some names; and how nn.Modules are built: what a name or ``self.attr`` was assigned, the
layer an ``nn.Sequential`` ends in, which calls construct modules, what ``__init__`` runs.

Helpers shared by the rules; everything resolves through qualified names and is cached
per review run on ``rule.ctx.cache``.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Set, Tuple

import libcst as cst

from ._knowledge import DEVICE_MOVES, NN_NON_MODULE_CLASSES, NN_NON_MODULE_PREFIXES, STATELESS_MODULES
from ._torch import (assigned_values, dotted_name, enclosing_class, enclosing_function, function_facts, last_part,
                     names_in, torch_function, walk, walk_own)

# Decorators / wrappers that compile a function into a graph.
COMPILERS = frozenset({"torch.compile", "torch.jit.script", "torch.jit.trace", "torch._dynamo.optimize",
                       "torch.compiler.compile"})
# Base classes that make a class an nn.Module (any torch.nn class except functional/init helpers).
_NOT_MODULE_PREFIXES = ("torch.nn.functional", "torch.nn.init", "torch.nn.utils", "torch.nn.parameter")


def _base_qnames(rule, cls: cst.ClassDef) -> Set[str]:
    out: Set[str] = set()
    for b in cls.bases:
        out |= rule.qnames(b.value)
        name = dotted_name(b.value)
        if name and not rule.qnames(b.value):
            out.add(name)
    return out


def _classes_by_name(rule) -> Dict[str, List[cst.ClassDef]]:
    """The document's classes by name: one walk per review, not one per base class asked about."""
    key = ("classes-by-name",)
    cache = rule.ctx.cache
    if key not in cache:
        out: Dict[str, List[cst.ClassDef]] = {}
        if rule.ctx.module is not None:
            for c in walk(rule.ctx.module, cst.ClassDef):
                out.setdefault(c.name.value, []).append(c)
        cache[key] = out
    return cache[key]


def self_attribute_assignments(rule, cls: cst.ClassDef) -> Dict[str, List[Tuple[cst.BaseExpression, cst.CSTNode]]]:
    """``{attr: [(value, statement)]}`` for every ``self.attr = value`` and ``self.attr: T = value`` in
    ``cls`` (all methods), built once per class and review."""
    key = ("self-assignments", id(cls))
    cache = rule.ctx.cache
    if key not in cache:
        out: Dict[str, List[Tuple[cst.BaseExpression, cst.CSTNode]]] = {}
        for a in walk(cls, (cst.Assign, cst.AnnAssign)):
            for t in ([t.target for t in a.targets] if isinstance(a, cst.Assign) else [a.target]):
                if isinstance(t, cst.Attribute) and dotted_name(t.value) == "self" and a.value is not None:
                    out.setdefault(t.attr.value, []).append((a.value, a))
        cache[key] = out
    return cache[key]


def self_attribute_values(rule, cls: cst.ClassDef) -> Dict[str, List[cst.BaseExpression]]:
    """``{attr: [values]}`` for every plain ``self.attr = value`` in ``cls`` (annotated assignments
    left out), built once per class and review."""
    key = ("self-values", id(cls))
    cache = rule.ctx.cache
    if key not in cache:
        out: Dict[str, List[cst.BaseExpression]] = {}
        for attr, pairs in self_attribute_assignments(rule, cls).items():
            values = [v for v, a in pairs if isinstance(a, cst.Assign)]
            if values:
                out[attr] = values
        cache[key] = out
    return cache[key]


def buffer_values(rule, cls: cst.ClassDef) -> Dict[str, List[cst.BaseExpression]]:
    """``{name: [values]}`` for every ``self.register_buffer("name", value)`` in ``cls``, built once
    per class and review."""
    key = ("buffer-values", id(cls))
    cache = rule.ctx.cache
    if key not in cache:
        out: Dict[str, List[cst.BaseExpression]] = {}
        for c in walk(cls, cst.Call):
            if isinstance(c.func, cst.Attribute) and c.func.attr.value == "register_buffer" \
                    and dotted_name(c.func.value) == "self" and len(c.args) >= 2 \
                    and isinstance(c.args[0].value, cst.SimpleString):
                out.setdefault(c.args[0].value.evaluated_value, []).append(c.args[1].value)
        cache[key] = out
    return cache[key]


def attribute_values(rule, node: cst.CSTNode, attr: str) -> List[cst.BaseExpression]:
    """What ``self.attr`` holds in the class around ``node``: its assignments and registered buffers."""
    cls = enclosing_class(rule, node)
    if cls is None:
        return []
    return self_attribute_values(rule, cls).get(attr, []) + buffer_values(rule, cls).get(attr, [])


def device_move_follows(rule, node: cst.CSTNode) -> bool:
    """``self.mask[...]...`` continues into ``.to(...)``/``.type_as(...)``/``.cuda()`` before it is used."""
    cur = node
    for _ in range(6):
        parent = rule.parent(cur)
        if isinstance(parent, cst.Subscript) and parent.value is cur:
            cur = parent
            continue
        if isinstance(parent, cst.Attribute) and parent.value is cur:
            if parent.attr.value in DEVICE_MOVES:
                return True
            call = rule.parent(parent)
            if isinstance(call, cst.Call) and call.func is parent:
                cur = call
                continue
        return False
    return False


def bound_values(rule, fn: Optional[cst.FunctionDef], ref, params_shadow: bool = False) -> List[cst.BaseExpression]:
    """What a name (assigned in ``fn``, else at module level) or ``self.attr`` (anywhere in its class)
    was assigned; with ``params_shadow``, a parameter of ``fn`` hides a module-level assignment."""
    if isinstance(ref, cst.Name):
        vals = assigned_values(rule, fn, ref.value) if fn is not None else []
        if not vals and not (params_shadow and fn is not None and ref.value in function_facts(rule, fn).params):
            vals = assigned_values(rule, None, ref.value)
        return vals
    cls = enclosing_class(rule, ref) if isinstance(ref, cst.Attribute) and dotted_name(ref.value) == "self" else None
    return list(self_attribute_values(rule, cls).get(ref.attr.value, [])) if cls is not None else []


def construction_of(rule, fn: Optional[cst.FunctionDef], expr) -> Optional[cst.Call]:
    """The one ``Cls(...)`` call that built ``expr``: the call itself, or what a name or ``self.attr``
    was assigned (a parameter of ``fn`` is not looked up at module level)."""
    if isinstance(expr, cst.Call):
        return expr
    vals = bound_values(rule, fn, expr, params_shadow=True) if isinstance(expr, (cst.Name, cst.Attribute)) else []
    return vals[0] if len(vals) == 1 and isinstance(vals[0], cst.Call) else None


def last_layer(rule, module: cst.Call) -> Optional[cst.Call]:
    """The module a construction finally applies: the last layer of ``nn.Sequential(..., nn.Softmax(1))``,
    the construction itself for another torch class; None otherwise."""
    if last_part(torch_function(rule, module)) == "Sequential":
        a = module.args[-1] if module.args else None
        return a.value if a is not None and not a.star and isinstance(a.value, cst.Call) else None
    return module if last_part(torch_function(rule, module))[:1].isupper() else None


def init_methods(rule, cls: cst.ClassDef) -> List[cst.FunctionDef]:
    """``__init__`` of ``cls`` and the methods it calls on ``self`` (``self._build()``); empty when the
    class defines no ``__init__``."""
    methods = {s.name.value: s for s in walk_own(cls.body, cst.FunctionDef)}
    if "__init__" not in methods:
        return []
    init = methods["__init__"]
    helpers = set(methods) - {"__init__"}
    return [init] + [methods[c.func.attr.value] for c in walk_own(init.body, cst.Call)
                     if isinstance(c.func, cst.Attribute) and dotted_name(c.func.value) == "self"
                     and c.func.attr.value in helpers]


def is_module_class(rule, cls: Optional[cst.ClassDef], _depth: int = 0) -> bool:
    """True for ``class M(nn.Module)`` / ``class M(nn.Linear)`` / a subclass of a local Module class."""
    if cls is None or _depth > 4:
        return False
    key = ("is-module", id(cls))
    cache = rule.ctx.cache
    if key in cache:
        return cache[key]
    result = False
    for q in _base_qnames(rule, cls):
        if q.startswith("torch.nn.") and not q.startswith(_NOT_MODULE_PREFIXES):
            result = True
        elif q in ("nn.Module", "Module", "LightningModule") or q.endswith(".LightningModule"):
            result = True
        else:  # a class defined in this document
            local = q.rsplit(".", 1)[-1]
            for c in _classes_by_name(rule).get(local, ()):
                if c is not cls and is_module_class(rule, c, _depth + 1):
                    result = True
                    break
        if result:
            break
    cache[key] = result
    return result


def local_module_class(rule, name: str) -> bool:
    """``name`` is a class of this document (not shadowed by an import) that is an nn.Module."""
    classes = _classes_by_name(rule).get(name)
    return bool(classes) and name not in rule.ctx.names.aliases and is_module_class(rule, classes[-1])


def module_kind(rule, fn, expr) -> Optional[str]:
    """What ``expr`` (a call, or a name assigned one call in ``fn``) constructs: ``"module"`` (a torch.nn
    module or a module class of this document), ``"param"`` (``nn.Parameter``), ``"stateless"`` (an
    activation or pooling module that holds nothing); None for anything else."""
    if isinstance(expr, cst.Name):
        vals = assigned_values(rule, fn, expr.value)
        expr = vals[0] if len(vals) == 1 else expr
    if not isinstance(expr, cst.Call):
        return None
    tf = torch_function(rule, expr)
    if tf is not None:
        last = last_part(tf)
        if not tf.startswith("nn.") or tf.startswith(NN_NON_MODULE_PREFIXES) or not last[:1].isupper() \
                or last in NN_NON_MODULE_CLASSES:
            return None
        return "param" if last == "Parameter" else "stateless" if STATELESS_MODULES.fullmatch(last) else "module"
    if isinstance(expr.func, cst.Name) and local_module_class(rule, expr.func.value):
        return "module"
    return None


def _compiled_names(rule) -> Set[str]:
    """Names passed to ``torch.compile(f)`` / ``torch.jit.script(f)`` anywhere in the document."""
    key = ("compiled-names",)
    cache = rule.ctx.cache
    if key not in cache:
        out: Set[str] = set()
        if rule.ctx.module is not None:
            for call in walk(rule.ctx.module, cst.Call):
                last = call.func.attr.value if isinstance(call.func, cst.Attribute) else (
                    call.func.value if isinstance(call.func, cst.Name) else "")
                if last not in ("compile", "script", "trace", "optimize"):
                    continue
                if call.args and rule.qnames(call.func) & COMPILERS and isinstance(call.args[0].value, cst.Name):
                    out.add(call.args[0].value.value)
        cache[key] = out
    return cache[key]


def document_compiles(rule) -> bool:
    """The document calls ``torch.compile`` / ``torch.jit.script`` (on anything) or decorates with them."""
    key = ("document-compiles",)
    if key not in rule.ctx.cache:
        rule.ctx.cache[key] = rule.ctx.module is not None and any(
            rule.qnames(c.func) & COMPILERS for c in walk(rule.ctx.module, cst.Call)) or any(
            rule.qnames(d.decorator) & COMPILERS for d in walk(rule.ctx.module, cst.Decorator))
    return rule.ctx.cache[key]


def is_compiled_function(rule, fn: cst.FunctionDef) -> bool:
    for d in fn.decorators:
        dec = d.decorator.func if isinstance(d.decorator, cst.Call) else d.decorator
        if rule.qnames(dec) & COMPILERS or (dotted_name(dec) or "") in COMPILERS:
            return True
    return fn.name.value in _compiled_names(rule) and enclosing_class(rule, fn) is None


def is_forward(rule, fn: Optional[cst.FunctionDef]) -> bool:
    """``fn`` is the ``forward`` method of an nn.Module subclass."""
    if fn is None or fn.name.value != "forward":
        return False
    parent = rule.parent(rule.parent(fn)) if rule.parent(fn) is not None else None
    return isinstance(parent, cst.ClassDef) and is_module_class(rule, parent)


def graph_function(rule, node: cst.CSTNode) -> Optional[cst.FunctionDef]:
    """The enclosing ``forward`` / compiled function when ``node`` is traced into a graph, else None."""
    fn = enclosing_function(rule, node)
    if fn is None:
        return None
    if is_forward(rule, fn) or is_compiled_function(rule, fn):
        return fn
    return None


def graph_kind(rule, fn: cst.FunctionDef) -> str:
    """Legacy: "compiled function" or "forward"."""
    return "compiled function" if is_compiled_function(rule, fn) else "forward"


def graph_where(rule, fn: cst.FunctionDef) -> str:
    """"`Block.forward`" or "compiled function `f`", for messages."""
    if is_compiled_function(rule, fn):
        return f"compiled function `{fn.name.value}`"
    cls = enclosing_class(rule, fn)
    return f"`{cls.name.value}.forward`" if cls is not None else "`forward`"


def is_public_name(name: str) -> bool:
    return not name.startswith("_")


def public_function(rule, fn: cst.FunctionDef) -> bool:
    """A top-level public function, or a public method of a public top-level class (not nested,
    not a test)."""
    name = fn.name.value
    if not is_public_name(name) or name.startswith("test"):
        return False
    parent = rule.parent(fn)
    if isinstance(parent, cst.Module):
        return True
    if isinstance(parent, cst.IndentedBlock):
        cls = rule.parent(parent)
        if isinstance(cls, cst.ClassDef) and isinstance(rule.parent(cls), cst.Module):
            return is_public_name(cls.name.value) and not cls.name.value.startswith("Test")
    return False


def _mentions_gpu(rule, node: cst.CSTNode) -> bool:
    text = rule.code_for(node).lower()
    return "cuda" in text or "gpu" in text


def _exits(body: cst.BaseSuite) -> bool:
    """The block ends the function or test: ``return``/``raise``/``pytest.skip(...)``/``self.skipTest(...)``."""
    stmts = body.body if isinstance(body, cst.IndentedBlock) else [body]
    last = stmts[-1] if stmts else None
    small = last.body[-1] if isinstance(last, (cst.SimpleStatementLine, cst.SimpleStatementSuite)) and last.body else last
    if isinstance(small, (cst.Return, cst.Raise)):
        return True
    call = small.value if isinstance(small, cst.Expr) else None
    return isinstance(call, cst.Call) and "skip" in (dotted_name(call.func) or "").lower()


def under_cuda_guard(rule, node: cst.CSTNode) -> bool:
    """True when ``node`` only runs with a GPU present: in an ``if``/``while``/conditional expression that
    checks CUDA availability or the tensor's device (``torch.cuda.is_available()``, ``x.is_cuda``,
    ``device.type == "cuda"``) or a GPU flag (``if use_gpu:``); under ``with torch.cuda.stream(s):``; after
    ``if not torch.cuda.is_available(): return``/``pytest.skip(...)`` in its function; in a function/class
    decorated ``@pytest.mark.skipif(not torch.cuda.is_available(), ...)``/``@skip_if_lt_x_gpu(2)``; in a
    function or class named for CUDA (``def cuda(self)``, ``def to_gpu``, ``class CUDATestBase``)."""
    child = node
    for a in rule.ancestors(node):
        test = a.test if isinstance(a, (cst.If, cst.IfExp, cst.While)) else None
        if test is not None:
            text = rule.code_for(test)
            if "is_available" in text or "is_cuda" in text or "device_count" in text or ".type" in text \
                    or "cuda" in text.lower():
                return True
            if not isinstance(a, cst.While) and child is not test and "gpu" in text.lower():
                return True  # if use_gpu:
        if isinstance(a, cst.With) and any(_mentions_gpu(rule, item.item) for item in a.items):
            return True  # with torch.cuda.stream(s): / with torch.cuda.device(i):
        if isinstance(a, (cst.FunctionDef, cst.ClassDef)):
            if any(_mentions_gpu(rule, d.decorator) for d in a.decorators):
                return True
            # a function or class whose name says it is about CUDA (``def cuda(self)``, ``class TestGPUOps``)
            if "cuda" in a.name.value.lower() or "gpu" in a.name.value.lower():
                return True
        if isinstance(a, cst.FunctionDef) and isinstance(a.body, cst.IndentedBlock):
            for stmt in a.body.body:
                if stmt is child:
                    break
                if isinstance(stmt, cst.If) and _mentions_gpu(rule, stmt.test) and _exits(stmt.body):
                    return True  # if not torch.cuda.is_available(): return
        child = a
    return False


# Packages whose import makes a document PyTorch code.
TORCH_FRAMEWORKS = ("torch", "lightning", "pytorch_lightning", "transformers")


def imports_torch(rule) -> bool:
    """The document imports torch or a framework built on it (Lightning, transformers)."""
    return any(q.split(".")[0] in TORCH_FRAMEWORKS for q in rule.ctx.names.aliases.values())


# Function names that read as evaluation (``evaluate``, ``val_loss``, ``test_step``, ``compute_metrics``):
# weak evidence, to be combined with what the code does.
_EVALUATION_NAME = re.compile(r"(^|_)(eval|evaluate|evaluation|valid|validate|validation|val|test|score|metrics?|"
                              r"infer|inference|predict|benchmark)(_|$)")


def is_evaluation_name(name: str) -> bool:
    """``name`` (lower-case) reads as an evaluation function."""
    return bool(_EVALUATION_NAME.search(name))


def under_test_of(rule, node: cst.CSTNode, names) -> bool:
    """An enclosing ``if``/``while``/conditional expression (in ``node``'s function) tests one of
    ``names``: ``x[i + 1]`` under ``if i + 1 < n:``."""
    for a in rule.ancestors(node):
        if isinstance(a, (cst.If, cst.While, cst.IfExp)) and names_in(a.test) & names:
            return True
        if isinstance(a, cst.FunctionDef):
            break
    return False


def under_device_context(rule, node: cst.CSTNode) -> bool:
    """``node`` runs inside ``with torch.device(...):`` in its function, where factories default to
    that device."""
    for a in rule.ancestors(node):
        if isinstance(a, cst.With):
            for item in a.items:
                if isinstance(item.item, cst.Call) and torch_function(rule, item.item) == "device":
                    return True
        if isinstance(a, cst.FunctionDef):
            return False
    return False


def only_statement_kinds(body: cst.BaseSuite) -> list:
    """The simple statements of an indented block (compound statements returned as they are)."""
    out = []
    stmts = body.body if isinstance(body, cst.IndentedBlock) else [body]
    for s in stmts:
        if isinstance(s, cst.SimpleStatementLine):
            out.extend(s.body)
        elif isinstance(s, cst.SimpleStatementSuite):
            out.extend(s.body)
        else:
            out.append(s)
    return out


def docstring_of(node) -> Optional[str]:
    try:
        return node.get_docstring()
    except Exception:
        return None


def first_param_names(fn: cst.FunctionDef) -> list:
    p = fn.params
    return [x.name.value for x in list(p.posonly_params) + list(p.params) + list(p.kwonly_params)]


def own_calls(fn: cst.FunctionDef):
    return walk_own(fn.body, cst.Call)


# Methods whose contract the base class documents (nn.Module, Lightning, datasets): an override
# needs no docstring of its own when the class has one.
DOCUMENTED_OVERRIDES = frozenset({
    "forward", "extra_repr", "reset_parameters", "training_step", "validation_step", "test_step",
    "predict_step", "configure_optimizers", "setup", "teardown", "step", "zero_grad", "state_dict",
    "load_state_dict", "train", "eval", "backward", "sample", "rsample", "log_prob", "entropy",
    "cdf", "icdf", "expand", "mean", "variance", "support", "arg_constraints", "run", "get_config",
    "from_config", "update", "compute", "reset", "__call__",
})


def is_overload_or_setter(rule, fn: cst.FunctionDef) -> bool:
    for d in fn.decorators:
        dec = d.decorator.func if isinstance(d.decorator, cst.Call) else d.decorator
        text = rule.code_for(dec)
        if text.endswith((".setter", ".deleter", "overload", "override")) or "abstractmethod" in text:
            return True
    return False


def public_defs(module: cst.Module):
    """Yield ``(fn, cls)`` for public top-level functions (cls None) and public methods of public
    top-level classes; skips dunders, ``_private`` names and tests."""
    for stmt in module.body:
        if isinstance(stmt, cst.FunctionDef):
            n = stmt.name.value
            if is_public_name(n) and not n.startswith("test"):
                yield stmt, None
        elif isinstance(stmt, cst.ClassDef):
            cn = stmt.name.value
            if not is_public_name(cn) or cn.startswith("Test"):
                continue
            body = stmt.body.body if isinstance(stmt.body, cst.IndentedBlock) else []
            for s in body:
                if isinstance(s, cst.FunctionDef) and is_public_name(s.name.value):
                    yield s, stmt


def doc_assigned_names(module: cst.Module) -> Set[str]:
    """Names documented by assignment: ``Conv2d.__doc__ = r\"\"\"...\"\"\"`` at module level."""
    out: Set[str] = set()
    for stmt in module.body:
        if isinstance(stmt, cst.SimpleStatementLine):
            for s in stmt.body:
                if isinstance(s, (cst.Assign, cst.AugAssign)):
                    targets = [t.target for t in s.targets] if isinstance(s, cst.Assign) else [s.target]
                    for t in targets:
                        if isinstance(t, cst.Attribute) and t.attr.value == "__doc__":
                            name = dotted_name(t.value)
                            if name:
                                out.add(name)
    return out


def only_in_mode(rule, node: cst.CSTNode, method: cst.FunctionDef, mode: str) -> bool:
    """``node`` only runs when ``mode`` (e.g. ``self.training``) is true: under ``if self.training:`` (or an
    ``IfExp``), or after ``if not self.training: return ...`` at the top of ``method``."""
    for a in rule.ancestors(node):
        if a is method:
            break
        if isinstance(a, (cst.If, cst.IfExp, cst.While)) and mode in rule.code_for(a.test):
            return True
    for stmt in walk_own(method.body, cst.If):
        if mode in rule.code_for(stmt.test) and rule.line_of(stmt) < rule.line_of(node) and any(
                isinstance(s, (cst.Return, cst.Raise)) for s in walk_own(stmt.body)):
            return True
    return False
