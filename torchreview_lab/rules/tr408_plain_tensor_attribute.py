from __future__ import annotations

from typing import Optional

import libcst as cst

from ._context import buffer_values, device_move_follows, init_methods, is_module_class, self_attribute_assignments
from ._knowledge import DEVICE_MOVES
from ._torch import assigned_values, dotted_name, kwarg, method_call, positional, torch_function, walk, walk_own
from .base import Invalid, Rule

# torch functions that do not return a tensor (or return one that is never on a device by mistake).
_NOT_TENSORS = frozenset({
    "device", "Size", "finfo", "iinfo", "Generator", "get_default_dtype", "promote_types", "result_type",
    "is_tensor", "numel", "manual_seed", "no_grad", "enable_grad", "inference_mode", "compile", "load",
    "save", "set_grad_enabled", "from_numpy", "get_rng_state", "initial_seed", "dtype", "cuda", "jit", "nn",
})


class PlainTensorAttribute(Rule):
    """A tensor stored on an nn.Module as a plain attribute (neither a parameter nor a buffer).

    What it does:
        ``self.mask = torch.tril(torch.ones(n, n))`` (a torch-built tensor, no ``device=``) in
        ``__init__`` of an ``nn.Module``, read with other tensors by another method without a move
        (``.to(x.device)``), not registered (``register_buffer``), no ``_apply``/``to`` override.

    Why is this bad:
        ``model.to(device)``/``.cuda()``/``.half()`` convert parameters and buffers only: on a GPU,
        ``forward`` fails with "Expected all tensors to be on the same device". It is also missing
        from ``state_dict()``: checkpoints and DDP's buffer broadcast do not carry it.

    Example:
        self.mask = torch.tril(torch.ones(n_ctx, n_ctx))

    Use instead:
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx)), persistent=False)
    """

    code = "TR408"
    title = "Tensor kept as a plain attribute: .to(device) does not move it"
    category = "device-handling"
    severity = {"research": "high", "production": "high"}
    autofix = True
    VALID = [
        "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
        "        self.register_buffer('mask', torch.tril(torch.ones(n, n)))\n    def forward(self, x):\n        return x * self.mask\n",
        "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
        "        self.pe = torch.randn(n, 8)\n    def forward(self, x):\n        return x + self.pe[: x.size(0)].to(x.device)\n",
        "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
        "        self.scale = torch.tensor(0.5)\n    def forward(self, x):\n        return x * self.scale\n",
        "import torch\nclass Cfg:\n    def __init__(self, n):\n        self.mask = torch.ones(n)\n    def apply(self, x):\n        return x * self.mask\n",
    ]
    INVALID = [
        Invalid("import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
                "        self.mask = torch.tril(torch.ones(n, n))\n    def forward(self, x):\n        return x * self.mask\n",
                line=6, expected_fix="import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, n):\n"
                "        super().__init__()\n        self.register_buffer(\"mask\", torch.tril(torch.ones(n, n)), persistent=False)\n"
                "    def forward(self, x):\n        return x * self.mask\n"),
        Invalid("import torch\nfrom torch import nn\nclass Enc(nn.Module):\n    def __init__(self, d, n):\n        super().__init__()\n"
                "        pos = torch.arange(n).unsqueeze(1)\n        self.freqs = pos * torch.exp(torch.arange(0, d, 2) * -0.1)\n"
                "    def forward(self, x):\n        return x + torch.sin(self.freqs[: x.size(1)])\n", line=7),
    ]

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if not is_module_class(self, node):
            return
        methods = {s.name.value: s for s in walk_own(node.body, cst.FunctionDef)}
        if "_apply" in methods or "to" in methods:
            return  # the class moves its own tensors
        init = init_methods(self, node)
        if not init:
            return
        owned = {id(a) for fn in init for a in walk_own(fn.body, cst.Assign)}
        buffers = buffer_values(self, node)
        for attr, pairs in self_attribute_assignments(self, node).items():
            if attr in buffers or len(pairs) != 1 or id(pairs[0][1]) not in owned:
                continue  # registered, or reassigned elsewhere (a cache refreshed in forward)
            value, stmt = pairs[0]
            fn = next(f for f in init if any(a is stmt for a in walk_own(f.body, cst.Assign)))
            if self._plain_tensor(fn, value) and self._read_unmoved(node, methods, init, attr):
                self._flag(node, attr, value, stmt)

    def _plain_tensor(self, fn, expr: cst.BaseExpression, depth: int = 0) -> bool:
        """``expr`` is a torch-built tensor of one or more dimensions with no ``device=``."""
        if depth > 4:
            return False
        if isinstance(expr, cst.Name):
            vals = assigned_values(self, fn, expr.value)
            return len(vals) == 1 and self._plain_tensor(fn, vals[0], depth + 1)
        if isinstance(expr, cst.BinaryOperation):
            return any(self._plain_tensor(fn, s, depth + 1) for s in (expr.left, expr.right)) and not any(
                self._moved(fn, s) for s in (expr.left, expr.right))
        if not isinstance(expr, cst.Call):
            return False
        tf = torch_function(self, expr)
        if tf is not None:
            if tf.split(".")[0] in _NOT_TENSORS or not tf[:1].islower() or kwarg(expr, "device") is not None:
                return False
            if tf in ("tensor", "as_tensor", "scalar_tensor"):
                first = positional(expr)
                return bool(first) and isinstance(first[0].value, (cst.List, cst.Tuple, cst.ListComp))
            return True
        mc = method_call(expr)
        if mc is None or mc[1] in DEVICE_MOVES or mc[1] in ("item", "tolist", "numpy", "cpu", "size", "dim", "numel"):
            return False
        return self._plain_tensor(fn, mc[0], depth + 1)

    def _moved(self, fn, expr) -> bool:
        return any(kwarg(c, "device") or (method_call(c) or (0, ""))[1] in DEVICE_MOVES for c in walk(expr, cst.Call))

    def _read_unmoved(self, cls, methods, init, attr: str) -> bool:
        """``self.<attr>`` is read by a method outside ``__init__`` (and its helpers) without a device move."""
        skip = {id(f) for f in init}
        read = False
        for fn in methods.values():
            if id(fn) in skip:
                continue
            for a in walk(fn.body, cst.Attribute):
                if a.attr.value != attr or dotted_name(a.value) != "self":
                    continue
                if device_move_follows(self, a):
                    return False
                read = read or self._combined(a)
        return read

    def _combined(self, node: cst.CSTNode) -> bool:
        """The read meets other tensors: an operand of arithmetic or an argument of a call, through
        indexing, comparisons and method chains (not a loop over it or a Python ``if`` on it)."""
        cur = node
        for _ in range(8):
            parent = self.parent(cur)
            if isinstance(parent, (cst.Subscript, cst.Comparison, cst.ComparisonTarget, cst.Attribute,
                                   cst.UnaryOperation)) or isinstance(parent, cst.Call) and parent.func is cur:
                cur = parent
                continue
            if isinstance(parent, cst.Arg):  # torch.cat([...]), x.masked_fill(m, v): not enumerate(m), len(m)
                call = self.parent(parent)
                return isinstance(call, cst.Call) and (isinstance(call.func, cst.Attribute) or bool(
                    torch_function(self, call)))
            return isinstance(parent, (cst.BinaryOperation, cst.SubscriptElement, cst.Index))
        return False

    def _flag(self, cls, attr: str, value, stmt) -> None:
        buffer = cst.parse_statement(f'self.register_buffer("{attr}", x, persistent=False)\n').body[0]
        buffer = buffer.with_deep_changes(buffer.value.args[1], value=value)
        self.report(
            stmt,
            problem=(f"`self.{attr}` in `{cls.name.value}` is a tensor kept as a plain attribute, neither a parameter "
                     "nor a registered buffer."),
            impact=("model.to(device)/.cuda()/.half() leave it a float32 CPU tensor: forward fails on a GPU with a "
                    "device mismatch. It is also missing from state_dict(), so checkpoints and DDP do not carry it."),
            replacement=buffer,
        )
