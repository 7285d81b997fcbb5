from __future__ import annotations

from typing import Optional

import libcst as cst

from ._bindings import instance_class, reaching_value
from ._context import bound_values, module_kind
from ._flow import const_int
from ._torch import enclosing_function, kwarg, method_call, positional, torch_function
from .base import Invalid, Rule


class NormalizeOverBatch(Rule):
    """Embeddings are L2-normalised over dim 0, the batch, instead of over their features.

    What it does:
        Flags ``F.normalize(h, dim=0)`` (also ``torch.nn.functional.normalize(h, p=2, dim=0)``) when ``h`` is
        the output of a network call (an ``nn.Module`` of torch or of this document, ``self.head(x)``,
        ``model(x)``), directly or through one name, whose outputs are batch-first. Normalising parameters
        (``F.normalize(self.weight, dim=0)``), plain tensors and 1-D vectors the code builds itself is not
        flagged.

    Why is this bad:
        ``dim=0`` divides each feature column by its norm over the examples of the batch: the rows are not
        unit vectors, cosine similarities are not cosines, and an example's embedding depends on which other
        examples share its batch (evaluation with another batch size gives other embeddings). Contrastive
        losses train on it without error.

    Example:
        txt = F.normalize(self.txt_proj(x), dim=0)

    Use instead:
        txt = F.normalize(self.txt_proj(x), dim=-1)
    """

    code = "TR625"
    title = "Embeddings L2-normalised over the batch dimension"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    autofix = True
    VALID = [
        "import torch.nn as nn\nimport torch.nn.functional as F\nclass M(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.proj = nn.Linear(8, 4)\n    def forward(self, x):\n"
        "        return F.normalize(self.proj(x), dim=-1)\n",
        "import torch.nn as nn\nimport torch.nn.functional as F\nclass Cos(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.weight = nn.Parameter(torch.randn(8, 4))\n    def forward(self, x):\n"
        "        return x @ F.normalize(self.weight, dim=0)\n",
        "import torch.nn.functional as F\ndef unit(v):\n    return F.normalize(v, dim=0)\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\nimport torch.nn.functional as F\nclass M(nn.Module):\n    def __init__(self):\n"
                "        super().__init__()\n        self.proj = nn.Linear(8, 4)\n    def forward(self, x):\n"
                "        return F.normalize(self.proj(x), dim=0)\n", line=8,
                expected_fix="import torch.nn as nn\nimport torch.nn.functional as F\nclass M(nn.Module):\n"
                "    def __init__(self):\n        super().__init__()\n        self.proj = nn.Linear(8, 4)\n"
                "    def forward(self, x):\n        return F.normalize(self.proj(x), dim=-1)\n"),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if torch_function(self, node) != "nn.functional.normalize" or not positional(node):
            return
        dim = kwarg(node, "dim") or (positional(node)[2] if len(positional(node)) > 2 else None)
        if dim is None or const_int(dim.value) != 0:
            return
        fn = enclosing_function(self, node)
        net = self._network(fn, positional(node)[0].value, node)
        if net is None:
            return
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` normalises the output of `{net}` over dim 0, its batch dimension: "
                     "each feature column gets unit norm over the examples, not each example over its features."),
            impact=("Rows are not unit vectors and an example's embedding depends on the rest of its batch: cosine "
                    "similarities, retrieval and contrastive losses are computed on wrong numbers, without error."),
            replacement=node.with_changes(args=[a.with_changes(value=cst.UnaryOperation(
                cst.Minus(), cst.Integer("1"))) if a is dim else a for a in node.args]),
        )

    def _network(self, fn, expr, use, depth: int = 0) -> Optional[str]:
        """The code of the network whose output ``expr`` is, through one name and shape-keeping methods."""
        while isinstance(expr, cst.Call) and (method_call(expr) or (None, ""))[1] in ("float", "squeeze", "contiguous"):
            expr = method_call(expr)[0]
        if isinstance(expr, cst.Name) and depth < 2:
            v = reaching_value(self, fn, expr.value, use)
            return self._network(fn, v, use, depth + 1) if v is not None else None
        if not isinstance(expr, cst.Call) or torch_function(self, expr) is not None or method_call(expr) and \
                not isinstance(expr.func.value, (cst.Name, cst.Attribute)):
            return None
        if instance_class(self, fn, expr.func) is not None or any(
                module_kind(self, fn, v) == "module" for v in bound_values(self, fn, expr.func)):
            return self.code_for(expr.func)
        return None
