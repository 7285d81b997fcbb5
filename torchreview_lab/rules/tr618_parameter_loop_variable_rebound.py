from __future__ import annotations

from typing import List

import libcst as cst
from libcst.metadata import PositionProvider

from ..findings import Fix
from ._flow import in_no_grad
from ._knowledge import PARAMETER_ITERATORS
from ._torch import assigned_values, enclosing_function, method_call, torch_function, walk, walk_own
from .base import Invalid, Rule

_PASS_THROUGH = frozenset({"list", "tuple", "reversed", "iter", "itertools.chain"})
_ARITHMETIC = frozenset({"add", "sub", "mul", "div", "lerp", "pow", "clamp", "addcmul", "addcdiv", "neg", "where"})


class ParameterLoopVariableRebound(Rule):
    """An update of a parameter is assigned to the loop variable, which only rebinds the name.

    What it does:
        For loops over ``model.parameters()`` / ``buffers()`` / ``named_parameters()`` /
        ``named_buffers()`` / ``state_dict().values()`` / ``state_dict().items()`` (also through
        ``zip``, ``enumerate``, ``list`` and a name assigned one of these), flags a plain
        ``p = <expression>`` to a loop variable bound to a tensor when the new value is never read later
        in the loop body. ``p.copy_(...)``, ``p.mul_(...)``, ``p.data = ...``, ``p += ...`` (in place on a
        tensor) and a rebinding that is then used (``p = p.data; p.mul_(d)``, a local computation) are
        not flagged. Under ``torch.no_grad()`` (or on ``state_dict()`` tensors) the autofix writes the
        value back with ``p.copy_(<expression>)``.

    Why is this bad:
        The loop variable is a name bound to the parameter tensor; ``p = ...`` makes the name point to
        a new tensor and leaves the parameter untouched. An EMA model never moves from its initial
        weights, a manual SGD step never changes the model, and nothing fails: evaluations of the EMA
        model are silently those of the initial (or a stale) copy.

    Example:
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema = decay * p_ema + (1 - decay) * p

    Use instead:
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)   # or p_ema.mul_(decay).add_(p, alpha=1 - decay)
    """

    code = "TR618"
    title = "Parameter update assigned to the loop variable (discarded)"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    autofix = True
    VALID = [
        "import torch\n@torch.no_grad()\ndef ema_update(ema, model, decay):\n"
        "    for p_ema, p in zip(ema.parameters(), model.parameters()):\n        p_ema.copy_(decay * p_ema + (1 - decay) * p)\n",
        "import torch\ndef ema_update(ema, model, decay):\n    with torch.no_grad():\n"
        "        for p_ema, p in zip(ema.parameters(), model.parameters()):\n            p_ema.lerp_(p, 1 - decay)\n",
        "def grad_norm(model):\n    total = 0.0\n    for p in model.parameters():\n        p = p.grad.detach()\n"
        "        total += p.norm() ** 2\n    return total ** 0.5\n",
        "def shrink(model, d):\n    for name, p in model.named_parameters():\n        p = p.data\n        p.mul_(d)\n",
        "def sgd(model, lr):\n    for p in model.parameters():\n        p.data = p.data - lr * p.grad\n",
        "def count(model):\n    n = 0\n    for p in model.parameters():\n        n += p.numel()\n    return n\n",
        "def collect(model, ws):\n    for i, w in enumerate(ws):\n        w = w * 2\n",
        "def to_cpu(model):\n    for name, p in model.named_parameters():\n        p = p.detach().cpu()\n",
    ]
    INVALID = [
        Invalid("import torch\n@torch.no_grad()\ndef ema_update(ema, model, decay=0.999):\n"
                "    for ema_p, p in zip(ema.parameters(), model.parameters()):\n        ema_p = decay * ema_p + (1 - decay) * p\n",
                line=5, expected_fix="import torch\n@torch.no_grad()\ndef ema_update(ema, model, decay=0.999):\n"
                "    for ema_p, p in zip(ema.parameters(), model.parameters()):\n"
                "        ema_p.copy_(decay * ema_p + (1 - decay) * p)\n"),
        Invalid("def sgd_step(model, lr):\n    for p in model.parameters():\n        if p.grad is not None:\n"
                "            p = p - lr * p.grad\n", line=4),
        Invalid("def average(avg, model, n):\n    for (k, a), (_, b) in zip(avg.state_dict().items(), model.state_dict().items()):\n"
                "        a = (a * n + b) / (n + 1)\n", line=3),
    ]

    def visit_For(self, node: cst.For) -> None:
        names = self._tensor_names(node.target, self._shape(node.iter, 0))
        if not names:
            return  # no loop variable stands for a parameter / state tensor
        for a in walk_own(node.body, cst.Assign):
            t = a.targets[0].target
            if len(a.targets) != 1 or not isinstance(t, cst.Name) or t.value not in names or not self._update(a.value):
                continue  # not the loop tensor, or a conversion (``p = p.detach()``) rather than a new value
            end = self.get_metadata(PositionProvider, a).end
            inner = [x for x in self.ancestors(a) if isinstance(x, (cst.For, cst.While))]
            inner = inner[:next(i for i, x in enumerate(inner) if x is node)]
            reads = [n for n in walk(node.body) if isinstance(n, cst.Name) and n.value == t.value and n is not t]
            if any((self.get_metadata(PositionProvider, n).start.line, self.get_metadata(PositionProvider, n).start.column)
                   > (end.line, end.column) or any(any(n is y for y in walk(x)) for x in inner) for n in reads):
                continue  # the new value is used (or the assignment is in an inner loop that reads the name)
            exact = (in_no_grad(self, a) or "state_dict" in self.code_for(node.iter)) and all(isinstance(x, (
                cst.BinaryOperation, cst.UnaryOperation, cst.Name, cst.Attribute, cst.Integer, cst.Float)) for x in walk(
                a.value) if isinstance(x, cst.BaseExpression))  # arithmetic: copy_ keeps the intended value
            after = f"{t.value}.copy_({self.code_for(a.value)})"
            self.report(
                a,
                problem=(f"`{t.value} = ...` rebinds the loop variable `{t.value}` and the new value is never used: the "
                         f"tensor it stood for (from `{self.code_for(node.iter)}`) is not changed."),
                impact=("The update is discarded: the parameters (an EMA copy, a manual optimizer step, an average) keep "
                        "their old values and every later use of the model silently sees them."),
                fix=Fix(before=self.code_for(a), after=after if exact else
                        f"{after}  # under torch.no_grad(); an EMA: {t.value}.lerp_(source, 1 - decay)"),
                replacement=cst.Expr(cst.parse_expression(after)) if exact else None,
            )

    def _update(self, value: cst.BaseExpression) -> bool:
        """``value`` computes new values (arithmetic, a torch function, an arithmetic tensor method)."""
        return any(isinstance(x, cst.BinaryOperation) or isinstance(x, cst.Call) and (
            torch_function(self, x) or method_call(x) and method_call(x)[1] in _ARITHMETIC) for x in walk(value))

    def _shape(self, e: cst.BaseExpression, depth: int):
        """What iterating ``e`` yields: ``"T"`` (a parameter/buffer tensor), a tuple of such shapes, or None."""
        if depth > 3:
            return None
        mc = method_call(e)
        if mc and mc[1] in PARAMETER_ITERATORS:
            return "T" if PARAMETER_ITERATORS[mc[1]] == "tensor" else (None, "T")
        if mc and mc[1] in ("values", "items") and method_call(mc[0]) and method_call(mc[0])[1] == "state_dict":
            return "T" if mc[1] == "values" else (None, "T")
        if isinstance(e, cst.Name):
            vals = assigned_values(self, enclosing_function(self, e), e.value)
            return self._shape(vals[0], depth + 1) if len(vals) == 1 else None
        if not isinstance(e, cst.Call) or not isinstance(e.func, (cst.Name, cst.Attribute)):
            return None
        fname = {q.replace("builtins.", "") for q in self.qnames(e.func)}
        args = [self._shape(a.value, depth + 1) for a in e.args if not a.keyword]
        if "zip" in fname:
            return tuple(args)
        if "enumerate" in fname and args:
            return (None, args[0])
        return args[0] if fname & _PASS_THROUGH and len(args) == 1 else None

    def _tensor_names(self, target: cst.BaseExpression, shape) -> List[str]:
        if shape == "T":
            return [target.value] if isinstance(target, cst.Name) else []
        if isinstance(shape, tuple) and isinstance(target, (cst.Tuple, cst.List)) and len(target.elements) == len(shape):
            return [n for e, s in zip(target.elements, shape) for n in self._tensor_names(e.value, s)]
        return []

