from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._context import under_cuda_guard
from ._torch import in_loop_body, is_method_call, kwarg, positional, torch_function
from .base import Invalid, Rule


def _cuda_string(node: cst.BaseExpression) -> Optional[str]:
    if isinstance(node, cst.SimpleString):
        v = node.evaluated_value
        if isinstance(v, str) and (v == "cuda" or v.startswith("cuda:")):
            return v
    return None


class HardcodedCuda(Rule):
    """The device is hard-coded to CUDA.

    What it does:
        Flags ``.cuda()``, ``.cuda(0)``, ``.to("cuda")``, ``device="cuda"``, ``torch.device("cuda")`` and
        ``torch.device("cuda:0")`` that are not under a CUDA-availability check (an enclosing ``if``, an
        early ``if not torch.cuda.is_available(): return``/``pytest.skip``, a ``skipif`` decorator).
        Inside a loop body it also names the per-step copy. A CUDA device whose index is computed
        (``torch.device("cuda", local_rank)``, ``f"cuda:{local_rank}"``, ``.cuda(rank)``) is the
        canonical torchrun/DDP placement of one process per GPU, not hard-coding, and is not flagged;
        nor is a comparison such as ``dev == torch.device("cuda")``.

    Why is this bad:
        The code crashes on machines without a GPU (CPU CI, laptops, Apple silicon), cannot be
        placed on a second GPU, and mixes device policy into computation. ``.cuda()`` on every
        loop step is a synchronous host-to-device copy per step unless the source is pinned and the
        copy is ``non_blocking``.

    Example:
        for x in loader:
            x = x.cuda()

    Use instead:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        for x in loader:
            x = x.to(device, non_blocking=True)   # DataLoader(pin_memory=True)
    """

    code = "TR402"
    title = "Hard-coded CUDA device"
    category = "device-handling"
    severity = {"research": "low", "production": "medium"}
    VALID = [
        "import torch\ndevice = torch.device('cuda' if torch.cuda.is_available() else 'cpu')\nx = torch.ones(3, device=device)\n",
        "import torch\ndef f(x, device):\n    return x.to(device)\n",
        "import torch\ndef f(x):\n    if torch.cuda.is_available():\n        x = x.cuda()\n    return x\n",
        "def f(t, device):\n    return t.cuda(device)\n",
        "import os\nimport torch\nimport torch.distributed as dist\ndef setup():\n    dist.init_process_group('nccl')\n"
        "    local_rank = int(os.environ['LOCAL_RANK'])\n    torch.cuda.set_device(local_rank)\n"
        "    return torch.device('cuda', local_rank)\n",
        "import os\nimport torch\ndev = torch.device('cuda', int(os.environ['LOCAL_RANK']))\n",
        "import torch\ndef setup(rank):\n    return torch.device(f'cuda:{rank}')\n",
        "import torch\ndef on_gpu(m):\n    return next(m.parameters()).device == torch.device('cuda')\n",
        "import torch\ndef test_gpu(x):\n    if not torch.cuda.is_available():\n        return\n    y = x.to('cuda')\n",
        "import pytest\nimport torch\n@pytest.mark.skipif(not torch.cuda.is_available(), reason='gpu')\n"
        "def test_gpu(x):\n    return x.cuda()\n",
        "class D:\n    def __init__(self, x, use_gpu=False):\n        self.x = x\n        if use_gpu:\n"
        "            self.x = x.cuda()\n",
    ]
    INVALID = [
        Invalid("import torch\ndef step(model, batch):\n    for x in batch:\n        x = x.cuda()\n        model(x)\n", line=4),
        Invalid("import torch\nx = torch.zeros(3, device='cuda')\n", line=2),
        Invalid("import torch\ndev = torch.device('cuda:0')\n", line=2),
        Invalid("def f(x):\n    return x.to('cuda')\n", line=2),
        Invalid("import torch\nimport torch.distributed as dist\ndist.init_process_group('nccl')\n"
                "device = torch.device('cuda', 0)\n", line=4),
        Invalid("import torch\ndef f(model):\n    if model.training:\n        return\n    return model.cuda()\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        what = self._hardcoded(node)
        if what is None or under_cuda_guard(self, node):
            return
        in_loop = in_loop_body(self, node)
        problem = f"`{self.code_for(node)}` hard-codes the CUDA device ({what})."
        impact = "It fails on machines without a GPU and cannot target another device without editing the code."
        if in_loop:
            problem += " It runs on every loop step: one host-to-device copy per step."
            impact += (" The per-step copy is synchronous unless the source is pinned and the copy is "
                       "non_blocking, so the GPU waits for the host every step.")
        fix = Fix(before=self.code_for(node),
                  after="device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')  # once\n"
                        + ("x = x.to(device, non_blocking=True)" if in_loop else "... .to(device) / device=device"))
        self.report(node, problem, impact, fix,
                    category="device-handling", evidence={"in_loop": in_loop})

    def _hardcoded(self, node: cst.Call) -> Optional[str]:
        meth = is_method_call(self, node, {"cuda", "to"})
        if meth == "cuda":
            pos = positional(node)
            if not pos and kwarg(node, "device") is None:
                return "`.cuda()` with no device"
            if pos and isinstance(pos[0].value, cst.Integer):
                return f"`.cuda({pos[0].value.value})`"
            return None
        if meth == "to":
            for a in node.args:
                if (a.keyword is None or a.keyword.value == "device") and _cuda_string(a.value):
                    return f"`.to({_cuda_string(a.value)!r})`"
            return None
        fname = torch_function(self, node)
        if fname == "device":
            pos = positional(node)
            kind = pos[0].value if pos else (kwarg(node, "type").value if kwarg(node, "type") else None)
            index = pos[1].value if len(pos) > 1 else (kwarg(node, "index").value if kwarg(node, "index") else None)
            if kind is None or not _cuda_string(kind) or (index is not None and not isinstance(index, cst.Integer)):
                return None  # torch.device("cuda", local_rank): the process's device, chosen at run time
            if isinstance(self.parent(node), (cst.ComparisonTarget, cst.Comparison)):
                return None  # dev == torch.device("cuda") tests the device, it does not place anything
            shown = _cuda_string(kind) + (f":{index.value}" if index is not None else "")
            return f"`torch.device({shown!r})`"
        dev = kwarg(node, "device")
        if dev is not None and _cuda_string(dev.value) and fname is not None:
            return f"`device={_cuda_string(dev.value)!r}`"
        return None
