from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._flow import in_no_grad
from ._knowledge import INPLACE_METHODS, SAVES_INPUT, SAVES_OUTPUT, SAVES_OUTPUT_METHODS
from ._torch import enclosing_function, is_method_call, method_call, positional, torch_function, walk, walk_own
from .base import Invalid, Rule

_SAVING_BINOPS = (cst.Multiply, cst.MatrixMultiply, cst.Divide, cst.Power)


class InplaceOnSavedTensor(Rule):
    """A tensor that autograd saved for backward is modified in place.

    What it does:
        Flags an in-place op (``y.add_(1)``, ``y += 1``, ``y[i] = v``) on a tensor that is the output
        of an op whose backward reads its output (``exp``, ``sigmoid``, ``tanh``, ``softmax``,
        ``sqrt``, ``relu``), or on a tensor that was already used as an input of an op that saves
        its inputs (``x * w``, ``x @ w``, ``torch.log(x)``, ``x ** 2``), outside ``no_grad``.

    Why is this bad:
        Backward needs the saved values. Autograd detects the change through the version counter
        and raises ``RuntimeError: one of the variables needed for gradient computation has been
        modified by an inplace operation`` at ``loss.backward()``, far from the line at fault
        (or, through ``.data``, silently computes wrong gradients).

    Example:
        y = torch.exp(x)
        y.add_(1)

    Use instead:
        y = torch.exp(x) + 1      # out-of-place: a new tensor, the saved one is untouched
    """

    code = "TR152"
    title = "In-place op on a tensor saved for backward"
    category = "memory-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef f(x):\n    y = torch.exp(x)\n    y = y + 1\n    return y\n",
        "import torch\ndef f(x):\n    with torch.no_grad():\n        y = torch.sigmoid(x)\n        y.mul_(2)\n    return y\n",
        "import torch\ndef f(x):\n    y = x + 1\n    y.add_(1)\n    return y\n",
        "import torch\ndef f(x, w):\n    x.add_(1)\n    return x * w\n",
        "import torch\ndef update(running_mean, mean, momentum):\n    new = (1 - momentum) * running_mean + momentum * mean\n    running_mean.copy_(new)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    y = torch.exp(x)\n    y.add_(1)\n    return y\n", line=4),
        Invalid("def f(h):\n    a = h.sigmoid()\n    a[:, 0] = 0\n    return a\n", line=3),
        Invalid("import torch\ndef f(x, w):\n    z = x * w\n    x.mul_(2)\n    return z\n", line=4),
        Invalid("import torch\ndef f(x):\n    p = torch.tanh(x)\n    p += 1\n    return p\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if mc and mc[1] in INPLACE_METHODS and isinstance(mc[0], cst.Name):
            self._check(node, mc[0].value, f"`.{mc[1]}(...)`")

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        if isinstance(node.target, cst.Name):
            self._check(node, node.target.value, "augmented assignment")

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        t = node.target
        if isinstance(t, cst.Subscript) and isinstance(t.value, cst.Name):
            self._check(self.parent(node), t.value.value, "item assignment")

    def _check(self, node, name: str, how: str) -> None:
        fn = enclosing_function(self, node)
        if fn is None or in_no_grad(self, node):
            return
        why, sev = self._saved_output(fn, name), None
        if why is None:
            # the input case depends on whether the *other* operand requires grad: less certain
            why, sev = self._saved_input(fn, name, self.line_of(node)), "medium"
        if why is None:
            return
        self.report(
            node,
            problem=f"`{self.code_for(node).strip()}` modifies `{name}` in place ({how}), but {why}.",
            impact=("loss.backward() raises 'one of the variables needed for gradient computation has been modified "
                    "by an inplace operation' whenever the inputs require grad."),
            fix=Fix(before=self.code_for(node).strip(), after=f"{name} = <out-of-place version, e.g. {name} + 1>"),
            severity=sev,
        )

    def _saved_output(self, fn, name: str) -> Optional[str]:
        vals = self._plain_assigned(fn, name)
        if len(vals) != 1 or not isinstance(vals[0], cst.Call):
            return None
        call = vals[0]
        tf = torch_function(self, call)
        op = tf if tf in SAVES_OUTPUT else is_method_call(self, call, SAVES_OUTPUT_METHODS)
        if not op or tf == "pow":
            return None
        return f"it is the output of `{op}`, whose backward reads that output"

    def _saved_input(self, fn, name: str, before_line: int) -> Optional[str]:
        if len(self._plain_assigned(fn, name)) > 1:
            return None
        for n in walk_own(fn.body):
            if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, _SAVING_BINOPS):
                sides = (n.left, n.right) if not isinstance(n.operator, cst.Divide) else (n.right,)
                if any(isinstance(s, cst.Name) and s.value == name for s in sides) and self.line_of(n) < before_line \
                        and not self._constant_other(n, name) and not in_no_grad(self, n):
                    return f"it was already used in `{self.code_for(n)}`, which saves it for backward"
            elif isinstance(n, cst.Call) and torch_function(self, n) in SAVES_INPUT and self.line_of(n) < before_line:
                if any(isinstance(a.value, cst.Name) and a.value.value == name for a in positional(n)) and not in_no_grad(self, n):
                    return f"it was already used in `{self.code_for(n)}`, which saves it for backward"
        return None

    @staticmethod
    def _plain_assigned(fn, name: str):
        out = []
        for n in walk_own(fn.body, cst.Assign):
            if any(isinstance(t.target, cst.Name) and t.target.value == name for t in n.targets):
                out.append(n.value)
        return out

    @staticmethod
    def _constant_other(n: cst.BinaryOperation, name: str) -> bool:
        other = n.right if isinstance(n.left, cst.Name) and n.left.value == name else n.left
        if isinstance(other, (cst.Integer, cst.Float)):
            return True
        # (1 - momentum) * x: an expression with a numeric literal and no tensor call is a Python scalar
        return isinstance(other, cst.BinaryOperation) and any(isinstance(x, (cst.Integer, cst.Float))
                                                              for x in (other.left, other.right)) \
            and not any(True for _ in walk(other, cst.Call))
