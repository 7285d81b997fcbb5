from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._activations import sigmoid_output
from ._context import bound_values
from ._flow import in_no_grad
from ._knowledge import BCE_FUNCTIONS, BCE_MODULES
from ._torch import enclosing_function, kwarg, positional, torch_function, with_arg_value
from .base import Invalid, Rule


class SigmoidThenBCELoss(Rule):
    """``BCELoss`` applied to a ``sigmoid`` output instead of ``BCEWithLogitsLoss`` on the logits.

    What it does:
        Flags ``F.binary_cross_entropy(torch.sigmoid(z), y)``, ``nn.BCELoss()(z.sigmoid(), y)`` and
        ``crit = nn.BCELoss(); p = torch.sigmoid(model(x)); crit(p, y)`` (the probability and the
        criterion followed through assignments in the same function, class or notebook), also
        when ``p`` comes from an ``nn.Sigmoid()`` module, an ``nn.Sequential`` ending in one, or a
        model of a class in the same file whose ``forward`` returns a sigmoid on every path. Losses
        computed under ``no_grad`` (evaluation) are not flagged. The inline functional and module
        forms are rewritten to the ``_with_logits`` versions.

    Why is this bad:
        In float32 ``sigmoid(z)`` rounds to exactly 1.0 for z > ~17 (float16: ~8) and to tiny
        values or 0 far below zero; ``BCELoss`` then clamps ``log`` at -100, so a confidently wrong
        prediction contributes a capped loss and a zero or wrong gradient: learning stalls on
        the examples that matter most. ``BCEWithLogitsLoss`` computes the same loss from the
        logits with the log-sum-exp trick, exactly over the whole range, in one kernel, and also
        takes ``pos_weight`` for imbalanced labels.

    Example:
        loss = F.binary_cross_entropy(torch.sigmoid(logits), y)

    Use instead:
        loss = F.binary_cross_entropy_with_logits(logits, y)
        # or nn.BCEWithLogitsLoss(pos_weight=...)(logits, y); apply sigmoid only for predictions
    """

    code = "TR210"
    title = "sigmoid followed by BCELoss instead of BCEWithLogitsLoss"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    autofix = True
    VALID = [
        "import torch.nn.functional as F\ndef f(z, y):\n    return F.binary_cross_entropy_with_logits(z, y)\n",
        "import torch.nn as nn\ndef f(p, y):\n    return nn.BCELoss()(p, y)\n",
        "import torch\nimport torch.nn as nn\ndef f(model, x, y):\n    crit = nn.BCELoss()\n    p = torch.sigmoid(model(x))\n"
        "    preds = (p > 0.5).float()\n    return crit(preds.clamp(1e-6, 1 - 1e-6), y)\n",
        "import torch\nimport torch.nn.functional as F\ndef f(z, y):\n    return F.mse_loss(torch.sigmoid(z), y)\n",
        "import torch\nimport torch.nn.functional as F\ndef ev(z, y):\n    with torch.no_grad():\n        return F.binary_cross_entropy(z.sigmoid(), y)\n",
    ]
    INVALID = [
        Invalid("import torch\nimport torch.nn.functional as F\ndef f(z, y):\n    return F.binary_cross_entropy(torch.sigmoid(z), y, reduction='sum')\n",
                line=4, expected_fix="import torch\nimport torch.nn.functional as F\ndef f(z, y):\n"
                                     "    return F.binary_cross_entropy_with_logits(z, y, reduction='sum')\n"),
        Invalid("import torch.nn as nn\ndef f(z, y, w):\n    return nn.BCELoss(weight=w)(z.sigmoid(), y)\n", line=3,
                expected_fix="import torch.nn as nn\ndef f(z, y, w):\n    return nn.BCEWithLogitsLoss(weight=w)(z, y)\n"),
        Invalid("import torch as th\nfrom torch import nn\ncrit = nn.BCELoss()\ndef step(model, x, y):\n"
                "    p = th.sigmoid(model(x)).squeeze(1)\n    return crit(p, y)\n", line=6),
        Invalid("import torch\nimport torch.nn.functional as F\ndef f(z, y):\n    return F.binary_cross_entropy(torch.sigmoid(z + 1).view(-1), y)\n",
                line=4, expected_fix="import torch\nimport torch.nn.functional as F\ndef f(z, y):\n"
                                     "    return F.binary_cross_entropy_with_logits((z + 1).view(-1), y)\n"),
        Invalid("import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.fc = nn.Linear(4, 1)\n        self.act = nn.Sigmoid()\n        self.crit = nn.BCELoss()\n    def loss(self, x, y):\n"
                "        return self.crit(self.act(self.fc(x)), y)\n", line=9),
        Invalid("import torch\nfrom torch import nn\nclass Net(nn.Module):\n    def forward(self, x):\n        return torch.sigmoid(self.fc(x))\n"
                "model = Net().to('cuda')\ncriterion = nn.BCELoss()\nfor x, y in loader:\n    loss = criterion(model(x), y)\n", line=9),
        Invalid("import torch.nn as nn\nnet = nn.Sequential(nn.Linear(8, 1), nn.Sigmoid())\nloss_fn = nn.BCELoss()\n"
                "loss = loss_fn(net(x), y)\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        kind = self._bce_kind(node)
        pos = positional(node)
        inp = (pos[0] if pos else kwarg(node, "input")) if kind else None
        if inp is None or in_no_grad(self, node):
            return  # evaluation: the capped loss value matters less than the training gradients flagged elsewhere
        found = sigmoid_output(self, enclosing_function(self, node), inp.value)
        if found is None:
            return
        how, logits, inline = found
        fixed = with_arg_value(node, inp, logits) if logits is not None else node
        if kind == "function" and isinstance(node.func, cst.Attribute):
            fixed = fixed.with_changes(func=node.func.with_changes(attr=cst.Name("binary_cross_entropy_with_logits")))
        elif kind == "inline-module" and isinstance(node.func.func, cst.Attribute):
            fixed = fixed.with_changes(func=node.func.with_changes(
                func=node.func.func.with_changes(attr=cst.Name("BCEWithLogitsLoss"))))
        safe = inline and logits is not None and fixed.func is not node.func
        after = self.code_for(fixed) if fixed.func is not node.func else (
            f"{self.code_for(fixed)}  # with {self.code_for(node.func)} = nn.BCEWithLogitsLoss()" if kind == "criterion"
            else f"F.binary_cross_entropy_with_logits({self.code_for(logits) if logits is not None else 'logits'}, ...)")
        if logits is None:
            after += "  # on the logits: drop the model's final sigmoid, apply it only for predictions"
        self.report(
            node,
            problem=f"`{self.code_for(node)}` computes binary cross-entropy on {how}, not on the logits.",
            impact=("sigmoid rounds to exactly 1.0 above z ~ 17 in float32 (~8 in float16) and BCELoss clamps log at -100: "
                    "confidently wrong predictions get a capped loss and vanishing or wrong gradients."),
            fix=Fix(before=self.code_for(node), after=after),
            replacement=fixed if safe else None,
        )

    def _bce_kind(self, node: cst.Call) -> Optional[str]:
        if torch_function(self, node) in BCE_FUNCTIONS:
            return "function"
        if isinstance(node.func, cst.Call) and torch_function(self, node.func) in BCE_MODULES:
            return "inline-module"
        if isinstance(node.func, cst.Name) or isinstance(node.func, cst.Attribute) and \
                isinstance(node.func.value, cst.Name) and node.func.value.value == "self":
            vals = bound_values(self, enclosing_function(self, node), node.func)
            if vals and all(isinstance(v, cst.Call) and torch_function(self, v) in BCE_MODULES for v in vals):
                return "criterion"  # crit = nn.BCELoss(); self.criterion = nn.BCELoss()
        return None
