from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import graph_function, graph_where
from ._graph_terms import logging_call
from .base import Invalid, Rule


class PrintInGraph(Rule):
    """``print`` inside ``forward`` or a compiled function.

    What it does:
        Flags ``print(...)`` in the ``forward`` of an ``nn.Module`` subclass and in
        ``torch.compile``/``torch.jit.script`` functions, and unconditional ``logging`` calls there
        (``logger.debug(...)``, ``logging.info(...)``, ``warnings.warn(...)``): dynamo (torch 2.13) breaks the
        graph on each ("logging.Logger method not supported").

    Why is this bad:
        ``print`` is a side effect that ``torch.compile`` cannot trace: a graph break on every
        call. Printing a tensor formats its values, which copies it to the host (a sync on CUDA).
        Output on every forward call also floods logs in training.

    Example:
        def forward(self, x):
            print("scale", x.norm())

    Use instead:
        log outside the compiled region (in the training loop), or behind a flag that is off in training
        # torch._dynamo.config / TORCH_LOGS for compile-time debugging
    """

    code = "TR503"
    title = "print in forward: graph break"
    category = "performance-patterns"
    severity = {"research": "low", "production": "low"}
    VALID = [
        "import torch.nn as nn\nclass M(nn.Module):\n    def extra_repr(self):\n        print('x')\n        return ''\n",
        "def main():\n    print('done')\n",
        "import logging\nimport torch.nn as nn\nlog = logging.getLogger(__name__)\nclass M(nn.Module):\n"
        "    def forward(self, x):\n        if self.verbose:\n            log.debug('x')\n        return x\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        print('x', x.shape)\n        return x\n", line=4),
        Invalid("import torch\n@torch.compile(mode='max-autotune')\ndef f(x):\n    print(x)\n    return x\n", line=4),
        Invalid("import logging\nimport torch.nn as nn\nlog = logging.getLogger(__name__)\nclass M(nn.Module):\n"
                "    def forward(self, x):\n        log.debug('n=%d', x.shape[0])\n        return x\n", line=6),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if isinstance(node.func, cst.Name) and node.func.value == "print":
            if not self.qnames(node.func) - {"builtins.print", "print"}:
                self._report(node, "print", "logger.debug(...)  # or remove; not in the hot path")
            return
        log = logging_call(self, node) or ("warnings.warn" if self.qnames(node.func) & {"warnings.warn"} else None)
        if log and not any(isinstance(a, (cst.If, cst.IfExp, cst.Try, cst.ExceptHandler, cst.Lambda)) for a in
                           self._own_ancestors(node)):  # only unconditional calls: a branch not taken traces fine
            self._report(node, log, "# log outside the compiled region (in the training loop), or drop it")

    def _own_ancestors(self, node):
        for a in self.ancestors(node):
            if isinstance(a, cst.FunctionDef):
                return
            yield a

    def _report(self, node: cst.Call, what: str, after: str) -> None:
        fn = graph_function(self, node)
        if fn is None:
            return
        printing = what == "print"
        self.report(
            node,
            problem=f"`{what}` in {graph_where(self, fn)} runs on every call.",
            impact=("A torch.compile graph break on every call" + (
                    "; printing tensor values copies them to the host (a sync on CUDA) and floods the logs during "
                    "training." if printing else " (dynamo cannot trace logging/warnings calls: the graph is split "
                    "there and the rest runs as a second graph), plus formatting work in the hot path.")),
            fix=Fix(before=self.code_for(node), after=after),
            title=None if printing else "Logging call in forward: graph break",
        )
