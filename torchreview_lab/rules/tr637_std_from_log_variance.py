from __future__ import annotations

import re
from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import dotted_name, kwarg, method_call, positional, torch_function
from .base import Invalid, Rule

_LOG_VARIANCE = re.compile(r"(^|_)(log_?var(iance)?|log_?sigma_?(2|sq)|log_?s2)$", re.I)
_STD_NAME = re.compile(r"(^|_)(std|stddev|sigma|scale)$", re.I)
_NOISE = frozenset({"randn_like", "randn", "normal", "rand_like"})
_SCALE_TAKERS = frozenset({"distributions.Normal", "distributions.normal.Normal", "distributions.LogNormal",
                           "distributions.Independent", "normal"})


class StdFromLogVariance(Rule):
    """The standard deviation is taken as ``exp(logvar)`` (that is the variance).

    What it does:
        Flags ``torch.exp(logvar)`` / ``logvar.exp()`` of a log-variance (``logvar``, ``log_var``,
        ``log_sigma2``) used as a standard deviation: assigned to ``std``/``sigma``/``scale``,
        multiplied with Gaussian noise (``eps * logvar.exp()``, the reparameterisation trick), or
        given as the scale of ``Normal``/``torch.normal``. The variance in a KL term
        (``- logvar.exp()``) is correct and is not flagged.

    Why is this bad:
        ``exp(logvar)`` is the variance sigma**2; the standard deviation is ``exp(0.5 * logvar)``.
        Sampling ``mu + eps * exp(logvar)`` draws with variance exp(2 * logvar): the samples no
        longer follow the posterior that the KL term regularises, so the ELBO is optimised for the
        wrong distribution (the decoder sees too much or too little noise). Nothing fails.

    Example:
        std = torch.exp(logvar)
        z = mu + torch.randn_like(std) * std

    Use instead:
        std = torch.exp(0.5 * logvar)
    """

    code = "TR637"
    title = "Standard deviation computed as exp(logvar)"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef sample(mu, logvar):\n    std = torch.exp(0.5 * logvar)\n    return mu + torch.randn_like(std) * std\n",
        "import torch\ndef kl(mu, logvar):\n    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())\n",
        "import torch\ndef sample(mu, log_std):\n    std = log_std.exp()\n    return mu + torch.randn_like(std) * std\n",
    ]
    INVALID = [
        Invalid("import torch\ndef sample(mu, logvar):\n    std = torch.exp(logvar)\n    return mu + torch.randn_like(std) * std\n",
                line=3),
        Invalid("import torch\ndef sample(mu, log_var):\n    return mu + torch.randn_like(mu) * log_var.exp()\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        arg = self._exp_of_log_variance(node)
        if arg is None or not self._used_as_std(node):
            return
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` is the variance (exp of the log-variance `{arg}`), but it is used as "
                     "the standard deviation."),
            impact=("Samples get variance exp(2 * logvar) instead of exp(logvar): they do not follow the posterior "
                    "the KL term regularises, and the ELBO optimises the wrong distribution, silently."),
            fix=Fix(before=self.code_for(node), after=f"torch.exp(0.5 * {arg})"),
        )

    def _exp_of_log_variance(self, node: cst.Call) -> Optional[str]:
        if torch_function(self, node) == "exp" and len(positional(node)) == 1:
            x = positional(node)[0].value
        elif method_call(node) and method_call(node)[1] == "exp" and not node.args:
            x = method_call(node)[0]
        else:
            return None
        name = dotted_name(x) or ""
        return name if _LOG_VARIANCE.search(name.rsplit(".", 1)[-1]) else None

    def _used_as_std(self, node: cst.Call) -> bool:
        parent = self.parent(node)
        if isinstance(parent, cst.Assign):
            return any(isinstance(t.target, cst.Name) and _STD_NAME.search(t.target.value) for t in parent.targets)
        if isinstance(parent, cst.BinaryOperation) and isinstance(parent.operator, cst.Multiply):
            other = parent.right if parent.left is node else parent.left
            return isinstance(other, cst.Call) and torch_function(self, other) in _NOISE or \
                (dotted_name(other) or "") in ("eps", "epsilon", "noise")
        if isinstance(parent, cst.Arg):
            call = self.parent(parent)
            if isinstance(call, cst.Call) and torch_function(self, call) in _SCALE_TAKERS:
                args = positional(call)
                return parent is kwarg(call, "scale") or parent is kwarg(call, "std") or \
                    len(args) >= 2 and args[1] is parent
        return False
