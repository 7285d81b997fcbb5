from __future__ import annotations

from typing import Optional

import libcst as cst

from ._torch import assigned_values, enclosing_function, function_facts, method_call, positional, torch_function
from .base import Invalid, Rule

# Torch functions that return Python values or containers, not tensors.
_NOT_TENSOR = frozenset({"is_tensor", "numel", "get_default_dtype", "cuda.is_available", "Size", "device", "dtype",
                         "finfo", "iinfo", "split", "chunk", "unbind", "tensor_split", "meshgrid", "broadcast_tensors",
                         "broadcast_shapes", "load", "jit.script", "jit.trace", "compile"})
_NOT_TENSOR_METHODS = frozenset({"tolist", "item", "numpy", "size", "dim", "numel", "split", "chunk", "unbind"})


class TensorOfTensor(Rule):
    """``torch.tensor(t)`` is called on something that is already a tensor.

    What it does:
        Flags ``torch.tensor(x)`` / ``torch.as_tensor``-free copies where ``x`` is a tensor: the
        result of a torch operation, a tensor method, or a ``Tensor``-annotated parameter.

    Why is this bad:
        ``torch.tensor`` always copies and returns a leaf with no history: gradients stop there,
        silently. PyTorch warns ("To copy construct from a tensor, it is recommended to use
        sourceTensor.clone().detach()"), and the copy costs memory and time.

    Example:
        y = torch.tensor(x * 2)

    Use instead:
        y = (x * 2).clone()              # keeps the graph
        y = (x * 2).detach().clone()     # an explicit graph-free copy
    """

    code = "TR305"
    title = "torch.tensor() on an existing tensor drops its graph"
    category = "gradient-flow"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef f(values):\n    return torch.tensor(values)\n",
        "import torch\ndef f(x):\n    return torch.tensor(x.tolist())\n",
        "import torch\ndef f(x):\n    return torch.tensor(x.shape)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    y = torch.exp(x)\n    return torch.tensor(y)\n", line=4),
        Invalid("import torch\nfrom torch import Tensor\ndef f(x: Tensor):\n    return torch.tensor(x, dtype=torch.float32)\n", line=4),
        Invalid("import torch\ndef f(x):\n    return torch.tensor(x.sum(-1))\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if torch_function(self, node) != "tensor":
            return
        pos = positional(node)
        if not pos:
            return
        arg = pos[0].value
        fn = enclosing_function(self, node)
        why = self._tensor_reason(arg, fn, 0)
        if not why:
            return
        a = self.code_for(arg)
        from ..findings import Fix
        self.report(
            node,
            problem=f"`{self.code_for(node)}` copies `{a}`, which is already a tensor ({why}).",
            impact="The copy is a new leaf without history: gradients stop here silently, and the copy costs memory.",
            fix=Fix(before=self.code_for(node), after=f"{a}.clone()  # or {a}.detach().clone() for a graph-free copy"),
        )

    def _tensor_reason(self, expr, fn, depth) -> Optional[str]:
        if isinstance(expr, cst.Call):
            tf = torch_function(self, expr)
            if tf is not None:
                if tf in _NOT_TENSOR or tf.startswith(("nn.", "cuda.", "backends.", "utils.", "jit.")) or tf == "tensor":
                    return None
                return f"the output of `torch.{tf}`"
            mc = method_call(expr)
            if mc and mc[1] not in _NOT_TENSOR_METHODS and isinstance(mc[0], cst.Name) and fn is not None \
                    and mc[0].value in function_facts(self, fn).tensor_params and mc[1] in (
                        "sum", "mean", "exp", "log", "float", "clone", "detach", "view", "reshape", "to", "max", "min"):
                return f"the result of `.{mc[1]}()` on a tensor"
            return None
        if isinstance(expr, cst.Name) and fn is not None and depth < 3:
            facts = function_facts(self, fn)
            for p in fn.params.params:
                if p.name.value == expr.value and p.annotation is not None and \
                        self.code_for(p.annotation.annotation).strip() in ("Tensor", "torch.Tensor"):
                    return "a Tensor-annotated parameter"
            vals = assigned_values(self, fn, expr.value)
            if len(vals) == 1:
                return self._tensor_reason(vals[0], fn, depth + 1)
        return None
