from __future__ import annotations

import re

import libcst as cst

from ..findings import Fix
from ._context import is_module_class, self_attribute_values
from ._flow import in_no_grad
from ._knowledge import LIKE_FACTORIES, TENSOR_FACTORIES
from ._torch import (assigned_values, enclosing_class, enclosing_function, function_facts, kwarg, method_call,
                     positional, source_text, torch_function, walk, walk_own, without_arg)
from .base import Invalid, Rule

_VIEWS = frozenset({"view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "unsqueeze", "squeeze", "t",
                    "transpose", "permute", "expand", "expand_as", "clone", "repeat", "narrow"})  # no leaf, even views
_DTYPES = {"float": "float32", "float32": "float32", "double": "float64", "float64": "float64", "half": "float16",
           "float16": "float16", "bfloat16": "bfloat16", "FloatTensor": "float32", "DoubleTensor": "float64"}
_CHAIN = _VIEWS | {"to", "type", "cuda", "cpu", "float", "double", "half", "bfloat16", "requires_grad_"}
_ARITH = (cst.Add, cst.Subtract, cst.Multiply, cst.Divide, cst.Power, cst.MatrixMultiply)


def _with_fix(code: str, line: int, before: str, after: str) -> Invalid:
    return Invalid(code, line=line, expected_fix=code.replace(before, after))


class RequiresGradThenNonLeaf(Rule):
    """A tensor created with ``requires_grad=True`` is transformed at once, so the name holds a non-leaf.

    What it does:
        Flags ``w = torch.randn(784, 10, requires_grad=True) * 0.01`` (or ``/ math.sqrt(n)``, ``.view()``, ``.double()``,
        ``.to(device)``, ``.cuda()``: any op but a provable no-op such as ``.float()`` on float32; an unreadable device
        counts as a copy, as on any GPU machine) when ``w`` is used as a leaf: ``w.grad`` is read or reset, ``w`` goes to
        a ``torch.optim`` optimizer, or it is ``self.w`` in an ``nn.Module``'s ``__init__``. Not under ``no_grad``.

    Why is this bad:
        The factory's leaf is thrown away; ``w`` has a ``grad_fn``. Its ``.grad`` stays None after ``backward()`` (torch
        only warns), ``torch.optim.SGD([w])`` raises ``ValueError: can't optimize a non-leaf Tensor``, and a non-leaf
        module attribute is no parameter: it is never trained.

    Example:
        w = torch.randn(784, 10, requires_grad=True) * 0.01

    Use instead:
        w = (torch.randn(784, 10) * 0.01).requires_grad_()   # autofix; ``.to(d)`` becomes ``device=d`` in the factory
    """

    code = "TR307"
    title = "requires_grad tensor made a non-leaf at creation"
    category = "gradient-flow"
    severity = {"research": "high", "production": "high"}
    autofix = True
    VALID = [
        "import torch\nw = torch.nn.Parameter(torch.randn(784, 10, requires_grad=True) * 0.01)\nopt = torch.optim.SGD([w], lr=0.1)\n",
        "import torch\nw = (torch.randn(784, 10) * 0.01).requires_grad_()\nv = torch.randn(3, requires_grad=True).double().detach().requires_grad_()\nopt = torch.optim.SGD([w, v], lr=0.1)\n",
        "import torch\ndef fit(device):\n    w = torch.randn(10, device=device, requires_grad=True)\n    b = torch.zeros(1, device=device, requires_grad=True).to(device)\n    u = torch.ones(3, requires_grad=True).float().to('cpu')\n    return torch.optim.Adam([w, b, u])\n",
        "import torch\ndef f():\n    x = torch.randn(4, requires_grad=True) * 2\n    (x ** 2).sum().backward()\n    return x\n",
    ]
    INVALID = [
        _with_fix("import torch\nW = torch.randn(784, 10, requires_grad=True) * 0.01\nb = torch.zeros(10, requires_grad=True)\nopt = torch.optim.SGD([W, b], lr=0.1)\n", 2,
                  "torch.randn(784, 10, requires_grad=True) * 0.01", "(torch.randn(784, 10) * 0.01).requires_grad_()"),
        _with_fix("import torch\ndevice = torch.device('cuda' if torch.cuda.is_available() else 'cpu')\nw = torch.randn(3, 5, requires_grad=True).to(device)\nloss = (w ** 2).sum()\nloss.backward()\nprint(w.grad)\n", 3,
                  "torch.randn(3, 5, requires_grad=True).to(device)", "torch.randn(3, 5, device=device, requires_grad=True)"),
        _with_fix("import torch\nclass Affine(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.scale = torch.ones(5, requires_grad=True).cuda()\n", 5,
                  "torch.ones(5, requires_grad=True).cuda()", 'torch.ones(5, device="cuda", requires_grad=True)'),
    ]

    def visit_Assign(self, node: cst.Assign) -> None:
        found = self._chain(node.value, []) if len(node.targets) == 1 else None
        if found is None or not any(self._copies(s, found[0]) for s in found[1]) or in_no_grad(self, node):
            return
        target, value, fn, cls = node.targets[0].target, node.value, enclosing_function(self, node), enclosing_class(self, node)
        name = self.code_for(target)
        if isinstance(target, cst.Name) and len(assigned_values(self, fn, name)) == 1:  # module level: not where shadowed
            funcs = [f for f in walk(self.ctx.module, cst.FunctionDef) if fn is None and name not in
                     {*function_facts(self, f).params, *function_facts(self, f).assignments}]
            scope = list(walk(fn.body)) if fn is not None else [n for f in [self.ctx.module, *funcs] for n in walk_own(f)]
        elif re.fullmatch(r"self\.\w+", name) and cls and len(self_attribute_values(self, cls).get(name[5:], [])) == 1:
            scope = list(walk(cls))
        else:
            return
        why = self._leaf_use(name, scope, fn) or (name[:5] == "self." and fn and fn.name.value == "__init__" and is_module_class(
            self, cls) and "it is an nn.Module's weight, and a non-leaf is no Parameter")
        if why:
            after, exact = self._fix(value, *found)
            self.report(value, f"`{name} = {self.code_for(value)}`: `requires_grad=True` marks the factory's tensor and an op "
                        f"makes a new one, so `{name}` is a non-leaf (it has a grad_fn), yet {why}.", "Its `.grad` stays None "
                        "after backward() (torch only warns), torch.optim raises 'can't optimize a non-leaf Tensor', and a "
                        "module attribute is never trained.", Fix(self.code_for(value), after),
                        replacement=cst.parse_expression(after) if exact else None)

    def _chain(self, e, steps: list) -> tuple[cst.Call, list] | None:  # (factory with requires_grad=True, transforms)
        if isinstance(e, cst.BinaryOperation) and isinstance(e.operator, _ARITH):
            return self._chain(e.left, steps + [e]) or self._chain(e.right, steps + [e])
        if isinstance(e, cst.UnaryOperation) and isinstance(e.operator, cst.Minus):
            return self._chain(e.expression, steps + [e])
        mc, rg = method_call(e), kwarg(e, "requires_grad") if isinstance(e, cst.Call) else None
        if mc and mc[1] in _CHAIN and torch_function(self, e) is None and (mc[1] != "requires_grad_" or not e.args):
            return self._chain(mc[0], steps + ([e] if mc[1] != "requires_grad_" else []))  # a non-leaf stays one
        return (e, steps) if rg is not None and self.code_for(rg.value) == "True" and not any(a.star for a in e.args) and (
            torch_function(self, e) in TENSOR_FACTORIES | LIKE_FACTORIES or mc and mc[1].startswith("new_")) else None

    def _copies(self, step, factory) -> bool:  # a new tensor; an unreadable device counts, an unreadable dtype not
        name, copy = (method_call(step)[1], kwarg(step, "copy")) if isinstance(step, cst.Call) else ("", None)
        if not name or name in _VIEWS or copy is not None and self.code_for(copy.value) != "False":
            return True  # arithmetic, a view, a forced copy
        fd, fdev, src = kwarg(factory, "dtype"), kwarg(factory, "device"), self.ctx.source
        own_dtype = _DTYPES.get(self.code_for(fd.value).rsplit(".", 1)[-1]) if fd else "float32" if torch_function(
            self, factory) in TENSOR_FACTORIES - {"tensor"} and "set_default_dtype" not in src else None
        own_dev = None if fdev or re.search(r"set_default_device|with\s+[\w.]*device\(", src) else "cpu"
        for t in [name] if name in _DTYPES or not step.args else [a.value for a in step.args if a.keyword is None or (
                a.keyword.value == "device" or a.keyword.value == "dtype" and isinstance(a.value, cst.Attribute))]:
            t = t.args[0].value if isinstance(t, cst.Call) and torch_function(self, t) == "device" and t.args else t
            text = t if isinstance(t, str) else t.evaluated_value if isinstance(t, cst.SimpleString) else self.code_for(t)
            key = text.rsplit(".", 1)[-1] if "cuda." not in text else "cuda"
            if own_dtype not in (None, _DTYPES[key]) if key in _DTYPES else not (key in ("to", "type", "dtype") or fdev and (
                    self.code_for(fdev.value) == text) or own_dev == text.split(":")[0]):
                return True  # a dtype change; a device change (``.to()``, ``.to(x.dtype)``, the same device are none)
        return False

    def _leaf_use(self, code: str, scope, fn) -> str | None:
        calls = [(n, method_call(n), torch_function(self, n)) for n in scope if isinstance(n, cst.Call)]
        grads = [n for n in scope if isinstance(n, cst.Attribute) and n.attr.value == "grad" and self.code_for(n.value) == code]
        if grads and not any(mc and mc[1] == "retain_grad" and self.code_for(mc[0]) == code for _, mc, _ in calls):
            return f"`{code}.grad` is used"
        for n, _, tf in calls:
            arg = kwarg(n, "params") or (positional(n) or [None])[0]
            if tf and tf.startswith("optim.") and tf.rsplit(".", 1)[-1][:1].isupper() and arg is not None and \
                    tf.split(".")[1] not in ("lr_scheduler", "swa_utils") and code in self._held(arg.value, fn):
                return f"it is passed to the optimizer `{self.code_for(n.func)}`"
        return None

    def _held(self, e, fn, depth: int = 0) -> set[str]:  # optimizer params: lists, tuples, param groups, a name hop
        if isinstance(e, (cst.List, cst.Tuple, cst.Dict)):
            return {c for el in e.elements for c in self._held(el.value, fn, depth)}
        hop = assigned_values(self, fn, e.value) or assigned_values(self, None, e.value) if isinstance(e, cst.Name) else []
        return {self.code_for(e)}.union(*(self._held(v, fn, depth + 1) for v in hop if depth < 2))

    def _fix(self, value, factory, steps) -> tuple[str, bool]:  # (text, exact?): device into the factory, or requires_grad_()
        rg, mc, arg = kwarg(factory, "requires_grad"), method_call(value), (getattr(value, "args", None) or [None])[0]
        dev = '"cuda"' if mc and mc[1] == "cuda" and arg is None else self.code_for(arg.value) if mc and mc[1] == "to" \
            and len(value.args) == 1 and (arg.keyword is None or arg.keyword.value == "device") else ""
        if len(steps) == 1 and kwarg(factory, "device") is None and ("device" in dev.lower() or dev[:1] in "'\"" and dev):
            return source_text(self, factory, [(rg.keyword, f"device={dev}, requires_grad")]), True
        text = source_text(self, value, [(factory, self.code_for(without_arg(factory, rg)))])
        text = (f"({text})" if isinstance(value, (cst.BinaryOperation, cst.UnaryOperation)) else text) + (
            "" if mc and mc[1] == "requires_grad_" else ".requires_grad_()")
        others = [o for s in steps if isinstance(s, cst.BinaryOperation) for o in (s.left, s.right) if not self._chain(o, [])]
        return text, "\n" not in text and all(isinstance(o, (cst.Integer, cst.Float)) or any(  # no grad lost
            q.startswith("math.") for q in self.qnames(o.func if isinstance(o, cst.Call) else o)) for o in others)
