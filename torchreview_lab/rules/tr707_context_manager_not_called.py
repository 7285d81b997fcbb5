from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import assigned_values, dotted_name, enclosing_function
from .base import Invalid, Rule

# Grad-mode and autocast context managers, and the ``()`` that makes each one usable (None: needs an argument).
_MANAGERS = {
    "no_grad": "()", "enable_grad": "()", "inference_mode": "()", "autograd.no_grad": "()",
    "autograd.enable_grad": "()", "autograd.inference_mode": "()", "autograd.grad_mode.no_grad": "()",
    "cuda.amp.autocast": "()", "cpu.amp.autocast": "()",
    "autocast": None, "amp.autocast": None, "set_grad_enabled": None, "autograd.set_grad_enabled": None,
}
_NEEDS_ARG = {"autocast": '("cuda")', "amp.autocast": '("cuda")', "set_grad_enabled": "(False)",
              "autograd.set_grad_enabled": "(False)"}


class ContextManagerNotCalled(Rule):
    """``with torch.no_grad:`` without parentheses: the block raises instead of disabling gradients.

    What it does:
        Flags ``with`` items that name a grad-mode or autocast context manager without calling it
        (``torch.no_grad``, ``torch.enable_grad``, ``torch.inference_mode``, ``torch.autocast``,
        ``torch.cuda.amp.autocast``, ``torch.set_grad_enabled``), directly or through a name assigned
        one of them (``ctx = nullcontext() if train else torch.no_grad``), and calls that lack the
        required argument (``torch.set_grad_enabled()``, ``torch.autocast()``). The autofix adds ``()``
        where no argument is required. Decorators (``@torch.no_grad``) are fine and not flagged.

    Why is this bad:
        On torch 2.x these are classes: ``with torch.no_grad:`` enters the class itself and raises
        ``TypeError: 'type' object does not support the context manager protocol`` (``AttributeError:
        __enter__`` on older Pythons). The code path crashes the first time it runs, often a rarely used
        branch (``freeze=True``, evaluation only), and ``set_grad_enabled()``/``autocast()`` without their
        argument raise ``TypeError`` the same way.

    Example:
        with torch.no_grad:
            preds = model(x)

    Use instead:
        with torch.no_grad():
            preds = model(x)
    """

    code = "TR707"
    title = "Grad-mode or autocast context manager used without calling it"
    category = "robustness"
    severity = {"research": "critical", "production": "critical"}
    autofix = True
    VALID = [
        "import torch\ndef f(model, x):\n    with torch.no_grad():\n        return model(x)\n",
        "import torch\n@torch.no_grad\ndef f(model, x):\n    return model(x)\n",
        "import torch\nfrom contextlib import nullcontext\ndef f(model, x, train):\n"
        "    ctx = nullcontext() if train else torch.no_grad()\n    with ctx, torch.autocast('cuda'):\n        return model(x)\n",
        "import torch\ndef f(model, x, train):\n    with torch.set_grad_enabled(train):\n        return model(x)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(model, x):\n    with torch.no_grad:\n        return model(x)\n", line=3,
                expected_fix="import torch\ndef f(model, x):\n    with torch.no_grad():\n        return model(x)\n"),
        Invalid("from torch import inference_mode\ndef f(model, x):\n    with inference_mode:\n        return model(x)\n",
                line=3),
        Invalid("import torch\nfrom contextlib import nullcontext\ndef f(model, x, freeze):\n"
                "    ctx = nullcontext() if not freeze else torch.no_grad\n    with ctx:\n        return model(x)\n", line=5),
        Invalid("import torch\ndef f(model, x):\n    with torch.set_grad_enabled():\n        return model(x)\n", line=3),
        Invalid("import torch\ndef f(model, x):\n    with torch.autocast:\n        return model(x)\n", line=3),
    ]

    def _manager(self, expr: cst.BaseExpression) -> Optional[str]:
        """``"no_grad"`` when ``expr`` names ``torch.no_grad`` (any alias) without calling it."""
        if not isinstance(expr, (cst.Name, cst.Attribute)):
            return None
        names = self.qnames(expr) or ({dotted_name(expr)} if (dotted_name(expr) or "").startswith("torch.") else set())
        return next((q[6:] for q in names if q.startswith("torch.") and q[6:] in _MANAGERS), None)

    def visit_WithItem(self, node: cst.WithItem) -> None:
        expr = node.item
        if isinstance(expr, cst.Call):
            name = self._manager(expr.func)
            if name in _NEEDS_ARG and not expr.args:
                self._report(expr, name, f"`{self.code_for(expr)}` lacks its required argument",
                             f"{self.code_for(expr.func)}{_NEEDS_ARG[name]}", None)
            return
        name = self._manager(expr)
        if name is not None:
            called = _MANAGERS[name]
            self._report(expr, name, f"`with {self.code_for(expr)}:` enters the class, not a context manager",
                         f"{self.code_for(expr)}{called or _NEEDS_ARG[name]}",
                         cst.Call(func=expr) if called else None)
            return
        if isinstance(expr, cst.Name):
            fn = enclosing_function(self, node)
            for v in assigned_values(self, fn, expr.value):
                for branch in (v.body, v.orelse) if isinstance(v, cst.IfExp) else (v,):
                    name = self._manager(branch)
                    if name is not None:
                        self._report(expr, name, f"`{expr.value}` can hold `{self.code_for(branch)}`, the class "
                                     "itself, and `with` cannot enter it",
                                     f"{self.code_for(branch)}{_MANAGERS[name] or _NEEDS_ARG[name]}  # where "
                                     f"`{expr.value}` is assigned", None)
                        return

    def _report(self, node, name: str, what: str, after: str, repl) -> None:
        self.report(
            node,
            problem=f"{what}: `torch.{name}` is not called.",
            impact=("The block raises TypeError ('type' object does not support the context manager protocol, or a "
                    "missing argument) the first time it runs: the code path is broken, often one used rarely "
                    "(freezing, evaluation)."),
            fix=Fix(before=self.code_for(node), after=after),
            replacement=repl,
        )
