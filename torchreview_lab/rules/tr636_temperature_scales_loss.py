from __future__ import annotations

import re
from typing import Optional

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value
from ._torch import dotted_name, enclosing_function, positional, torch_function, walk
from .base import Invalid, Rule

# Losses that apply a softmax to their first argument (the logits the temperature belongs to).
_SOFTMAX_LOSSES = frozenset({"nn.functional.cross_entropy", "nn.functional.nll_loss", "nn.functional.kl_div"})
_TEMPERATURE = re.compile(r"(^|_)(temp|temperature|tau)$", re.I)


class TemperatureScalesLoss(Rule):
    """A softmax temperature divides the loss instead of the logits.

    What it does:
        Flags ``F.cross_entropy(logits, y) / self.temperature`` (also ``nll_loss``/``kl_div``, and
        ``nn.CrossEntropyLoss`` instances) when the divisor is named like a temperature
        (``temperature``, ``temp``, ``tau``) and the logits given to the loss were not divided by it.

    Why is this bad:
        A temperature sharpens or flattens the softmax: it must scale the logits
        (``logits / tau``). Dividing the finished loss only multiplies every gradient by ``1/tau``
        (a learning-rate change): the softmax still runs at temperature 1, so a contrastive loss
        (SimCLR, InfoNCE, CLIP) trains with far too soft a distribution and learns much worse.
        Multiplying a distillation loss by ``T ** 2`` is the correct, different idiom and is not
        flagged.

    Example:
        return F.cross_entropy(sim, targets) / self.temperature

    Use instead:
        return F.cross_entropy(sim / self.temperature, targets)
    """

    code = "TR636"
    title = "Temperature divides the loss instead of the logits"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch.nn.functional as F\ndef nt_xent(sim, y, temperature=0.1):\n    return F.cross_entropy(sim / temperature, y)\n",
        "import torch.nn.functional as F\ndef kd(s, t, T):\n    return F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1)) * T * T\n",
        "import torch.nn.functional as F\ndef f(x, y, n):\n    return F.cross_entropy(x, y) / n\n",
    ]
    INVALID = [
        Invalid("import torch.nn.functional as F\nclass L:\n    def __call__(self, sim, y):\n"
                "        return F.cross_entropy(sim, y) / self.temperature\n", line=4),
        Invalid("import torch.nn as nn\ndef f(logits, y, tau):\n    ce = nn.CrossEntropyLoss()\n    loss = ce(logits, y)\n"
                "    return loss / tau\n", line=5),
    ]

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        if not isinstance(node.operator, cst.Divide):
            return
        t = dotted_name(node.right) or ""
        if not _TEMPERATURE.search(t.rsplit(".", 1)[-1]):
            return
        fn = enclosing_function(self, node)
        loss = self._loss_call(fn, node.left, node)
        if loss is None:
            return
        args = positional(loss)
        if args and t in {dotted_name(n) for n in walk(args[0].value, (cst.Name, cst.Attribute))}:
            return  # the logits are already tempered
        if args and isinstance(args[0].value, cst.Name):
            v = reaching_value(self, fn, args[0].value.value, loss)
            if v is not None and t in {dotted_name(n) for n in walk(v, (cst.Name, cst.Attribute))}:
                return
        logits = self.code_for(args[0].value) if args else "logits"
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` divides the finished loss by the temperature `{t}`; the logits "
                     f"`{logits}` reach the softmax unscaled."),
            impact=("The softmax runs at temperature 1 and the division only rescales the gradients (a learning-rate "
                    "change): a contrastive/InfoNCE loss trains with the wrong, far softer distribution."),
            fix=Fix(before=self.code_for(node), after=f"{self.code_for(loss.func)}({logits} / {t}, ...)"),
        )

    def _loss_call(self, fn, expr, at, depth: int = 0) -> Optional[cst.Call]:
        """The softmax-based loss call ``expr`` is (through a name's one binding)."""
        if isinstance(expr, cst.Name) and depth < 3:
            v = reaching_value(self, fn, expr.value, at)
            return self._loss_call(fn, v, at, depth + 1) if v is not None else None
        if not isinstance(expr, cst.Call):
            return None
        if torch_function(self, expr) in _SOFTMAX_LOSSES:
            return expr
        if isinstance(expr.func, cst.Name) and depth < 3:  # ce = nn.CrossEntropyLoss(); ce(logits, y)
            ctor = reaching_value(self, fn, expr.func.value, at)
            if isinstance(ctor, cst.Call) and torch_function(self, ctor) in ("nn.CrossEntropyLoss", "nn.NLLLoss"):
                return expr
        return None
