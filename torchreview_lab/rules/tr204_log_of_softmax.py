from __future__ import annotations

from typing import Optional

import libcst as cst

from ._torch import is_method_call, method_call, positional, torch_function
from .base import Invalid, Rule

_SOFTMAX = {"softmax": "log_softmax", "nn.functional.softmax": "log_softmax", "special.softmax": "log_softmax",
            "sigmoid": "nn.functional.logsigmoid", "nn.functional.sigmoid": "nn.functional.logsigmoid"}


class LogOfSoftmax(Rule):
    """``log(softmax(x))`` (or ``log(sigmoid(x))``) instead of the fused log-space op.

    What it does:
        Flags ``torch.log(torch.softmax(x, dim))``, ``F.softmax(x, -1).log()`` and
        ``torch.log(torch.sigmoid(x))``, and rewrites the softmax forms to ``log_softmax``. Also flags the
        guarded softmax forms ``torch.log(F.softmax(x, -1) + eps)``, ``torch.clamp(F.softmax(x, -1), min=eps).log()``.

    Why is this bad:
        ``softmax`` underflows to exactly 0 for scores ~104 below the row maximum (float32), and
        ``log(0) = -inf``: the loss becomes inf and the gradient NaN. ``log_softmax`` computes
        ``x - logsumexp(x)`` directly and is exact; it is also one kernel instead of two.

    Example:
        logp = torch.log(torch.softmax(scores, dim=-1))

    Use instead:
        logp = torch.log_softmax(scores, dim=-1)
        # and F.logsigmoid(x) for log(sigmoid(x))
    """

    code = "TR204"
    title = "log(softmax(x)) instead of log_softmax"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    autofix = True
    VALID = [
        "import torch\ndef f(x):\n    return torch.log_softmax(x, dim=-1)\n",
        "import torch\ndef f(p):\n    return torch.log(p.clamp_min(1e-12))\n",
        "import torch\ndef f(x):\n    return torch.softmax(x, -1).sum(-1).log()\n",
        "import torch\ndef f(p, eps):\n    return torch.log(p + eps) + torch.log(torch.clamp(p, min=eps))\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    return torch.log(torch.softmax(x, dim=-1))\n", line=3,
                expected_fix="import torch\ndef f(x):\n    return torch.log_softmax(x, dim=-1)\n"),
        Invalid("import torch.nn.functional as F\ndef f(x):\n    return F.softmax(x, -1).log()\n", line=3,
                expected_fix="import torch.nn.functional as F\ndef f(x):\n    return F.log_softmax(x, -1)\n"),
        Invalid("import torch\ndef f(x):\n    return torch.log(torch.sigmoid(x))\n", line=3),
        Invalid("import torch.nn.functional as F\ndef f(x, eps=1e-8):\n    return torch.log(F.softmax(x, dim=-1) + eps)\n", line=3),
        Invalid("import torch\ndef f(x):\n    return torch.softmax(x, -1).clamp(min=1e-6).log()\n", line=3),
        Invalid("def f(x):\n    return x.softmax(dim=1).log()\n", line=2,
                expected_fix="def f(x):\n    return x.log_softmax(dim=1)\n"),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        inner = self._log_input(node)
        guard = self._unguarded(inner)
        if guard is not None:  # only softmax: a sigmoid + eps is often a deliberate two-sided bound
            inner, guard = guard, True
            if not isinstance(inner, cst.Call) or not (is_method_call(self, inner, {"softmax"})
                                                        or "softmax" in (torch_function(self, inner) or "")):
                return
        if not isinstance(inner, cst.Call):
            return
        tf = torch_function(self, inner)
        method = is_method_call(self, inner, {"softmax", "sigmoid"})
        if tf in _SOFTMAX:
            target = _SOFTMAX[tf]
        elif method:
            target = "log_softmax" if method == "softmax" else None
        else:
            return
        repl = None
        if target == "log_softmax" and isinstance(inner.func, cst.Attribute):
            repl = inner.with_changes(func=inner.func.with_changes(attr=cst.Name("log_softmax")),
                                      lpar=node.lpar, rpar=node.rpar)
        elif target == "log_softmax" and isinstance(inner.func, cst.Name):
            repl = None  # ``from torch import softmax``: the fused name may not be imported
        after = self.code_for(repl) if repl is not None else (
            f"torch.nn.functional.logsigmoid({self.code_for(positional(inner)[0].value) if positional(inner) else 'x'})"
            if target and "logsigmoid" in target or method == "sigmoid" else f"torch.log_softmax(...)")
        from ..findings import Fix
        kind = 'softmax' if 'softmax' in (tf or method or '') else 'sigmoid'
        self.report(
            node,
            problem=f"`{self.code_for(node)}` takes the log of a {kind} output" + (
                " (the eps or clamp only hides the underflow)." if guard else "."),
            impact=("The eps floors every log-probability at log(eps) and the gradient of those entries vanishes "
                    "(p / (p + eps) -> 0): the model stops learning from the examples it gets most wrong. The fused "
                    "op is exact, needs no eps and is one kernel." if guard else
                    "Probabilities underflow to exactly 0 for scores ~104 below the maximum (float32); log(0) = -inf "
                    "gives an infinite loss and NaN gradients. The fused op is exact and one kernel."),
            fix=Fix(before=self.code_for(node), after=after),
            replacement=None if guard else repl,
        )

    def _unguarded(self, expr) -> Optional[cst.BaseExpression]:
        """The probabilities under ``p + eps``, ``torch.clamp(p, min=eps)``, ``p.clamp(min=eps)``/``clamp_min``/``clip``."""
        if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.Add):
            sides = [(expr.left, expr.right), (expr.right, expr.left)]  # a small constant: a literal or an ``eps``
            return next((p for p, e in sides if isinstance(p, cst.Call) and (isinstance(e, (cst.Float, cst.Integer))
                                                                              or "eps" in self.code_for(e).lower())), None)
        if not isinstance(expr, cst.Call):
            return None
        if torch_function(self, expr) in ("clamp", "clamp_min", "clip") and positional(expr):
            return positional(expr)[0].value
        if is_method_call(self, expr, {"clamp", "clamp_min", "clip"}):
            return method_call(expr)[0]
        return None

    def _log_input(self, node: cst.Call) -> Optional[cst.BaseExpression]:
        if torch_function(self, node) == "log":
            pos = positional(node)
            return pos[0].value if len(pos) == 1 else None
        if is_method_call(self, node, {"log"}) and not node.args:
            return method_call(node)[0]
        return None
