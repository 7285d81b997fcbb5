from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._bindings import may_precede, python_number, reaching_value, same_binding
from ._context import is_module_class
from ._flow import graph_reason, in_no_grad
from ._graph_terms import saved_view_written
from ._no_autograd import function_exemptions
from ._knowledge import INPLACE_METHODS, SAVES_INPUT, SAVES_OUTPUT, SAVES_OUTPUT_METHODS
from ._torch import (enclosing_class, enclosing_function, is_method_call, method_call, positional,
                     torch_function, walk, walk_own)
from .base import Invalid, Rule

_SAVING_BINOPS = (cst.Multiply, cst.MatrixMultiply, cst.Divide, cst.Power)


class InplaceOnSavedTensor(Rule):
    """A tensor that autograd saved for backward is modified in place.

    What it does:
        Flags an in-place op (``y.add_(1)``, ``y += 1``, ``y[i] = v``) on a tensor that is the output
        of an op whose backward reads its output (``exp``, ``sigmoid``, ``tanh``, ``softmax``,
        ``sqrt``, ``relu``) by the one assignment that reaches the in-place op (silent when several
        can), or on a tensor that was already used as an input of an op that saves its inputs
        (``x * w``, ``torch.log(x)``, ``x ** 2``), or a write into a fresh table (``a = x.new_zeros(T)``) a slice
        of which such an op kept (``a[t] = logaddexp(a[t - 1], e)`` in a loop: a slice is a view sharing
        the version counter), outside ``no_grad``; not in an autograd.Function ``backward``, in
        optimizer-update code (``.grad``/``.data``, ``addcmul_``) or on Python numbers.

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
        "import torch\ndef f(x, s):\n    h = torch.sigmoid(x)\n    h = h * 2\n    h.mul_(s)\n    return h\n",
        "import torch\ndef f(x, s, c):\n    if c:\n        h = torch.sigmoid(x)\n    else:\n        h = x * 2\n    h.mul_(s)\n    return h\n",
        "import torch\ndef f(e, T):\n    a = e.new_zeros(T)\n    for t in range(1, T):\n        a[t] = a[t - 1] + e[t]\n    return a[-1]\n",
        "import torch\ndef update(running_mean, mean, momentum):\n    new = (1 - momentum) * running_mean + momentum * mean\n    running_mean.copy_(new)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    y = torch.exp(x)\n    y.add_(1)\n    return y\n", line=4),
        Invalid("def f(h):\n    a = h.sigmoid()\n    a[:, 0] = 0\n    return a\n", line=3),
        Invalid("import torch\ndef f(x, w):\n    z = x * w\n    x.mul_(2)\n    return z\n", line=4),
        Invalid("import torch\nclass Block(torch.nn.Module):\n    def forward(self, x, t, s):\n        h = self.conv(x)\n"
                "        h = h + t\n        h = torch.sigmoid(h)\n        h.mul_(s)\n        return h\n", line=7),
        Invalid("import torch\ndef f(x):\n    p = torch.tanh(x)\n    p += 1\n    return p\n", line=4),
        Invalid("import torch\ndef f(e, T):\n    a = e.new_zeros(T)\n    for t in range(1, T):\n"
                "        a[t] = torch.logaddexp(a[t - 1], e[t])\n    return a[-1]\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if mc and mc[1] in INPLACE_METHODS and isinstance(mc[0], cst.Name):
            self._check(node, mc[0].value, f"`.{mc[1]}(...)`")

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        if isinstance(node.target, cst.Name):
            self._check(node, node.target.value, "augmented assignment")

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        if isinstance(node.target, cst.Subscript) and isinstance(node.target.value, cst.Name):
            self._check(self.parent(node), node.target.value.value, "item assignment")

    def _check(self, node, name: str, how: str) -> None:
        fn = enclosing_function(self, node)
        if fn is None or in_no_grad(self, node) or self._without_autograd(fn, name):
            return
        why, sev = self._saved_output(fn, name, node), None
        if why is None:  # the input case depends on whether the *other* operand requires grad: less certain
            why, sev = self._saved_input(fn, name, node), "medium"
        kept = None if why else saved_view_written(self, fn, name, node, may_precede)  # alpha[t, u] = f(alpha[t, u])
        why = why or kept and f"`{self.code_for(kept)}` ({self.where(kept)}) kept a view of it for backward"
        if why:
            self.report(
                node,
                problem=f"`{self.code_for(node).strip()}` modifies `{name}` in place ({how}), but {why}.",
                impact=("loss.backward() raises 'one of the variables needed for gradient computation has been "
                        "modified by an inplace operation' whenever the inputs require grad."),
                fix=Fix(before=self.code_for(node).strip(), after=f"{name} = <out-of-place version, e.g. {name} + 1>" if
                        not kept else "keep rows in a list (or rebind a row variable) and torch.stack them at the end"),
                severity=sev,
            )

    def _saved_output(self, fn, name: str, node) -> Optional[str]:
        call = reaching_value(self, fn, name, node)  # the one binding that reaches the in-place op
        if not isinstance(call, cst.Call) or len(self._plain_assigned(fn, name)) > 1 and not (
                is_module_class(self, enclosing_class(self, fn)) or graph_reason(self, fn, fn.body, call)):
            return None  # a rebound name: only where autograd is evidently on (a module's method, a model's output)
        tf = torch_function(self, call)
        op = tf if tf in SAVES_OUTPUT else is_method_call(self, call, SAVES_OUTPUT_METHODS)
        return f"it is the output of `{op}`, whose backward reads that output" if op and tf != "pow" else None

    def _without_autograd(self, fn: cst.FunctionDef, name: str) -> bool:
        """An autograd.Function ``backward``, code only called under ``no_grad``, optimizer code (runs
        ``addcmul_``-style updates, or is in a document defining a torch.optim Optimizer) or an in-place op
        on a gradient or ``.data`` (``name`` reads ``.grad``/``.data``: ``g = p.grad``, ``p.data``)."""
        whole, grad_names = function_exemptions(self, fn)
        return whole or name in grad_names

    def _saved_input(self, fn, name: str, node) -> Optional[str]:
        vals, before_line = self._plain_assigned(fn, name), self.line_of(node)
        if len(vals) > 1 or any(python_number(self, v) for v in vals):
            return None
        for n in walk_own(fn.body, (cst.BinaryOperation, cst.Call)):
            if isinstance(n, cst.BinaryOperation):
                sides = (n.left, n.right) if not isinstance(n.operator, cst.Divide) else (n.right,)
                hit = isinstance(n.operator, _SAVING_BINOPS) and any(isinstance(s, cst.Name) and s.value == name
                                                                     for s in sides) and not self._constant_other(n, name)
                hit = hit and not any(isinstance(a, cst.Call) and python_number(self, a) for a in self.ancestors(n))
            else:
                hit = torch_function(self, n) in SAVES_INPUT and any(
                    isinstance(a.value, cst.Name) and a.value.value == name for a in positional(n))
            if hit and self.line_of(n) < before_line and not in_no_grad(self, n) and may_precede(self, n, node) \
                    and same_binding(self, fn, name, n, node):  # the op saved this very tensor
                return f"it was already used in `{self.code_for(n)}`, which saves it for backward"
        return None

    @staticmethod
    def _plain_assigned(fn, name: str):
        return [n.value for n in walk_own(fn.body, (cst.Assign, cst.AnnAssign)) if n.value is not None and any(
            isinstance(t, cst.Name) and t.value == name for t in ([x.target for x in n.targets] if isinstance(
                n, cst.Assign) else [n.target]))]

    @staticmethod
    def _constant_other(n: cst.BinaryOperation, name: str) -> bool:
        other = n.right if isinstance(n.left, cst.Name) and n.left.value == name else n.left
        # a number, a str/tuple/list repeated, or (1 - momentum) * x: numeric literals and no tensor call
        return isinstance(other, (cst.Integer, cst.Float, cst.SimpleString, cst.FormattedString, cst.Tuple, cst.List)) \
            or isinstance(other, cst.BinaryOperation) and not any(True for _ in walk(other, cst.Call)) and any(
                isinstance(x, (cst.Integer, cst.Float)) for x in (other.left, other.right))
