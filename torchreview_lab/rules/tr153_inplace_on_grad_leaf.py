from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._flow import in_no_grad
from ._knowledge import INPLACE_METHODS
from ._torch import assigned_values, enclosing_function, kwarg, method_call, torch_function, walk_own
from .base import Invalid, Rule


class InplaceOnGradLeaf(Rule):
    """A leaf tensor that requires grad (or a view of it) is modified in place.

    What it does:
        Flags ``w[i] = v``, ``w[:, 0].zero_()``, ``w.add_(1)`` and ``w -= lr * w.grad`` (augmented
        assignment, the hand-written SGD step) outside ``torch.no_grad()`` when
        ``w`` was created with ``requires_grad=True``, by ``nn.Parameter(...)`` or with
        ``.requires_grad_()`` in the same scope.

    Why is this bad:
        Autograd cannot record an in-place change to a leaf it must compute gradients for: the line
        raises ``RuntimeError: a leaf Variable that requires grad is being used in an in-place
        operation`` (or "a view of a leaf Variable ..."). Initialisation code written this way
        crashes as soon as it runs.

    Example:
        w = torch.randn(4, 4, requires_grad=True)
        w[0] = 0

    Use instead:
        with torch.no_grad():
            w[0] = 0
        # or build the values first and create the leaf last: w = t.clone().requires_grad_()
    """

    code = "TR153"
    title = "In-place op on a leaf that requires grad"
    category = "memory-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef f():\n    w = torch.randn(4, 4, requires_grad=True)\n    with torch.no_grad():\n        w[0] = 0\n    return w\n",
        "import torch\ndef f():\n    w = torch.randn(4, 4)\n    w[0] = 0\n    return w.requires_grad_()\n",
        "import torch\ndef f():\n    w = torch.randn(4, requires_grad=False)\n    w.add_(1)\n    return w\n",
        "import torch\ndef sgd(loss_fn, lr):\n    w = torch.randn(3, requires_grad=True)\n    loss_fn(w).backward()\n"
        "    with torch.no_grad():\n        w -= lr * w.grad\n    return w\n",
        "import torch\ndef f(x):\n    w = torch.randn(3, requires_grad=True)\n    h = w * x\n    h += 1\n    return h\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f():\n    w = torch.randn(4, 4, requires_grad=True)\n    w[0] = 0\n    return w\n", line=4),
        Invalid("import torch\nfrom torch import nn\ndef f():\n    p = nn.Parameter(torch.zeros(3, 3))\n    p[:, 0].fill_(1.0)\n    return p\n", line=5),
        Invalid("import torch\nb = torch.zeros(3).requires_grad_()\nb.add_(1)\n", line=3),
        Invalid("import torch\ndef f():\n    w = torch.randn(3, requires_grad=True)\n    w += 1\n    return w\n", line=4),
        Invalid("import torch\ndef sgd(loss_fn, lr):\n    w = torch.randn(3, requires_grad=True)\n    for _ in range(10):\n"
                "        loss_fn(w).backward()\n        w -= lr * w.grad\n        w.grad.zero_()\n    return w\n", line=6),
        Invalid("import torch\nw = torch.ones(3, requires_grad=True)\nw *= 2\n", line=3),
    ]

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        t = node.target
        if isinstance(t, cst.Subscript) and isinstance(t.value, cst.Name):
            self._check(self.parent(node), t.value.value, "item assignment into a view of it")

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        if isinstance(node.target, cst.Name):  # ``w -= lr * w.grad``: in place on the tensor ``w`` names
            self._check(node, node.target.value, f"augmented assignment `{self.code_for(node.operator).strip()}`")

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if not mc or mc[1] not in INPLACE_METHODS:
            return
        recv = mc[0]
        if isinstance(recv, cst.Subscript) and isinstance(recv.value, cst.Name):
            self._check(node, recv.value.value, f"`.{mc[1]}` on a view of it")
        elif isinstance(recv, cst.Name):
            self._check(node, recv.value, f"`.{mc[1]}`")

    def _check(self, node, name: str, how: str) -> None:
        if in_no_grad(self, node):
            return
        fn = enclosing_function(self, node)
        scope = fn.body if fn is not None else self.ctx.module
        augmented = [n.value for n in walk_own(scope, cst.AugAssign)] if scope is not None else []
        vals = [v for v in assigned_values(self, fn, name) if not any(v is a for a in augmented)]
        if len(vals) != 1:
            return
        why = self._leaf_reason(vals[0])
        if why is None:
            return
        self.report(
            node,
            problem=f"`{self.code_for(node).strip()}` modifies `{name}` in place ({how}), but `{name}` {why}.",
            impact="This raises RuntimeError ('a leaf Variable that requires grad is being used in an in-place operation').",
            fix=Fix(before=self.code_for(node).strip(), after=f"with torch.no_grad():\n    {self.code_for(node).strip()}"),
        )

    def _leaf_reason(self, v) -> Optional[str]:
        if not isinstance(v, cst.Call):
            return None
        rg = kwarg(v, "requires_grad")
        if torch_function(self, v) and rg is not None and isinstance(rg.value, cst.Name) and rg.value.value == "True":
            return "is a leaf created with requires_grad=True"
        tf = torch_function(self, v)
        if tf in ("nn.Parameter", "nn.parameter.Parameter"):
            rg = kwarg(v, "requires_grad")
            if rg is None or self.code_for(rg.value) != "False":
                return "is an nn.Parameter (a leaf that requires grad)"
        mc = method_call(v)
        if mc and mc[1] == "requires_grad_" and (not v.args or self.code_for(v.args[0].value) == "True"):
            return "was made a leaf that requires grad with .requires_grad_()"
        return None
