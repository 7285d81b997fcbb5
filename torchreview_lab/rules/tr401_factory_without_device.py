from __future__ import annotations

from typing import Optional, Set

import libcst as cst

from ..findings import Fix
from ._knowledge import TENSOR_FACTORIES
from ._torch import (
    enclosing_function,
    function_facts,
    kwarg,
    method_call,
    names_in,
    positional,
    torch_function,
    walk_own,
)
from .base import Invalid, Rule

_MOVES = {"to", "cuda", "type_as", "to_dense"}


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
        if self._moved_immediately(node) or self._under_device_context(node):
            return
        if fname == "tensor" and self._scalar_tensor(node):
            severity, how = "low", "a 0-dim scalar tensor (broadcasts from the CPU, but still a host->device copy)"
        else:
            target = self._target(node)
            combined = self._combined(fn, target, facts.derived) if target else self._inline_combined(node, facts.derived)
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
                    after=self._with_device(node, ref)),
            severity=severity,
        )

    def _with_device(self, node: cst.Call, ref: str) -> str:
        new_args = list(node.args)
        if new_args:
            last = new_args[-1]
            new_args[-1] = last.with_changes(comma=cst.MaybeSentinel.DEFAULT)
        new_args.append(cst.Arg(keyword=cst.Name("device"), value=cst.parse_expression(f"{ref}.device"),
                                equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                                      whitespace_after=cst.SimpleWhitespace(""))))
        return self.code_for(node.with_changes(args=new_args))

    def _scalar_tensor(self, node: cst.Call) -> bool:
        pos = positional(node)
        return bool(pos) and isinstance(pos[0].value, (cst.Integer, cst.Float, cst.UnaryOperation, cst.Name))\
            and not isinstance(pos[0].value, cst.Name)

    def _moved_immediately(self, node: cst.Call) -> bool:
        p = self.parent(node)
        if isinstance(p, cst.Attribute) and p.attr.value in _MOVES:
            return True
        return False

    def _under_device_context(self, node: cst.Call) -> bool:
        for a in self.ancestors(node):
            if isinstance(a, cst.With):
                for item in a.items:
                    if isinstance(item.item, cst.Call) and torch_function(self, item.item) == "device":
                        return True
            if isinstance(a, cst.FunctionDef):
                return False
        return False

    def _target(self, node: cst.Call) -> Optional[str]:
        p = self.parent(node)
        if isinstance(p, cst.Assign) and len(p.targets) == 1 and isinstance(p.targets[0].target, cst.Name):
            return p.targets[0].target.value
        return None

    def _inline_combined(self, node: cst.Call, derived: Set[str]) -> bool:
        p = self.parent(node)
        if isinstance(p, (cst.BinaryOperation, cst.Comparison)):
            return bool(names_in(p) & derived)
        return False

    def _combined(self, fn: cst.FunctionDef, name: str, derived: Set[str]) -> bool:
        for n in walk_own(fn.body):
            if isinstance(n, cst.BinaryOperation):
                sides = (n.left, n.right)
                for a, b in (sides, sides[::-1]):
                    if name in names_in(a) and names_in(b) & (derived - {name}):
                        return True
            elif isinstance(n, cst.Assign):
                for t in n.targets:
                    tgt = t.target
                    if isinstance(tgt, cst.Subscript) and isinstance(tgt.value, cst.Name) and tgt.value.value == name:
                        if names_in(n.value) & (derived - {name}):
                            return True
            elif isinstance(n, cst.Call) and torch_function(self, n) in {"cat", "stack", "where", "matmul", "bmm", "einsum"}:
                args = set()
                for a in n.args:
                    args |= names_in(a.value)
                if name in args and args & (derived - {name}):
                    return True
        return False
