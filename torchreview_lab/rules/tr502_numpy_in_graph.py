from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._context import graph_function, graph_where
from ._torch import is_method_call, torch_function
from .base import Invalid, Rule

_BACK = frozenset({"from_numpy", "tensor", "as_tensor", "asarray"})


class NumpyRoundTripInGraph(Rule):
    """A NumPy round trip inside ``forward`` or a compiled function.

    What it does:
        Flags ``.numpy()`` in the ``forward`` of an ``nn.Module`` subclass or in a
        ``torch.compile``/``torch.jit.script`` function, and names the round trip when the array
        goes back into a tensor (``torch.from_numpy(h.detach().numpy())``).

    Why is this bad:
        ``.numpy()`` copies to the host (a sync on CUDA, and it raises for CUDA tensors unless
        ``.cpu()`` comes first), breaks the ``torch.compile`` graph, and cuts autograd: the tensor
        rebuilt from the array has no history, so no gradient reaches anything before it, and it
        lands on the CPU whatever device the input was on.

    Example:
        return h + torch.from_numpy(h.detach().numpy())

    Use instead:
        return h + h.detach()      # or the torch equivalent of the NumPy operation
    """

    code = "TR502"
    title = "NumPy round trip in forward"
    category = "performance-patterns"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\nclass M(torch.nn.Module):\n    def forward(self, h):\n        return h + h.detach()\n",
        "import torch\ndef to_array(h):\n    return h.detach().cpu().numpy()\n",
    ]
    INVALID = [
        Invalid("import torch\nimport torch.nn as nn\nclass B(nn.Module):\n    def forward(self, h):\n        return h + torch.from_numpy(h.detach().numpy())\n", line=5),
        Invalid("import torch\n@torch.compile\ndef f(x):\n    a = x.cpu().numpy()\n    return a.sum()\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if is_method_call(self, node, {"numpy"}) is None:
            return
        fn = graph_function(self, node)
        if fn is None:
            return
        back = self._converted_back(node)
        problem = f"`{self.code_for(node)}` in {graph_where(self, fn)} copies the tensor to a NumPy array"
        if back:
            problem += f" and `torch.{back}` turns it back into a tensor: a round trip through the host."
        else:
            problem += "."
        self.report(
            node,
            problem=problem,
            impact=("A host copy and sync on every call, a torch.compile graph break, and no gradient through "
                    "the array: the rebuilt tensor has no autograd history and lives on the CPU."),
            fix=Fix(before=self.code_for(node), after="# do the computation with torch ops on the tensor itself"),
        )

    def _converted_back(self, node: cst.Call) -> Optional[str]:
        for a in self.ancestors(node):
            if isinstance(a, (cst.FunctionDef, cst.SimpleStatementLine)):
                return None
            if isinstance(a, cst.Call):
                fname = torch_function(self, a)
                if fname in _BACK:
                    return fname
        return None
