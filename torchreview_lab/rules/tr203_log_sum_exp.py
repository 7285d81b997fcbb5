from __future__ import annotations

from typing import List, Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._flow import exp_arg, is_shifted_or_bounded
from ._torch import assigned_values, enclosing_function
from ._torch import dotted_name, is_method_call, method_call, positional, torch_function
from .base import Invalid, Rule


def _prefix(call: cst.Call) -> Optional[str]:
    """``"torch"`` / ``"th"`` for ``torch.log(...)``; None for a method call or a bare imported name."""
    name = dotted_name(call.func)
    return name.rsplit(".", 1)[0] if name and "." in name else None


class LogSumExpByHand(Rule):
    """``log(sum(exp(x)))`` computed by hand instead of ``logsumexp``.

    What it does:
        Flags ``torch.log(torch.sum(torch.exp(x), dim))``, ``x.exp().sum(dim).log()`` and mixed
        spellings, and rewrites them to ``torch.logsumexp(x, dim)``.

    Why is this bad:
        ``exp`` overflows to ``inf`` for scores above ~88.7 in float32 (the result is ``inf``), and
        underflows to 0 for scores below ~-103 (the result is ``-inf`` and the gradient NaN).
        ``logsumexp`` subtracts the maximum first and is exact over the whole range.

    Example:
        torch.log(torch.sum(torch.exp(scores), dim=-1))

    Use instead:
        torch.logsumexp(scores, dim=-1)
    """

    code = "TR203"
    title = "log(sum(exp(x))) instead of logsumexp"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    autofix = True
    VALID = [
        "import torch\ndef f(scores):\n    return torch.logsumexp(scores, dim=-1)\n",
        "import torch\ndef f(x):\n    return torch.log(torch.sum(x, dim=-1))\n",
        "import torch\ndef f(x):\n    return torch.exp(x).sum(-1)\n",
        "import torch\ndef f(x):\n    m = x.amax(-1, keepdim=True)\n    return m + torch.log(torch.sum(torch.exp(x - m), -1, keepdim=True))\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(scores):\n    return torch.log(torch.sum(torch.exp(scores), dim=-1))\n", line=3,
                expected_fix="import torch\ndef f(scores):\n    return torch.logsumexp(scores, dim=-1)\n"),
        Invalid("def f(x):\n    return x.exp().sum(-1).log()\n", line=2,
                expected_fix="def f(x):\n    return x.logsumexp(-1)\n"),
        Invalid("import torch as th\ndef f(x):\n    return th.log(x.exp().sum(1, keepdim=True))\n", line=3,
                expected_fix="import torch as th\ndef f(x):\n    return th.logsumexp(x, 1, keepdim=True)\n"),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        inner = self._log_input(node)
        if inner is None:
            return
        summed = self._sum_parts(inner)
        if summed is None:
            return
        exp_call, dim_args = summed
        x = exp_arg(self, exp_call)
        if x is None:
            return
        fn = enclosing_function(self, node)
        if (assigned_values(self, fn, x.value) if isinstance(x, cst.Name) else True) and is_shifted_or_bounded(self, fn, x):
            return  # already max-shifted: a stable hand-written logsumexp
        prefix = _prefix(node) if torch_function(self, node) else None
        prefix = prefix or (_prefix(exp_call) if torch_function(self, exp_call) else None)
        has_dim = bool(dim_args)
        args_code = ", ".join(self.code_for(a).strip().rstrip(",") for a in dim_args)
        if prefix:
            new = f"{prefix}.logsumexp({self.code_for(x)}, {args_code})"
        else:
            new = f"{self.code_for(x)}.logsumexp({args_code})"
        repl = cst.parse_expression(new) if has_dim else None
        self.report(
            node,
            problem=f"`{self.code_for(node)}` computes log-sum-exp by hand.",
            impact=("exp overflows to inf above ~88.7 in float32 and underflows to 0 below ~-103, giving inf/-inf "
                    "results and NaN gradients; logsumexp subtracts the maximum and stays exact."),
            fix=Fix(before=self.code_for(node), after=new if has_dim else f"torch.logsumexp({self.code_for(x)}, dim=<dims>)"),
            replacement=repl.with_changes(lpar=node.lpar, rpar=node.rpar) if repl is not None else None,
        )

    def _log_input(self, node: cst.Call) -> Optional[cst.BaseExpression]:
        if torch_function(self, node) == "log":
            pos = positional(node)
            return pos[0].value if len(pos) == 1 else None
        if is_method_call(self, node, {"log"}) and not node.args:
            return method_call(node)[0]
        return None

    def _sum_parts(self, expr) -> Optional[Tuple[cst.Call, List[cst.Arg]]]:
        if not isinstance(expr, cst.Call):
            return None
        if torch_function(self, expr) == "sum":
            pos = positional(expr)
            if not pos or not isinstance(pos[0].value, cst.Call):
                return None
            rest = [a for a in expr.args if a is not pos[0]]
            return pos[0].value, rest
        if is_method_call(self, expr, {"sum"}):
            recv = method_call(expr)[0]
            if isinstance(recv, cst.Call):
                return recv, list(expr.args)
        return None
