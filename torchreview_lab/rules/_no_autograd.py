"""Where in-place ops run without autograd (shared by the rules on tensors saved for backward): an
``autograd.Function``'s ``backward``, code only called under ``no_grad``, optimizer updates, and names
tied to ``.grad``/``.data``."""
from __future__ import annotations

import re

from typing import Optional, Set, Tuple

import libcst as cst

from ._context import _classes_by_name, is_module_class, module_kind, self_attribute_values
from ._flow import called_only_under_no_grad, in_no_grad
from ._torch import dotted_name, enclosing_class, enclosing_function, method_call, torch_function, walk, walk_own

_UPDATES = ("addcmul_", "addcdiv_", "lerp_", "_foreach_")  # optimizer-update ops
_GRAD_ATTRS = ("grad", "data")
# Methods where a ``.data`` read is set-up or bookkeeping, not part of the model's computation.
_SETUP_METHODS = ("__init__", "reset_parameters", "extra_repr", "__repr__", "state_dict", "load_state_dict")
_NON_COMPUTE = frozenset({"clone", "copy_", "cpu", "numpy", "tolist", "item", "detach", "norm", "abs", "size", "dim"})
_FUNCTION_BASES = {"torch.autograd.Function", "torch.autograd.function.Function",
                   "torch.autograd.function.InplaceFunction"}


def function_exemptions(rule, fn: cst.FunctionDef) -> Tuple[bool, Set[str]]:
    """Per function, once: whether the whole function runs without autograd, and the names it ties to
    ``.grad``/``.data`` (read as ``n.grad``/``n.data`` or assigned from an expression reading them)."""
    key = ("tr152-exemptions", id(fn))
    if key in rule.ctx.cache:
        return rule.ctx.cache[key]
    cls, doc_key = enclosing_class(rule, fn), ("tr152-optimizer-document",)
    if doc_key not in rule.ctx.cache:
        rule.ctx.cache[doc_key] = any(q.startswith("torch.optim") and q.endswith(".Optimizer") for c in walk(
            rule.ctx.module, cst.ClassDef) for b in c.bases for q in rule.qnames(b.value) or {  # or relative
            "torch.optim." + (dotted_name(b.value) or "")})
    grad_names: Set[str] = set()
    updates = False
    for n in walk_own(fn.body, (cst.Attribute, cst.Call, cst.Assign, cst.AnnAssign, cst.AugAssign)):
        if isinstance(n, cst.Attribute) and n.attr.value in _GRAD_ATTRS and isinstance(n.value, cst.Name):
            grad_names.add(n.value.value)
        elif isinstance(n, cst.Call):
            updates = updates or (method_call(n) or ("", ""))[1].startswith(_UPDATES)
        elif not isinstance(n, (cst.Attribute, cst.Call)) and n.value is not None and any(
                isinstance(a, cst.Attribute) and a.attr.value in _GRAD_ATTRS for a in walk(n.value, cst.Attribute)):
            targets = [t.target for t in n.targets] if isinstance(n, cst.Assign) else [n.target]
            grad_names |= {t.value for x in targets for t in walk(x, cst.Name)}
    whole = fn.name.value == "backward" and autograd_function(rule, cls) or called_only_under_no_grad(rule, fn) \
        or any((dotted_name(d.decorator) or "").endswith("once_differentiable") for d in fn.decorators) \
        or updates or (rule.ctx.cache[doc_key] and not is_module_class(rule, cls))
    rule.ctx.cache[key] = (whole, grad_names)
    return whole, grad_names

def autograd_function(rule, cls: Optional[cst.ClassDef], depth: int = 0) -> bool:
    """``cls`` derives from ``torch.autograd.Function`` (directly or through a class of this document)."""
    if cls is None or depth > 4:
        return False
    for b in cls.bases:
        qs = rule.qnames(b.value)
        if qs & _FUNCTION_BASES or rule.code_for(b.value).replace(" ", "") in ("torch.autograd.Function",
                                                                            "autograd.Function"):
            return True
        last = (dotted_name(b.value) or "").split(".")[-1]
        if not qs and any(c is not cls and autograd_function(rule, c, depth + 1)
                          for c in _classes_by_name(rule).get(last, ())):
            return True
    return False


def parameter_data_in_compute(rule, recv, node) -> bool:
    """``self.<p>.data`` where ``p`` is an ``nn.Parameter`` of the class, read as an operand of a
    computation in a method that is not set-up, with autograd on."""
    if not (isinstance(recv, cst.Attribute) and dotted_name(recv.value) == "self"):
        return False
    fn, cls = enclosing_function(rule, node), enclosing_class(rule, node)
    if fn is None or cls is None or fn.name.value in _SETUP_METHODS or in_no_grad(rule, node):
        return False
    values = self_attribute_values(rule, cls).get(recv.attr.value, [])
    if not values or any(module_kind(rule, fn, v) != "param" for v in values):
        return False
    parent = rule.parent(node)
    if isinstance(parent, cst.Attribute):  # self.w.data.clone() / .cpu() / .norm(): bookkeeping
        call = method_call(rule.parent(parent)) if isinstance(rule.parent(parent), cst.Call) else None
        return call is not None and call[1] not in _NON_COMPUTE
    if isinstance(parent, (cst.BinaryOperation, cst.UnaryOperation)):
        return True
    if isinstance(parent, cst.Arg):
        call = rule.parent(parent)
        return isinstance(call, cst.Call) and torch_function(rule, call) is not None
    return False


_SETUP_NAME = re.compile(r"init|reset|ema|momentum|teacher|target|average|copy|load|sync|update|step|decay|optim|lookahead|setup|transfer", re.I)


def benign_data_write(rule, node) -> bool:
    """A ``.data`` write where no autograd graph can hold the tensor: weight initialisation (a method
    named like init/reset or handed to ``.apply``), an EMA/teacher copy, a manual optimizer update
    (the value reads ``.grad``), or code under ``no_grad``."""
    if in_no_grad(rule, node) or ".grad" in rule.code_for(node):
        return True
    fn = enclosing_function(rule, node)
    if fn is None:
        return False
    if _SETUP_NAME.search(fn.name.value):
        return True
    key = ("applied-functions",)
    if key not in rule.ctx.cache:
        rule.ctx.cache[key] = {(dotted_name(c.args[0].value) or "").rsplit(".", 1)[-1] for c in walk(rule.ctx.module, cst.Call)
                               if isinstance(c.func, cst.Attribute) and c.func.attr.value == "apply" and len(c.args) == 1}
    return fn.name.value in rule.ctx.cache[key]
