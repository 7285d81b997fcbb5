from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._realcode import is_module_expr
from .base import Invalid, Rule

# Misspellings of the autograd flag and what was meant.
_TYPOS = {"require_grad": "requires_grad", "requires_gradient": "requires_grad", "require_grads": "requires_grad",
          "requires_grads": "requires_grad", "requieres_grad": "requires_grad", "requires_grad_": "requires_grad"}
_METHOD_TYPOS = {"require_grad_": "requires_grad_", "require_grad": "requires_grad_", "requires_grads_": "requires_grad_"}


class RequiresGradTypo(Rule):
    """``requires_grad`` is misspelled, so gradients are silently not tracked.

    What it does:
        Flags assignments to ``x.require_grad`` (and similar misspellings), assigning to the
        method ``x.requires_grad_ = True``, and calls such as ``x.require_grad_()`` or
        ``torch.zeros(3, require_grad=True)``. Also flags ``module.requires_grad = False`` on an
        ``nn.Module`` (a name bound to ``nn.X(...)`` or a module class of the document, a loop variable
        over ``model.modules()``, ``self.layer`` assigned a module): it sets a plain attribute on the
        module and leaves its parameters trainable. The autofix calls ``module.requires_grad_(False)``.

    Why is this bad:
        Tensors accept arbitrary Python attributes, so ``x.require_grad = True`` creates a new,
        meaningless attribute and ``x.requires_grad`` stays False: the parameter is never trained
        and no error is raised. ``x.requires_grad_ = True`` shadows the method the same way.

    Example:
        w = torch.randn(3, 3)
        w.require_grad = True

    Use instead:
        w.requires_grad_(True)        # or torch.randn(3, 3, requires_grad=True)
    """

    code = "TR304"
    title = "Misspelled requires_grad silently does nothing"
    category = "gradient-flow"
    severity = {"research": "high", "production": "high"}
    autofix = True
    VALID = [
        "import torch\nw = torch.randn(3, 3)\nw.requires_grad = True\n",
        "import torch\nw = torch.randn(3, requires_grad=True)\nw.requires_grad_(False)\n",
        "import torch\nnet = torch.nn.Linear(3, 3)\nnet.weight.requires_grad = False\nfor p in net.parameters():\n"
        "    p.requires_grad = False\n",
    ]
    INVALID = [
        Invalid("import torch\nw = torch.randn(3, 3)\nw.require_grad = True\n", line=3,
                expected_fix="import torch\nw = torch.randn(3, 3)\nw.requires_grad = True\n"),
        Invalid("import torch\nw = torch.zeros(3, require_grad=True)\n", line=2),
        Invalid("def f(x):\n    x.requires_grad_ = True\n    return x\n", line=2),
        Invalid("def f(x):\n    return x.require_grad_()\n", line=2),
        Invalid("from torch import nn\ndef freeze_bn(model):\n    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]\n"
                "    for bn in bns:\n        bn.requires_grad = False\n", line=5,
                expected_fix="from torch import nn\ndef freeze_bn(model):\n    bns = [m for m in model.modules() if "
                "isinstance(m, nn.BatchNorm1d)]\n    for bn in bns:\n        bn.requires_grad_(False)\n"),
        Invalid("import torch.nn as nn\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.enc = nn.Linear(4, 4)\n        self.enc.requires_grad = False\n", line=6),
    ]

    def visit_Assign(self, node: cst.Assign) -> None:
        t = node.targets[0].target if len(node.targets) == 1 else None
        if not (isinstance(t, cst.Attribute) and t.attr.value == "requires_grad" and is_module_expr(self, t.value)) \
                or "self.requires_grad" in self.ctx.source:  # a module class that keeps its own flag
            return
        call = cst.Call(func=t.with_changes(attr=cst.Name("requires_grad_")), args=[cst.Arg(node.value)])
        self.report(
            node,
            problem=(f"`{self.code_for(node).strip()}` sets a plain attribute on the nn.Module `{self.code_for(t.value)}`: "
                     "its parameters keep their own `requires_grad`."),
            impact=("The layer is not frozen: its weights still get gradients and the optimizer keeps updating them "
                    "(and spending memory on their gradients), silently."),
            fix=Fix(before=self.code_for(node).strip(), after=self.code_for(call)),
            title="requires_grad assigned on an nn.Module silently does nothing", replacement=cst.Expr(call),
        )

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        t = node.target
        if isinstance(t, cst.Attribute) and t.attr.value in _TYPOS:
            good = _TYPOS[t.attr.value]
            self._report(t, f"`{self.code_for(t)}`", good, t.with_changes(attr=cst.Name(good)))

    def visit_Call(self, node: cst.Call) -> None:
        f = node.func
        if isinstance(f, cst.Attribute) and f.attr.value in _METHOD_TYPOS:
            good = _METHOD_TYPOS[f.attr.value]
            self._report(f, f"`{self.code_for(node)}`", good, f.with_changes(attr=cst.Name(good)))
        for a in node.args:
            if a.keyword is not None and a.keyword.value in _TYPOS and a.keyword.value != "requires_grad_":
                self._report(a.keyword, f"the keyword `{a.keyword.value}=`", "requires_grad",
                             a.keyword.with_changes(value="requires_grad"))

    def _report(self, node, what: str, good: str, repl) -> None:
        self.report(
            node,
            problem=f"{what} is a misspelling of `{good}`: autograd never sees it.",
            impact=("The tensor keeps requires_grad=False: it is never trained and no error is raised "
                    "(or, for a factory keyword, the call raises TypeError)."),
            fix=Fix(before=self.code_for(node), after=self.code_for(repl)),
            replacement=repl,
        )
