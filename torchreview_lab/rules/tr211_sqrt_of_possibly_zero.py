from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._flow import in_no_grad, sum_of_squares
from ._torch import (assigned_name, assigned_values, atom_code, enclosing_function, is_method_call, kwarg, method_call,
                     positional, torch_function, walk, walk_own)
from .base import Invalid, Rule

# Uses of a distance that only rank, select or report it: no gradient flows through them.
_RANKING = frozenset({"argsort", "argmin", "argmax", "sort", "topk", "kthvalue", "item", "tolist", "numpy", "detach"})
# Functions named like an evaluation metric or a comparison are not differentiated.
_METRIC_HINTS = ("rmse", "mae", "metric", "psnr", "accuracy", "corr", "compare", "same", "check", "eval", "score", "stats",
                 "test", "validat")


class SqrtOfPossiblyZero(Rule):
    """``sqrt`` of a sum of squares that can be exactly 0, with no epsilon, in differentiated code.

    What it does:
        Flags ``torch.sqrt(((a - b) ** 2).sum(-1))``, ``(d * d).sum(-1).sqrt()``,
        ``torch.sqrt(x ** 2 + y ** 2)``, ``((x - mu) ** 2).mean(-1).sqrt()`` and ``s ** 0.5`` on torch
        sums (followed through a name assigned once) when nothing inside the root keeps it away
        from 0: a ``+ eps`` term, ``.clamp(min=...)``/``clamp_min`` or any non-square term makes it
        quiet. Not differentiated, so not flagged: code under ``torch.no_grad()``, a result made a
        number (``.item()``, ``float()``) or only ranked or compared (``argsort(d)``, ``d < r``),
        and functions named as metrics (``rmse``, ``psnr``, ``eval_*``, ``compare_*``).

    Why is this bad:
        d/ds sqrt(s) = 1 / (2 sqrt(s)) is infinite at s = 0, and the chain rule multiplies it by
        ds/dx = 2(a - b) = 0: inf * 0 = NaN. Pairwise distances (the diagonal is 0), two identical
        points, a zero vector or a constant row all give NaN gradients, and one NaN spreads to
        every parameter at the next optimizer step. The forward value looks fine, so this hides
        until training suddenly diverges.

    Example:
        dist = torch.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))

    Use instead:
        dist = torch.sqrt(((x[:, None] - x[None]) ** 2).sum(-1) + 1e-12)
        # or s.clamp_min(1e-12).sqrt(), or torch.cdist(x, x) for pairwise distances
    """

    code = "TR211"
    title = "sqrt of a sum of squares that can be 0 (NaN gradient)"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef f(a, b):\n    return torch.sqrt(((a - b) ** 2).sum(-1) + 1e-8)\n",
        "import torch\ndef f(a, b):\n    return ((a - b) ** 2).sum(-1).clamp_min(1e-12).sqrt()\n",
        "import torch\ndef f(x):\n    with torch.no_grad():\n        return torch.sqrt((x ** 2).sum(-1))\n",
        "import torch\ndef f(x, eps):\n    var = ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1)\n    return torch.sqrt(var + eps)\n",
        "import torch\ndef f(x):\n    return torch.sqrt(x)\n",
        "import math\ndef f(a, b):\n    return math.sqrt((a - b) ** 2 + 1)\n",
        "import numpy as np\ndef dist(a, b):\n    return ((a - b) ** 2).sum(axis=-1) ** 0.5\n",
        "import torch\ndef nearest(v, vs):\n    d = torch.sqrt(torch.sum((vs - v) ** 2, dim=1))\n    return vs[torch.argsort(d)]\n",
        "import torch\ndef rmse(ref, res):\n    return torch.sqrt(torch.mean(torch.square(ref - res)))\n",
    ]
    INVALID = [
        Invalid("import torch\ndef dist(a, b):\n    return torch.sqrt((a - b).pow(2).sum(-1))\n", line=3),
        Invalid("def pairwise(x):\n    return ((x[:, None] - x[None]) ** 2).sum(-1).sqrt()\n", line=2),
        Invalid("import torch as th\ndef radius(x, y):\n    return th.sqrt(x ** 2 + y ** 2)\n", line=3),
        Invalid("def dist(a, b):\n    return ((a - b).pow(2).sum(dim=-1)) ** 0.5\n", line=2),
        Invalid("from torch import sqrt, sum\ndef f(a, b):\n    d = a - b\n    s = sum(d * d, dim=1)\n    return sqrt(s)\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if torch_function(self, node) == "sqrt" and len(positional(node)) == 1 and len(node.args) == 1:
            arg = positional(node)[0].value
            self._check(node, arg, f"{self.code_for(node.func)}({self.code_for(arg)} + 1e-12)")
        elif is_method_call(self, node, {"sqrt"}) and not node.args:
            arg = method_call(node)[0]
            self._check(node, arg, f"{atom_code(self, arg)}.clamp_min(1e-12).sqrt()")

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        # s ** 0.5, when the squares or the sum are torch ops (``.pow(2)``, ``dim=``, ``torch.sum``)
        if isinstance(node.operator, cst.Power) and isinstance(node.right, cst.Float) and float(node.right.value) == 0.5 \
                and self._torch_evidence(node.left):
            self._check(node, node.left, f"({self.code_for(node.left)} + 1e-12) ** 0.5")

    def _torch_evidence(self, expr) -> bool:
        fn = enclosing_function(self, expr)
        exprs = [expr] + (assigned_values(self, fn, expr.value) if isinstance(expr, cst.Name) else [])
        return any(torch_function(self, c) is not None or is_method_call(self, c, {"pow", "square"})
                   or kwarg(c, "dim") is not None or kwarg(c, "keepdim") is not None
                   for e in exprs for c in walk(e, cst.Call))

    def _check(self, node, arg, safe: str) -> None:
        fn = enclosing_function(self, node)
        if in_no_grad(self, node) or fn is not None and any(h in fn.name.value.lower() for h in _METRIC_HINTS) \
                and "loss" not in fn.name.value.lower() or self._made_a_number(node):
            return
        what = sum_of_squares(self, fn, arg)
        if what is None:
            return
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` takes the square root of {what}, which is exactly 0 for identical points, "
                     f"zero vectors or constant rows, with nothing keeping it away from 0."),
            impact=("The gradient of sqrt at 0 is infinite and the inner gradient is 0: inf * 0 = NaN, which reaches every "
                    "parameter at the next optimizer step (pairwise distances always have a zero diagonal)."),
            fix=Fix(before=self.code_for(node),
                    after=f"{safe}  # or torch.cdist(x1, x2) for pairwise distances"),
        )

    def _made_a_number(self, node) -> bool:
        """``torch.sqrt(...).item()`` / ``float(torch.sqrt(...))``, or ``d = torch.sqrt(...)`` used only to rank
        or compare (``argsort(d)``, ``d < r``): a reported or ranked value, not differentiated."""
        p, name = self.parent(node), assigned_name(self, node)
        if name is not None:
            line, fn = self.line_of(p), enclosing_function(self, node)
            uses = [n for n in walk_own(fn.body if fn is not None else self.ctx.module, cst.Name)
                    if n.value == name and self.line_of(n) > line and not isinstance(self.parent(n), cst.AssignTarget)]
            return bool(uses) and all(self._ranked(u) for u in uses)
        if isinstance(p, cst.Attribute) and p.attr.value in ("item", "tolist", "detach"):
            return True
        call = self.parent(p) if isinstance(p, cst.Arg) else None
        return isinstance(call, cst.Call) and bool(self.qnames(call.func) & {"builtins.float", "builtins.print"})

    def _ranked(self, use) -> bool:
        p = self.parent(use)
        if isinstance(p, (cst.Comparison, cst.ComparisonTarget)):
            return True
        if isinstance(p, cst.Attribute) and p.value is use:
            return p.attr.value in _RANKING
        call = self.parent(p) if isinstance(p, cst.Arg) else None
        return isinstance(call, cst.Call) and ((torch_function(self, call) or "").split(".")[-1] in _RANKING
                                               or bool(self.qnames(call.func) & {"builtins.float", "builtins.print"}))
