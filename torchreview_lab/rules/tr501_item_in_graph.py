from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value
from ._context import graph_function, graph_where
from ._knowledge import DATA_DEPENDENT_FUNCTIONS, DATA_DEPENDENT_METHODS
from ._torch import in_raise, in_loop_body, is_method_call, method_call, torch_function
from .base import Invalid, Rule

_METHODS = {"item": "a Python number", "tolist": "Python lists"}
_CONVERSIONS = {"builtins.int": "int", "builtins.float": "float", "builtins.bool": "bool"}


class ItemInGraph(Rule):
    """``.item()`` / ``.tolist()`` / ``int(t)`` inside ``forward`` or a compiled function.

    What it does:
        Flags ``.item()`` and ``.tolist()`` in the ``forward`` of an ``nn.Module`` subclass and in
        functions compiled with ``torch.compile`` / ``torch.jit.script``, and ``int(...)``,
        ``float(...)``, ``bool(...)`` of a tensor reduction there (``int(mask.sum())``,
        ``float(h.abs().max())``): the same conversion spelled as a builtin. Sizes
        (``int(x.size(0))``, ``float(x.shape[-1])``) are Python numbers already and are not flagged.

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
    title = "Host sync and graph break: tensor read as a Python value in forward"
    category = "performance-patterns"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\nclass M(torch.nn.Module):\n    def forward(self, t):\n        if t.min() < 0:\n"
        "            raise ValueError(f\"targets must be >= 0, got {t.min().item()}\")\n        return t\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        h = self.lin(x)\n        return h / h.norm()\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def extra_repr(self):\n        return str(self.w.item())\n",
        "def report(x):\n    return x.item()\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        d = float(x.size(-1))\n"
        "        n = int(x.shape[0] ** 0.5)\n        return x / d ** 0.5 + n\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        if bool(x.isnan().any()):\n"
        "            x = x.nan_to_num()\n        return x\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        s = x.norm().item()\n        return x / s\n", line=4),
        Invalid("import torch\n@torch.compile\ndef f(x):\n    return x * x.sum().item()\n", line=4),
        Invalid("from torch import nn\nclass M(nn.Linear):\n    def forward(self, x):\n        return x[: x.argmax().tolist()]\n", line=4),
        Invalid("import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, h, mask):\n        n = int(mask.sum())\n"
                "        return h[:, :n]\n", line=4),
        Invalid("import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def forward(self, h):\n        m = h.abs().max()\n"
                "        scale = float(m)\n        return h / scale\n", line=6),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        meth = is_method_call(self, node, _METHODS)
        if meth is None:
            self._conversion(node)
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

    def _conversion(self, node: cst.Call) -> None:
        conv = next((_CONVERSIONS[q] for q in self.qnames(node.func) if q in _CONVERSIONS), None)
        if conv is None or len(node.args) != 1 or node.args[0].keyword is not None:
            return
        fn = graph_function(self, node)
        if fn is None or in_raise(self, node) or self._tested(node):
            return
        op = self._reduction(fn, node.args[0].value, node)
        if op is None:
            return
        arg = self.code_for(node.args[0].value)
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` in {graph_where(self, fn)} turns a tensor (via `{op}`) into a "
                     f"Python {conv}: the same as `.item()`."),
            impact=("On CUDA the host blocks until the GPU queue drains (a sync per call); under torch.compile "
                    "it is a graph break (split graph, recompiles on new values) and the value leaves autograd."),
            fix=Fix(before=self.code_for(node), after=f"{arg}  # keep it a 0-dim tensor on the device"),
        )

    def _tested(self, node: cst.Call) -> bool:
        """``bool(t)`` as an ``if``/``while`` test: TR504 reports the branch."""
        parent = self.parent(node)
        return isinstance(parent, (cst.If, cst.While, cst.IfExp)) and getattr(parent, "test", None) is node

    def _reduction(self, fn, expr: cst.BaseExpression, at: cst.CSTNode, depth: int = 0):
        """The tensor reduction ``expr`` is (``.sum()``, ``torch.max(x)``), through a name's one binding."""
        if isinstance(expr, cst.Name) and depth < 4:
            v = reaching_value(self, fn, expr.value, at)
            return self._reduction(fn, v, at, depth + 1) if v is not None else None
        if not isinstance(expr, cst.Call):
            return None
        tf = torch_function(self, expr)
        if tf in DATA_DEPENDENT_FUNCTIONS:
            return f"torch.{tf}"
        mc = method_call(expr)
        if mc is None or mc[1] not in DATA_DEPENDENT_METHODS or mc[1] == "item":
            return None
        recv = self.code_for(mc[0])
        if ".shape" in recv or ".size(" in recv or recv.startswith(("np.", "numpy.", "math.")):
            return None
        return f".{mc[1]}()"
