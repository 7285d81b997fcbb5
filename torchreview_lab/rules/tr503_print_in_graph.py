from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import graph_function, graph_where
from .base import Invalid, Rule


class PrintInGraph(Rule):
    """``print`` inside ``forward`` or a compiled function.

    What it does:
        Flags ``print(...)`` in the ``forward`` of an ``nn.Module`` subclass and in
        ``torch.compile``/``torch.jit.script`` functions.

    Why is this bad:
        ``print`` is a side effect that ``torch.compile`` cannot trace: a graph break on every
        call. Printing a tensor formats its values, which copies it to the host (a sync on CUDA).
        Output on every forward call also floods logs in training.

    Example:
        def forward(self, x):
            print("scale", x.norm())

    Use instead:
        logger.debug("scale %s", ...)   # outside the hot path, or behind a flag
        # torch._dynamo.config / TORCH_LOGS for compile-time debugging
    """

    code = "TR503"
    title = "print in forward: graph break"
    category = "performance-patterns"
    severity = {"research": "low", "production": "low"}
    VALID = [
        "import torch.nn as nn\nclass M(nn.Module):\n    def extra_repr(self):\n        print('x')\n        return ''\n",
        "def main():\n    print('done')\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        print('x', x.shape)\n        return x\n", line=4),
        Invalid("import torch\n@torch.compile(mode='max-autotune')\ndef f(x):\n    print(x)\n    return x\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if not (isinstance(node.func, cst.Name) and node.func.value == "print"):
            return
        if self.qnames(node.func) - {"builtins.print", "print"}:
            return
        fn = graph_function(self, node)
        if fn is None:
            return
        self.report(
            node,
            problem=f"`print` in {graph_where(self, fn)} runs on every call.",
            impact=("A torch.compile graph break on every call; printing tensor values copies them to the host "
                    "(a sync on CUDA) and floods the logs during training."),
            fix=Fix(before=self.code_for(node), after="logger.debug(...)  # or remove; not in the hot path"),
        )
