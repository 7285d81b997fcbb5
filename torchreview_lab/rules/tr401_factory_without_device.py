from __future__ import annotations

from typing import Set

import libcst as cst

from ..findings import Fix
from ._context import under_device_context
from ._flow import combined_with
from ._knowledge import DEVICE_MOVES, TENSOR_FACTORIES
from ._torch import (assigned_name, enclosing_function, function_facts, kwarg, names_in, positional, torch_function,
                     with_keyword)
from .base import Invalid, Rule


class FactoryWithoutDevice(Rule):
    """A tensor factory without ``device=`` inside a function that receives tensors.

    What it does:
        Flags ``torch.zeros``/``ones``/``empty``/``full``/``arange``/``linspace``/``eye``/
        ``rand*``/``tensor`` ... called without ``device=`` inside a function whose tensor inputs
        can live on a GPU. It is High when the new tensor is then combined with an input tensor
        (arithmetic, comparison, or written into with input values), Medium otherwise, Low for a
        0-dim ``torch.tensor(2.0)``.

    Why is this bad:
        The factory allocates on the default device (the CPU). The code passes every CPU test and
        fails on the first GPU run with "Expected all tensors to be on the same device", or, when
        the CPU tensor is only written into, runs a slow host-device copy per step.

    Example:
        def masked(data, lengths):
            mask = torch.zeros(data.shape[0], data.shape[1])
            return data * mask

    Use instead:
        mask = torch.zeros(data.shape[0], data.shape[1], device=data.device, dtype=data.dtype)
        # or data.new_zeros(...), torch.zeros_like(data)
    """

    code = "TR401"
    title = "Tensor factory without device= in a function that receives tensors"
    category = "device-handling"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef f(x):\n    m = torch.zeros(x.shape[0], device=x.device)\n    return x * m\n",
        "import torch\ndef f(x):\n    return x * torch.zeros_like(x)\n",
        "import torch\ndef make(n):\n    return torch.zeros(n, n)\n",
        "import torch\ndef f(x):\n    with torch.device(x.device):\n        m = torch.ones(3)\n    return x + m\n",
        "import torch\ndef f(x):\n    m = torch.arange(x.shape[1]).to(x.device)\n    return x * m\n",
    ]
    INVALID = [
        Invalid("import torch\ndef masked(data, lengths):\n    b, T = data.shape[:2]\n    mask = torch.zeros(b, T)\n    return data * mask\n", line=4),
        Invalid("from torch import arange\ndef pos(x):\n    p = arange(x.size(1))\n    return x + p\n", line=3),
        Invalid("import torch as th\nclass M:\n    def forward(self, x):\n        h = th.randn(x.shape[0], 4)\n        return h\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        fname = torch_function(self, node)
        if fname not in TENSOR_FACTORIES or kwarg(node, "device") is not None:
            return
        if any(a.star == "**" for a in node.args):
            return
        fn = enclosing_function(self, node)
        if fn is None:
            return
        facts = function_facts(self, fn)
        if not facts.tensor_params:
            return
        if self._moved_immediately(node) or under_device_context(self, node):
            return
        if fname == "tensor" and self._scalar_tensor(node):
            severity, how = "low", "a 0-dim scalar tensor (broadcasts from the CPU, but still a host->device copy)"
        else:
            target = assigned_name(self, node)
            combined = combined_with(self, fn, target, facts.derived - {target}) if target \
                else self._inline_combined(node, facts.derived)
            severity = None if combined else "medium"
            how = "combined with an input tensor" if combined else "created on the default device"
        inputs = ", ".join(sorted(facts.tensor_params))
        ref = sorted(facts.tensor_params)[0]
        self.report(
            node,
            problem=(f"`torch.{fname}(...)` has no `device=` although `{fn.name.value}` receives tensors "
                     f"({inputs}) that may live on a GPU; the result is {how}."),
            impact=("On a GPU this raises 'Expected all tensors to be on the same device' or copies host->device "
                    "every call; CPU-only tests cannot catch it."),
            fix=Fix(before=self.code_for(node),
                    after=self.code_for(with_keyword(node, "device", cst.parse_expression(f"{ref}.device")))),
            severity=severity,
        )

    def _scalar_tensor(self, node: cst.Call) -> bool:
        pos = positional(node)
        return bool(pos) and isinstance(pos[0].value, (cst.Integer, cst.Float, cst.UnaryOperation, cst.Name))\
            and not isinstance(pos[0].value, cst.Name)

    def _moved_immediately(self, node: cst.Call) -> bool:
        p = self.parent(node)
        if isinstance(p, cst.Attribute) and p.attr.value in DEVICE_MOVES:
            return True
        return False

    def _inline_combined(self, node: cst.Call, derived: Set[str]) -> bool:
        p = self.parent(node)
        if isinstance(p, (cst.BinaryOperation, cst.Comparison)):
            return bool(names_in(p) & derived)
        return False
