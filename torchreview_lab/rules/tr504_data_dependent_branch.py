from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._context import graph_function, graph_where
from ._knowledge import DATA_DEPENDENT_FUNCTIONS, DATA_DEPENDENT_METHODS
from ._torch import is_method_call, torch_function, walk
from .base import Invalid, Rule


class DataDependentBranch(Rule):
    """Python control flow on a tensor's value inside ``forward`` or a compiled function.

    What it does:
        Flags ``if``/``while``/conditional expressions in ``forward`` (or a ``torch.compile`` /
        ``torch.jit.script`` function) whose test reads tensor values: ``h.mean() > 0``,
        ``mask.any()``, ``torch.isnan(x).any()``. Shape and flag checks (``x.dim() != 3``,
        ``self.training``, ``mask is None``) are not flagged.

    Why is this bad:
        Python must know the boolean, so the value is copied to the host (a sync on CUDA) on every
        call, and ``torch.compile`` breaks the graph at the branch (or guards and recompiles). The
        branch is also invisible to autograd and to export.

    Example:
        if h.mean() > 0:
            h = h * 2

    Use instead:
        h = torch.where(h.mean() > 0, h * 2, h)   # both branches as tensor ops, no host sync
    """

    code = "TR504"
    title = "Data-dependent branch on a tensor value"
    category = "performance-patterns"
    severity = {"research": "low", "production": "low"}
    VALID = [
        "import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x, mask=None):\n        if x.dim() != 3 or mask is None:\n            raise ValueError('bad')\n        if self.training:\n            x = x * 2\n        return x\n",
        "def check(h):\n    if h.mean() > 0:\n        return 1\n    return 0\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        if x.shape[0] > 1 and len(self.layers) > 0:\n            return x\n        return x\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\nclass B(nn.Module):\n    def forward(self, x):\n        h = self.lin(x)\n        if h.mean() > 0:\n            h = h * 2\n        return h\n", line=5),
        Invalid("import torch\n@torch.compile\ndef f(x):\n    while torch.isnan(x).any():\n        x = x.nan_to_num()\n    return x\n", line=4),
    ]

    def visit_If(self, node: cst.If) -> None:
        self._check(node, node.test, "if")

    def visit_While(self, node: cst.While) -> None:
        self._check(node, node.test, "while")

    def visit_IfExp(self, node: cst.IfExp) -> None:
        self._check(node, node.test, "conditional expression")

    def _check(self, node: cst.CSTNode, test: cst.BaseExpression, kind: str) -> None:
        fn = graph_function(self, node)
        if fn is None:
            return
        op = self._value_read(test)
        if op is None:
            return
        self.report(
            test,
            problem=(f"The `{kind}` in {graph_where(self, fn)} branches on a tensor value "
                     f"(`{self.code_for(test)}`, via `{op}`)."),
            impact=("Python needs the boolean: a host sync per call on CUDA, and a torch.compile graph break "
                    "(or a guard and recompile) at this branch."),
            fix=Fix(before=f"if {self.code_for(test)}:\n    h = ...",
                    after=f"h = torch.where({self.code_for(test)}, <then>, <else>)  # tensor ops, no host sync"),
        )

    def _value_read(self, test: cst.BaseExpression) -> Optional[str]:
        for n in walk(test, cst.Call):
            meth = is_method_call(self, n, DATA_DEPENDENT_METHODS)
            if meth and not self._on_python_value(n):
                return f".{meth}()"
            fname = torch_function(self, n)
            if fname in DATA_DEPENDENT_FUNCTIONS:
                return f"torch.{fname}"
        return None

    def _on_python_value(self, call: cst.Call) -> bool:
        # ``x.shape[0].bit_length()``-style calls on sizes, ``len(...).…``, string methods
        recv = call.func.value
        text = self.code_for(recv)
        return ".shape" in text or ".size(" in text or isinstance(recv, (cst.SimpleString, cst.List, cst.Tuple))
