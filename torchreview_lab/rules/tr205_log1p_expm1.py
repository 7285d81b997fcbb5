from __future__ import annotations

from typing import Optional

import libcst as cst

from ._flow import const_int, exp_arg
from ._torch import dotted_name, is_method_call, method_call, positional, torch_function
from .base import Invalid, Rule


def _is_one(expr) -> bool:
    if const_int(expr) == 1:
        return True
    return isinstance(expr, cst.Float) and expr.value in ("1.0", "1.", "1.00")


class Log1pExpm1(Rule):
    """``log(1 + x)`` / ``exp(x) - 1`` instead of ``log1p`` / ``expm1``.

    What it does:
        Flags ``torch.log(1 + x)``, ``(1 + x).log()``, ``torch.exp(x) - 1`` and rewrites them to
        ``torch.log1p(x)`` / ``torch.expm1(x)``.

    Why is this bad:
        For small ``|x|`` (below ~1e-7 in float32), ``1 + x`` rounds to exactly 1, so
        ``log(1 + x)`` returns 0 and ``exp(x) - 1`` returns 0 instead of ~x: all relative
        precision is lost. ``log1p``/``expm1`` are accurate over the whole range.

    Example:
        torch.log(1 + torch.exp(-d))

    Use instead:
        torch.log1p(torch.exp(-d))     # or F.softplus(-d)
    """

    code = "TR205"
    title = "log(1 + x) / exp(x) - 1 lose precision for small x"
    category = "numerical-stability"
    severity = {"research": "low", "production": "low"}
    autofix = True
    VALID = [
        "import torch\ndef f(x):\n    return torch.log1p(x)\n",
        "import torch\ndef f(x):\n    return torch.log(2 + x) + torch.exp(x) - 2\n",
        "import torch\ndef f(x):\n    return torch.expm1(x)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    return torch.log(1 + x)\n", line=3,
                expected_fix="import torch\ndef f(x):\n    return torch.log1p(x)\n"),
        Invalid("import torch\ndef f(x):\n    return torch.exp(x) - 1\n", line=3,
                expected_fix="import torch\ndef f(x):\n    return torch.expm1(x)\n"),
        Invalid("def f(x):\n    return (x + 1).log()\n", line=2),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        if tf == "log" and len(positional(node)) == 1 and len(node.args) == 1:
            arg = positional(node)[0].value
            x = self._one_plus(arg)
            if x is not None:
                name = dotted_name(node.func) or "torch.log"
                new = f"{name[:-len('log')]}log1p({self.code_for(x)})"
                self._report(node, "log1p", cst.parse_expression(new).with_changes(lpar=node.lpar, rpar=node.rpar))
        elif is_method_call(self, node, {"log"}) and not node.args:
            x = self._one_plus(method_call(node)[0])
            if x is not None:
                self._report(node, "log1p", None)

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        if not (isinstance(node.operator, cst.Subtract) and _is_one(node.right) and isinstance(node.left, cst.Call)):
            return
        x = exp_arg(self, node.left)
        if x is None:
            return
        repl = None
        if torch_function(self, node.left):
            name = dotted_name(node.left.func) or "torch.exp"
            repl = cst.parse_expression(f"{name[:-len('exp')]}expm1({self.code_for(x)})").with_changes(
                lpar=node.lpar, rpar=node.rpar)
        self._report(node, "expm1", repl)

    def _one_plus(self, arg) -> Optional[cst.BaseExpression]:
        if isinstance(arg, cst.BinaryOperation) and isinstance(arg.operator, cst.Add):
            if _is_one(arg.left):
                return arg.right
            if _is_one(arg.right):
                return arg.left
        return None

    def _report(self, node, fused: str, repl) -> None:
        from ..findings import Fix
        self.report(
            node,
            problem=f"`{self.code_for(node)}` loses precision for small arguments; `torch.{fused}` is exact there.",
            impact="For |x| below ~1e-7 (float32) the result is exactly 0 instead of ~x, so small terms vanish.",
            fix=Fix(before=self.code_for(node), after=self.code_for(repl) if repl is not None else f"torch.{fused}(...)"),
            replacement=repl,
        )
