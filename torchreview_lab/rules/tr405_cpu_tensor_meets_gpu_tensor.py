from __future__ import annotations

from typing import List, Optional

import libcst as cst

from ..findings import Fix
from ._knowledge import TENSOR_FACTORIES
from ._graph_terms import loss_weight_on_host, unpacked_values
from ._torch import (assigned_values, dotted_name, enclosing_function, function_facts, is_method_call, kwarg,
                     method_call, positional, torch_function)
from .base import Invalid, Rule

_HOST_BUILDERS = frozenset({"from_numpy", "as_tensor", "asarray", "frombuffer"}) | TENSOR_FACTORIES
_COMBINE = (cst.Add, cst.Subtract, cst.Multiply, cst.Divide, cst.MatrixMultiply, cst.FloorDivide, cst.Modulo,
            cst.Power)


class CpuTensorMeetsGpuTensor(Rule):
    """A tensor built on the host is combined with one moved to the GPU.

    What it does:
        Flags arithmetic, comparisons and ``torch.cat``/``stack``/``where`` that combine a value
        moved with ``.cuda()``/``.to(device)`` and a tensor built on the CPU (a factory without
        ``device=``, ``torch.from_numpy``, ``torch.tensor(list)``) in the same scope. 0-dim
        ``torch.tensor(2.0)`` scalars are allowed by PyTorch and not flagged. Also a per-class ``weight=`` /
        ``pos_weight=`` built on the CPU (``torch.tensor(weights)``) passed to a loss whose inputs are on the GPU
        (moved, or a model's output on moved inputs).

    Why is this bad:
        PyTorch does not move tensors implicitly: the operation raises "Expected all tensors to be
        on the same device, but found at least two devices, cuda:0 and cpu" as soon as the code
        runs on a GPU, although it passes every CPU-only test.

    Example:
        x = batch.cuda()
        mask = torch.from_numpy(mask_np)
        y = x * mask

    Use instead:
        mask = torch.from_numpy(mask_np).to(x.device, non_blocking=True)
        y = x * mask
    """

    code = "TR405"
    title = "CPU tensor combined with a GPU tensor"
    category = "device-handling"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\nx = torch.ones(3).cuda()\nm = torch.ones(3, device=x.device)\ny = x * m\n",
        "import torch\nx = torch.ones(3).cuda()\ns = torch.tensor(2.0)\ny = x * s\n",
        "import torch\nimport torch.nn.functional as F\ndef fit(model, data, w, dev):\n    w = torch.tensor(w).to(dev)\n"
        "    for x, y in data:\n        x, y = x.to(dev), y.to(dev)\n        F.cross_entropy(model(x), y, weight=w)\n",
        "import torch\nimport numpy as np\nx = torch.ones(3).to('cuda')\nm = torch.from_numpy(np.ones(3)).to(x.device)\ny = x + m\n",
    ]
    INVALID = [
        Invalid("import torch\nimport numpy as np\nx = torch.randn(4, 3).cuda()\nm = torch.from_numpy(np.ones(3))\ny = x * m\n", line=5),
        Invalid("import torch\nimport torch.nn.functional as F\ndef fit(model, data, w):\n    for x, y in data:\n"
                "        x, y = x.cuda(), y.cuda()\n        loss = F.cross_entropy(model(x), y, weight=torch.tensor(w))\n",
                line=6),
        Invalid("import torch\ndef run(model, dev):\n    w = torch.tensor([1.0, 2.0])\n    h = model.out.to(dev)\n    return torch.cat([h, w])\n", line=5),
    ]

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        if isinstance(node.operator, _COMBINE):
            self._check(node, [node.left, node.right])

    def visit_Comparison(self, node: cst.Comparison) -> None:
        self._check(node, [node.left] + [c.comparator for c in node.comparisons])

    def visit_Call(self, node: cst.Call) -> None:
        if torch_function(self, node) in ("cat", "stack", "concat", "concatenate", "hstack", "vstack"):
            pos = positional(node)
            if pos and isinstance(pos[0].value, (cst.List, cst.Tuple)):
                self._check(node, [e.value for e in pos[0].value.elements])
        elif torch_function(self, node) in ("where", "maximum", "minimum", "matmul", "mul", "add"):
            self._check(node, [a.value for a in positional(node)])
        else:  # a per-class weight= of a loss function, or of the loss module called here
            kw, w = loss_weight_on_host(self, enclosing_function(self, node), node, _HOST_BUILDERS)
            if w is not None:
                self._check(node, [a.value for a in positional(node)] + [w], weight=kw)

    def _check(self, node: cst.CSTNode, operands: List[cst.BaseExpression], weight: str = "") -> None:
        fn, kinds = enclosing_function(self, node), {}
        for op in operands:
            k = "cpu" if weight and op is operands[-1] else self._where(fn, op)
            if k:
                kinds.setdefault(k, self.code_for(op))
        if "gpu" not in kinds or "cpu" not in kinds:
            return
        gpu, cpu = kinds["gpu"], kinds["cpu"]
        self.report(
            node,
            problem=f"`{self.code_for(node)}` combines `{gpu}` (moved to the GPU) with `{cpu}` (built on the CPU" + (
                f", as the loss's `{weight}=`)." if weight else ")."),
            impact=("PyTorch does not move tensors implicitly: this raises 'Expected all tensors to be on the same "
                    "device' on the first GPU run, although CPU-only tests pass."),
            fix=Fix(before=self.code_for(node), after=f"{weight or cpu} = {cpu}.to({gpu}.device)  # build it once, there"),
        )

    def _where(self, fn, e: cst.BaseExpression, depth: int = 0) -> Optional[str]:
        if isinstance(e, cst.Name) and depth in (0, 2):
            values = [v for v in assigned_values(self, fn, e.value) if not isinstance(v, (cst.Tuple, cst.List))]
            kinds = {self._where(fn, v, depth + 1) for v in values + unpacked_values(self, fn, e.value)}
            return kinds.pop() if len(kinds) == 1 else None
        if not isinstance(e, cst.Call):
            return None
        if depth < 2 and positional(e) and any(h in (dotted_name(e.func) or "").rsplit(".", 1)[-1].lower()
                                               for h in ("model", "net", "encoder", "backbone")):
            return "gpu" if self._where(fn, positional(e)[0].value, 2) == "gpu" else None  # model(x.cuda())
        if is_method_call(self, e, {"cuda"}):
            return "gpu"
        if is_method_call(self, e, {"to"}):
            return self._to_gpu(e)
        fname = torch_function(self, e)
        if fname in _HOST_BUILDERS and kwarg(e, "device") is None:
            if fname == "tensor":
                pos = positional(e)
                if not pos or not isinstance(pos[0].value, (cst.List, cst.Tuple, cst.ListComp)):
                    return None  # 0-dim scalars mix with CUDA tensors; unknown data: not sure
            elif fname in TENSOR_FACTORIES and fn is not None and function_facts(self, fn).tensor_params:
                return None  # TR401 reports the factory itself
            return "cpu"
        return None

    def _to_gpu(self, e: cst.Call) -> Optional[str]:
        dev = kwarg(e, "device")
        pos = positional(e)
        target = dev.value if dev is not None else (pos[0].value if pos else None)
        if target is None:
            return None
        if isinstance(target, cst.SimpleString):
            return "gpu" if "cuda" in target.value else None
        text = self.code_for(target)
        if "dtype" in text or text.startswith("torch.") and not text.startswith("torch.device"):
            return None
        if ".device" in text:
            return None  # follows another tensor: could be the CPU
        return "gpu" if "dev" in text.lower() or "cuda" in text.lower() or "gpu" in text.lower() else None
