from __future__ import annotations

import re

import libcst as cst

from ._context import buffer_values, init_methods, is_module_class, self_attribute_assignments
from ._torch import kwarg, method_call, torch_function, walk_own
from .base import Invalid, Rule

_LEARNABLE = re.compile(r"\b(learnable|learned|learnt|trainable)\b", re.I)


class TrainableTensorNotParameter(Rule):
    """A tensor meant to be trained is stored on an nn.Module without ``nn.Parameter``.

    What it does:
        In ``__init__`` of an ``nn.Module`` subclass, flags ``self.x = torch.randn(..., requires_grad=True)``
        (or ``.requires_grad_()``) and a ``torch.tensor(...)`` attribute that the class's docstring or a
        comment on that line calls learnable/learned/trainable (``self.logit_scale =
        torch.tensor(math.log(1 / 0.07))`` in a "learnable temperature" loss), when neither is wrapped
        in ``nn.Parameter`` nor registered.

    Why is this bad:
        Only ``nn.Parameter`` attributes (and ``register_parameter``) appear in ``model.parameters()``:
        the optimizer built from it never updates this tensor, so the "learned" value stays at its
        initialisation. It is also missing from ``state_dict()`` and ``.to(device)`` leaves it on the
        CPU. Nothing fails.

    Example:
        self.logit_scale = torch.tensor(math.log(1 / 0.07))      # "learnable temperature"

    Use instead:
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    """

    code = "TR312"
    title = "Trainable tensor is not an nn.Parameter"
    category = "gradient-flow"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    \"\"\"Learnable scale.\"\"\"\n    def __init__(self):\n"
        "        super().__init__()\n        self.scale = nn.Parameter(torch.tensor(1.0))\n",
        "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.eps = torch.tensor(1e-6)\n",
        "import torch\nclass Box:\n    def __init__(self):\n        self.w = torch.zeros(3, requires_grad=True)\n",
    ]
    INVALID = [
        Invalid("import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, d):\n        super().__init__()\n"
                "        self.w = torch.randn(d, d, requires_grad=True)\n", line=6),
        Invalid("import math, torch\nimport torch.nn as nn\nclass Clip(nn.Module):\n    \"\"\"InfoNCE with a learnable temperature.\"\"\"\n"
                "    def __init__(self):\n        super().__init__()\n        self.logit_scale = torch.tensor(math.log(1 / 0.07))\n",
                line=7),
    ]

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if not is_module_class(self, node):
            return
        init = init_methods(self, node)
        if not init:
            return
        owned = {id(a) for fn in init for a in walk_own(fn.body, cst.Assign)}
        doc = node.get_docstring() or ""
        registered = set(buffer_values(self, node))
        for attr, pairs in self_attribute_assignments(self, node).items():
            if attr in registered or any(id(stmt) not in owned for _, stmt in pairs) or len(pairs) != 1:
                continue
            value, stmt = pairs[0]
            if not isinstance(value, cst.Call):
                continue
            why = self._trainable(value, stmt, doc)
            if why:
                self.report(
                    stmt,
                    problem=(f"`self.{attr}` in `{node.name.value}` is {why}, but it is a plain tensor, not an "
                             "`nn.Parameter`."),
                    impact=("It is missing from model.parameters(): the optimizer never updates it, so it stays at "
                            "its initial value; state_dict() and .to(device) skip it too."),
                    replacement=stmt.with_changes(value=cst.parse_expression(
                        f"nn.Parameter({self.code_for(value)})")),
                )

    def _trainable(self, value: cst.Call, stmt: cst.CSTNode, doc: str) -> str:
        tf = torch_function(self, value)
        if tf is not None and tf.startswith("nn."):
            return ""
        rg = kwarg(value, "requires_grad")
        if rg is not None and self.code_for(rg.value) == "True" or (method_call(value) or (0, ""))[1] == "requires_grad_":
            return "created with requires_grad=True (meant to be trained)"
        line = self.code_for(self.parent(stmt) or stmt)
        if tf in ("tensor", "as_tensor", "ones", "zeros", "full", "randn", "rand", "empty") and (
                _LEARNABLE.search(line) or _LEARNABLE.search(doc)):
            return "described as learnable"
        return ""
