from __future__ import annotations

from typing import List, Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._flow import exp_arg
from ._numerics import recursion_carried, shifted
from ._torch import assigned_values, dotted_name, enclosing_function, is_method_call, method_call, positional, torch_function
from .base import Invalid, Rule


def _prefix(call: cst.Call) -> Optional[str]:
    """``"torch"`` / ``"th"`` for ``torch.log(...)``; None for a method call or a bare imported name."""
    name = dotted_name(call.func)
    return name.rsplit(".", 1)[0] if name and "." in name else None


class LogSumExpByHand(Rule):
    """``log(sum(exp(x)))`` computed by hand instead of ``logsumexp``.

    What it does:
        Flags ``torch.log(torch.sum(torch.exp(x), dim))``, ``x.exp().sum(dim).log()`` and mixed
        spellings, and rewrites them to ``torch.logsumexp(x, dim)``; high when ``x`` is a forward
        variable that a loop accumulates (``alpha[t] = logsumexp(...)``: about -T per step, certain
        underflow). Also flags the weighted forms ``log((w * exp(x)).sum(dim))`` (a mixture) and
        ``log(exp(x) @ P)`` (a forward step in probability space): ``logsumexp(log(w) + x, dim)``.

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
        Invalid("import torch\ndef mix(log_comp, logits):\n    w = torch.softmax(logits, -1)\n"
                "    return torch.log((w * torch.exp(log_comp)).sum(dim=-1))\n", line=4),
        Invalid("import torch\ndef step(alpha, trans, emit):\n    return torch.log(torch.exp(alpha) @ trans) + emit\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        inner = self._log_input(node)
        if inner is None:
            return
        summed = self._sum_parts(inner)
        if summed is None:
            return
        exp_call, dim_args, weight = summed
        x = exp_arg(self, exp_call)
        if x is None:
            return
        fn = enclosing_function(self, node)
        if (assigned_values(self, fn, x.value) if isinstance(x, cst.Name) else True) and shifted(self, fn, x):
            return  # already max-shifted: a stable hand-written logsumexp
        if weight is not None:
            self._report_weighted(node, x, weight, dim_args)
            return
        prefix = _prefix(node) if torch_function(self, node) else None
        prefix = prefix or (_prefix(exp_call) if torch_function(self, exp_call) else None)
        has_dim, args_code = bool(dim_args), ", ".join(self.code_for(a).strip().rstrip(",") for a in dim_args)
        new = f"{prefix}.logsumexp({self.code_for(x)}, {args_code})" if prefix else f"{self.code_for(x)}.logsumexp({args_code})"
        repl = cst.parse_expression(new) if has_dim else None
        carried = recursion_carried(self, fn, x)  # a forward variable: ~-T per-step cost, underflow is certain
        self.report(
            node,
            problem=f"`{self.code_for(node)}` computes log-sum-exp by hand" + (
                f" of `{carried}`, a log-score the loop accumulates over the sequence." if carried else "."),
            impact=("exp overflows to inf above ~88.7 in float32 and underflows to 0 below ~-103, giving inf/-inf "
                    "results and NaN gradients; logsumexp subtracts the maximum and stays exact."),
            fix=Fix(before=self.code_for(node), after=new if has_dim else f"torch.logsumexp({self.code_for(x)}, dim=<dims>)"),
            replacement=repl.with_changes(lpar=node.lpar, rpar=node.rpar) if repl is not None else None,
            severity="high" if carried else None, evidence={"recursion": carried} if carried else None,
        )

    def _log_input(self, node: cst.Call) -> Optional[cst.BaseExpression]:
        if torch_function(self, node) == "log":
            pos = positional(node)
            return pos[0].value if len(pos) == 1 else None
        if is_method_call(self, node, {"log"}) and not node.args:
            return method_call(node)[0]
        return None

    def _report_weighted(self, node, x, weight, dim_args) -> None:
        w, xc = self.code_for(weight[1]), self.code_for(x)
        dims = ", ".join(self.code_for(a).strip().rstrip(",") for a in dim_args) or "dim=<dims>"
        after = (f"torch.logsumexp({xc}.unsqueeze(-1) + torch.log({w}), dim=-2)" if weight[0] == "matmul"
                 else f"torch.logsumexp({xc} + torch.log({w}), {dims})  # log-weights: log_softmax(logits)")
        self.report(
            node,
            problem=f"`{self.code_for(node)}` computes a weighted log-sum-exp by hand (weights `{w}`).",
            impact=("exp of log-densities below ~-103 underflows to 0 in float32 (realistic for high-dimensional "
                    "likelihoods and long sequences), so the result is -inf and its gradient NaN; above ~88.7 it "
                    "overflows to inf."),
            fix=Fix(before=self.code_for(node), after=after),
            title="Weighted log-sum-exp computed by hand",
        )

    def _sum_parts(self, expr) -> Optional[Tuple[cst.Call, List[cst.Arg], Optional[Tuple[str, cst.BaseExpression]]]]:
        """``(exp call, reduction arguments, weight)`` for ``exp(x).sum(d)``, ``(w * exp(x)).sum(d)``
        (weight ``("mul", w)``) and ``exp(x) @ P`` (weight ``("matmul", P)``)."""
        if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, cst.MatrixMultiply):
            return (expr.left, [], ("matmul", expr.right)) if self._is_exp(expr.left) else None
        if not isinstance(expr, cst.Call):
            return None
        if torch_function(self, expr) == "sum":
            pos = positional(expr)
            if not pos:
                return None
            operand, rest = pos[0].value, [a for a in expr.args if a is not pos[0]]
        elif is_method_call(self, expr, {"sum"}):
            operand, rest = method_call(expr)[0], list(expr.args)
        elif torch_function(self, expr) == "matmul" and len(positional(expr)) == 2:
            left, right = (a.value for a in positional(expr))
            return (left, [], ("matmul", right)) if self._is_exp(left) else None
        else:
            return None
        if isinstance(operand, cst.Call):
            return operand, rest, None
        if isinstance(operand, cst.BinaryOperation) and isinstance(operand.operator, cst.Multiply):
            for e, w in ((operand.left, operand.right), (operand.right, operand.left)):
                if self._is_exp(e) and not isinstance(w, (cst.Integer, cst.Float)):
                    return e, rest, ("mul", w)
        return None

    def _is_exp(self, e) -> bool:
        return isinstance(e, cst.Call) and exp_arg(self, e) is not None
