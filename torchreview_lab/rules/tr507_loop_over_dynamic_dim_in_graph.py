from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import graph_function
from ._torch import function_facts, method_call, range_args
from .base import Invalid, Rule


class LoopOverDynamicDimInGraph(Rule):
    """A Python loop over a tensor's length inside ``forward`` or a compiled function.

    What it does:
        Flags ``for i in range(len(x))``, ``range(x.shape[d])`` and ``range(x.size(d))`` where ``x``
        is a tensor input of an ``nn.Module.forward`` or a ``torch.compile``/``jit.script``
        function.

    Why is this bad:
        ``torch.compile`` traces Python loops by unrolling them: the graph has one copy of the
        body per element, compilation time grows with the length, and every new length
        triggers a recompilation (or falls back to eager after the recompile limit). In eager
        mode the loop launches the body's kernels once per element.

    Example:
        def forward(self, x):
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)

    Use instead:
        Vectorize over the dimension; for true recurrences over long T use a scan
        (``torch._higher_order_ops.scan``), a fused kernel, or keep the loop outside the compiled
        region.
    """

    code = "TR507"
    title = "Python loop over a tensor dimension inside forward/compiled code"
    category = "performance-patterns"
    severity = {"research": "low", "production": "medium"}
    VALID = [
        "import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return x.cumsum(1)\n",
        "def f(x):\n    out = 0\n    for i in range(x.shape[0]):\n        out = out + x[i]\n    return out\n",
        "import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        for layer in self.layers:\n            x = layer(x)\n        return x\n",
    ]
    INVALID = [
        Invalid("import torch\nclass RNN(torch.nn.Module):\n    def forward(self, x, h):\n        for t in range(x.shape[1]):\n"
                "            h = self.cell(x[:, t], h)\n        return h\n", line=4),
        Invalid("import torch\n@torch.compile\ndef f(x):\n    acc = x[0]\n    for i in range(len(x)):\n        acc = acc * x[i]\n    return acc\n", line=5),
    ]

    def visit_For(self, node: cst.For) -> None:
        args = range_args(node)
        if not args:
            return
        fn = graph_function(self, node)
        if fn is None:
            return
        facts = function_facts(self, fn)
        tensors = facts.derived | (set(facts.params) - {"self", "cls"})  # graph inputs are tensors
        stop = args[0] if len(args) == 1 else args[1]
        target = self._tensor_of_length(stop)
        if target is None or target not in tensors:
            return
        self.report(
            node.iter,
            problem=(f"`for {self.code_for(node.target)} in {self.code_for(node.iter)}` loops in Python over a "
                     f"dimension of `{target}` inside `{fn.name.value}`, which is traced into a graph."),
            impact=("torch.compile unrolls the loop (one body copy per element, compile time grows with the length) "
                    "and recompiles for every new length; eagerly it launches the body's kernels once per element."),
            fix=Fix(before=self.code_for(node.iter),
                    after="# vectorize over the dimension, or use a scan / keep this loop outside the compiled region"),
        )

    def _tensor_of_length(self, expr: cst.BaseExpression):
        if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name) and expr.func.value == "len" and expr.args:
            v = expr.args[0].value
            return v.value if isinstance(v, cst.Name) else None
        if isinstance(expr, cst.Subscript) and isinstance(expr.value, cst.Attribute) and expr.value.attr.value == "shape":
            v = expr.value.value
            return v.value if isinstance(v, cst.Name) else None
        if isinstance(expr, cst.Call):
            mc = method_call(expr)
            if mc and mc[1] == "size" and isinstance(mc[0], cst.Name):
                return mc[0].value
        return None
