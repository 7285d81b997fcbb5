from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import enclosing_function, kwarg, last_part, method_call, positional, torch_function, walk, walk_own
from .base import Invalid, Rule


class DdpRankNotBoundToGpu(Rule):
    """A DDP script reads its local rank but never uses it to pick the GPU.

    What it does:
        Flags ``DistributedDataParallel(model)`` without ``device_ids`` in a document that reads the local rank
        (``int(os.environ["LOCAL_RANK"])``, ``args.local_rank``) into a name that is never read again, and never
        calls ``torch.cuda.set_device``, nor builds a device from the rank. A launcher that gives each process
        one visible GPU needs no local rank at all; reading it and dropping it is the sign of the bug.

    Why is this bad:
        Without ``set_device(local_rank)`` every process's ``.cuda()`` / ``device="cuda"`` means ``cuda:0``:
        all ranks put their replica and batches on the first GPU, which runs out of memory (or NCCL fails
        with "Duplicate GPU detected") while the other GPUs idle.

    Example:
        local_rank = int(os.environ["LOCAL_RANK"])
        model = DDP(model.cuda())

    Use instead:
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        model = DDP(model.cuda(), device_ids=[local_rank])
    """

    code = "TR407"
    title = "DDP process never bound to its local GPU"
    category = "device-handling"
    severity = {"research": "critical", "production": "critical"}
    VALID = [
        "import os, torch\nfrom torch.nn.parallel import DistributedDataParallel as DDP\ndef main(model):\n"
        "    local_rank = int(os.environ['LOCAL_RANK'])\n    torch.cuda.set_device(local_rank)\n    return DDP(model.cuda())\n",
        "import os\nfrom torch.nn.parallel import DistributedDataParallel as DDP\ndef main(model):\n"
        "    local_rank = int(os.environ['LOCAL_RANK'])\n    return DDP(model.to(local_rank), device_ids=[local_rank])\n",
        "from torch.nn.parallel import DistributedDataParallel as DDP\ndef main(model):\n    return DDP(model.cuda())\n",
        "import os\nfrom torch.nn.parallel import DistributedDataParallel as DDP\ndef main(model):\n"
        "    local_rank = int(os.environ['LOCAL_RANK'])\n    device = f'cuda:{local_rank}'\n    return DDP(model.to(device))\n",
    ]
    INVALID = [
        Invalid("import os\nimport torch.distributed as dist\nfrom torch.nn.parallel import DistributedDataParallel as DDP\n"
                "def main(model):\n    dist.init_process_group(backend='nccl')\n    local_rank = int(os.environ['LOCAL_RANK'])\n"
                "    model = model.cuda()\n    return DDP(model)\n", line=8),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        if last_part(tf) != "DistributedDataParallel" or kwarg(node, "device_ids") is not None or len(positional(node)) > 1:
            return
        if any(last_part(torch_function(self, c)) == "set_device" or (method_call(c) or (None, ""))[1] == "set_device"
               for c in walk(self.ctx.module, cst.Call)):
            return
        dropped = self._dropped_local_rank(enclosing_function(self, node) or self.ctx.module)
        if dropped is None:
            return
        self.report(
            node,
            problem=(f"`{dropped}` is read as the local rank but never used: no `torch.cuda.set_device`, no "
                     f"`device_ids=[{dropped}]` here, so `.cuda()` and `device=\"cuda\"` mean cuda:0 on every rank."),
            impact=("Every process puts its model replica and batches on GPU 0: out of memory or an NCCL "
                    "'Duplicate GPU detected' error, and the other GPUs stay idle."),
            fix=Fix(before=self.code_for(node),
                    after=f"torch.cuda.set_device({dropped})  # before any .cuda()\n"
                          f"{self.code_for(node)[:-1]}, device_ids=[{dropped}])"),
        )

    def _dropped_local_rank(self, scope: cst.CSTNode) -> Optional[str]:
        """The name a local-rank read is assigned to, when that name is never read afterwards."""
        for a in walk_own(scope, cst.Assign):
            text = self.code_for(a.value)
            if "LOCAL_RANK" not in text and "local_rank" not in text or len(a.targets) != 1 \
                    or not isinstance(a.targets[0].target, cst.Name):
                continue
            name = a.targets[0].target.value
            where = walk(scope, cst.Name) if isinstance(scope, cst.Module) else walk_own(scope, cst.Name)  # globals
            reads = [n for n in where if n.value == name and n is not a.targets[0].target]
            if not reads:
                return name
        return None
