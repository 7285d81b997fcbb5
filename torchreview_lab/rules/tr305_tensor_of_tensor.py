from __future__ import annotations

from typing import Optional

import libcst as cst

from ._graph_terms import unpacked_values
from ._torch import (assigned_values, enclosing_function, function_facts, method_call, positional, torch_function,
                     walk_own)
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
        result of a torch operation, a tensor method, or a ``Tensor``-annotated parameter; or a list of
        such tensors (``torch.tensor([l1, l2])``, a list filled by ``losses.append(loss)``).

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
        "import torch\ndef f(xs):\n    n = []\n    for x in xs:\n        n.append(x.sum().item())\n    return torch.tensor(n)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    y = torch.exp(x)\n    return torch.tensor(y)\n", line=4),
        Invalid("import torch\nfrom torch import Tensor\ndef f(x: Tensor):\n    return torch.tensor(x, dtype=torch.float32)\n", line=4),
        Invalid("import torch\ndef f(x):\n    return torch.tensor(x.sum(-1))\n", line=3),
        Invalid("import torch\nimport torch.nn.functional as F\ndef f(xs, y):\n    losses = []\n    for x in xs:\n"
                "        losses.append(F.mse_loss(x, y))\n    return torch.tensor(losses).sum()\n", line=7),
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
        a, many = self.code_for(arg), why.startswith("a list")
        from ..findings import Fix
        self.report(
            node,
            problem=f"`{self.code_for(node)}` copies `{a}`, which " + (f"holds tensors ({why})." if many else
                                                                      f"is already a tensor ({why})."),
            impact="The copy is a new leaf without history: gradients stop here silently, and the copy costs memory.",
            fix=Fix(before=self.code_for(node), after=f"torch.stack({a})  # keeps the graph" if many else
                    f"{a}.clone()  # or {a}.detach().clone() for a graph-free copy"),
        )

    def _built_list(self, fn, name: str) -> bool:
        vals = [v for v in assigned_values(self, fn, name) if not isinstance(v, cst.Tuple)] + unpacked_values(
            self, fn, name)
        return len(vals) == 1 and (isinstance(vals[0], cst.List) and not vals[0].elements or isinstance(
            vals[0], cst.Call) and self.code_for(vals[0]) == "list()")

    def _tensor_reason(self, expr, fn, depth) -> Optional[str]:
        if isinstance(expr, cst.Call):
            tf = torch_function(self, expr)
            if tf is not None:
                if tf in _NOT_TENSOR or tf.startswith(("nn.", "cuda.", "backends.", "utils.", "jit.")) and not \
                        tf.startswith("nn.functional.") or tf == "tensor":
                    return None
                return f"the output of `torch.{tf}`"
            mc = method_call(expr)
            if mc and mc[1] not in _NOT_TENSOR_METHODS and isinstance(mc[0], cst.Name) and fn is not None \
                    and mc[0].value in function_facts(self, fn).tensor_params and mc[1] in (
                        "sum", "mean", "exp", "log", "float", "clone", "detach", "view", "reshape", "to", "max", "min"):
                return f"the result of `.{mc[1]}()` on a tensor"
            return None
        if isinstance(expr, cst.BinaryOperation) and depth < 3:
            return self._tensor_reason(expr.left, fn, depth + 1) or self._tensor_reason(expr.right, fn, depth + 1)
        if isinstance(expr, (cst.List, cst.Tuple, cst.ListComp)) and depth == 0:
            items = [expr.elt] if isinstance(expr, cst.ListComp) else [e.value for e in expr.elements]
            why = next((r for r in (self._tensor_reason(e, fn, 1) for e in items) if r), None)
            return why and f"a list of tensors: {why}"
        if isinstance(expr, cst.Name) and fn is not None and depth == 0 and self._built_list(fn, expr.value):
            items = [c.args[-1].value for c in walk_own(fn.body, cst.Call) if method_call(c) and c.args and method_call(
                c)[1] == "append" and isinstance(method_call(c)[0], cst.Name) and method_call(c)[0].value == expr.value]
            loop_bound = {n.value for f in walk_own(fn.body, cst.For) for n in walk_own(f.target, cst.Name)}
            why = next((r for r in (self._tensor_reason(e, fn, 1) for e in items if not (
                isinstance(e, cst.Name) and e.value in loop_bound)) if r), None)  # a loop variable: unknown
            return why and f"a list filled with tensors: `{expr.value}.append(...)` of {why}"
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
