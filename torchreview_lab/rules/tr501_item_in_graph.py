from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import graph_function, graph_where
from ._torch import in_raise, in_loop_body, is_method_call
from .base import Invalid, Rule

_METHODS = {"item": "a Python number", "tolist": "Python lists"}


class ItemInGraph(Rule):
    """``.item()`` / ``.tolist()`` inside ``forward`` or a compiled function.

    What it does:
        Flags ``.item()`` and ``.tolist()`` in the ``forward`` of an ``nn.Module`` subclass and in
        functions compiled with ``torch.compile`` / ``torch.jit.script``.

    Why is this bad:
        The value must be copied to the host: on CUDA the host waits for every queued kernel (a
        sync per forward call). Under ``torch.compile`` it is a graph break: the graph is split in
        two, the Python value specialises (recompiles) or falls back to eager, and the result no
        longer carries gradients.

    Example:
        def forward(self, x):
            h = self.lin(x)
            scale = h.norm().item()
            return h / scale

    Use instead:
        def forward(self, x):
            h = self.lin(x)
            return h / h.norm()      # stays a 0-dim tensor on the device, in the graph
    """

    code = "TR501"
    title = "Host sync and graph break: .item()/.tolist() in forward"
    category = "performance-patterns"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\nclass M(torch.nn.Module):\n    def forward(self, t):\n        if t.min() < 0:\n"
        "            raise ValueError(f\"targets must be >= 0, got {t.min().item()}\")\n        return t\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        h = self.lin(x)\n        return h / h.norm()\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def extra_repr(self):\n        return str(self.w.item())\n",
        "def report(x):\n    return x.item()\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        s = x.norm().item()\n        return x / s\n", line=4),
        Invalid("import torch\n@torch.compile\ndef f(x):\n    return x * x.sum().item()\n", line=4),
        Invalid("from torch import nn\nclass M(nn.Linear):\n    def forward(self, x):\n        return x[: x.argmax().tolist()]\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        meth = is_method_call(self, node, _METHODS)
        if meth is None:
            return
        fn = graph_function(self, node)
        if fn is None:
            return
        if in_raise(self, node):
            return  # only evaluated to build an error message
        loop = " It runs inside a loop: one sync per iteration." if in_loop_body(self, node) else ""
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` in {graph_where(self, fn)} converts a tensor into "
                     f"{_METHODS[meth]}.{loop}"),
            impact=("On CUDA the host blocks until the GPU queue drains (a sync per call); under torch.compile "
                    "it is a graph break (split graph, recompiles on new values) and the value leaves autograd."),
            fix=Fix(before=self.code_for(node),
                    after=f"{self.code_for(node.func.value)}  # keep it a tensor on the device"),
        )
