from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import assigned_values, enclosing_function, is_method_call, method_call, positional, torch_function
from .base import Invalid, Rule

# Producers of values in [0, 1] that reach exactly 0 in floating point.
_ZERO_REACHING = frozenset({"softmax", "nn.functional.softmax", "sigmoid", "nn.functional.sigmoid", "special.expit",
                            "nn.functional.gumbel_softmax", "bincount", "nn.functional.relu", "relu"})
_ZERO_REACHING_METHODS = frozenset({"softmax", "sigmoid", "relu"})


class LogOfProbability(Rule):
    """``log`` of a probability (a softmax/sigmoid output or a count) without a floor.

    What it does:
        Flags ``torch.log(p)`` / ``p.log()`` / ``torch.log(1 - p)`` where ``p`` was computed by
        ``softmax``, ``sigmoid``, ``relu`` or ``bincount`` in the same function and no ``clamp``
        or ``+ eps`` keeps it away from 0; and the entropy term ``p * log(p)`` whatever ``p`` is.

    Why is this bad:
        These values reach exactly 0.0 (float32 softmax underflows at ~104 below the maximum,
        sigmoid below ~-88; counts are 0 for empty bins) and ``log(0) = -inf``: the loss becomes
        inf, and the gradient ``1/p`` NaN, which then spreads through the whole model.

    Example:
        p = torch.softmax(logits, -1)
        loss = -(target * torch.log(p)).sum()

    Use instead:
        logp = torch.log_softmax(logits, -1)        # or F.logsigmoid for sigmoid
        # when only p is available: torch.log(p.clamp_min(1e-12))
    """

    code = "TR206"
    title = "log of a value that can be exactly 0"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef f(logits):\n    p = torch.softmax(logits, -1)\n    return torch.log(p.clamp_min(1e-12))\n",
        "import torch\ndef f(logits):\n    p = torch.softmax(logits, -1)\n    return torch.log(p + 1e-9)\n",
        "import torch\ndef f(x):\n    return torch.log(x)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(logits, y):\n    p = torch.softmax(logits, -1)\n    return -(y * torch.log(p)).sum()\n", line=4),
        Invalid("def entropy(p):\n    return -(p * p.log()).sum(-1)\n", line=2),
        Invalid("import torch\ndef bce(z, y):\n    p = torch.sigmoid(z)\n    return -(y * p.log() + (1 - y) * torch.log(1 - p)).mean()\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if torch_function(self, node) == "log" and len(positional(node)) == 1:
            arg = positional(node)[0].value
        elif is_method_call(self, node, {"log"}) and not node.args:
            arg = method_call(node)[0]
        else:
            return
        if self._entropy_term(node, arg):
            return
        if isinstance(arg, cst.BinaryOperation) and isinstance(arg.operator, cst.Subtract) \
                and isinstance(arg.left, (cst.Integer, cst.Float)):
            arg = arg.right  # log(1 - p): 0 when p rounds to 1
        if not isinstance(arg, cst.Name):
            return
        src = self._source(arg.value, enclosing_function(self, node))
        if src is None:
            return
        a = self.code_for(arg)
        self.report(
            node,
            problem=f"`{self.code_for(node)}` takes the log of `{a}`, a `{src}` output that can be exactly 0.",
            impact="log(0) = -inf: the loss becomes inf and the gradient 1/p NaN, which spreads through the model.",
            fix=Fix(before=self.code_for(node),
                    after=f"torch.log({a}.clamp_min(1e-12))  # better: compute log_softmax / logsigmoid directly"),
        )

    def _entropy_term(self, node: cst.Call, arg) -> bool:
        """``p * log(p)`` (an entropy term): 0 * -inf = NaN wherever ``p`` is exactly 0."""
        parent = self.parent(node)
        if not (isinstance(parent, cst.BinaryOperation) and isinstance(parent.operator, cst.Multiply)):
            return False
        other = parent.right if parent.left is node else parent.left
        a = self.code_for(arg)
        if self.code_for(other) != a:
            return False
        self.report(
            parent,
            problem=f"`{self.code_for(parent)}` is NaN wherever `{a}` is exactly 0 (0 * log 0 = 0 * -inf).",
            impact="One zero probability turns the entropy (and its gradient) into NaN, which spreads through the model.",
            fix=Fix(before=self.code_for(parent), after=f"torch.special.entr({a})  # = -{a} * log({a}), 0 at {a} = 0"),
        )
        return True

    def _source(self, name: str, fn) -> Optional[str]:
        vals = assigned_values(self, fn, name)
        if len(vals) != 1 or not isinstance(vals[0], cst.Call):
            return None
        tf = torch_function(self, vals[0])
        if tf in _ZERO_REACHING:
            return tf.split(".")[-1]
        return is_method_call(self, vals[0], _ZERO_REACHING_METHODS)
