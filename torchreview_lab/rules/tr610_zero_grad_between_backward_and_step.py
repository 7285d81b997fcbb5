from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._torch import enclosing_function, enclosing_loops, method_call, walk_own
from ._training import EXITS, clears, param_roots, stepped, straight_line, writes_grads
from .base import Invalid, Rule


class ZeroGradBetweenBackwardAndStep(Rule):
    """Gradients are cleared between ``backward()`` and the optimizer step.

    What it does:
        In one straight-line block, flags ``opt.zero_grad()`` / ``model.zero_grad()`` / a loop setting
        ``p.grad = None`` over ``model.parameters()`` that comes after a ``backward()`` and is followed by
        ``opt.step()`` / ``scaler.step(opt)`` of the same parameters with no backward in between. A clear
        in another branch, a clear after the step, a second backward before the step and
        ``opt.step(closure)`` are not flagged.

    Why is this bad:
        The step sees the cleared gradients: with ``set_to_none=True`` (the default) every parameter is
        skipped, otherwise only momentum and weight decay move the weights. The model never learns from
        the data, with no error raised.

    Example:
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()

    Use instead:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    """

    code = "TR610"
    title = "Gradients cleared between backward() and the optimizer step"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    VALID = [
        "def fit(model, opt, data):\n    for x in data:\n        opt.zero_grad()\n        model(x).sum().backward()\n        opt.step()\n",
        "def fit(model, opt, data):\n    for x in data:\n        model(x).sum().backward()\n        opt.step()\n        opt.zero_grad()\n",
        "def fit(model, opt, data, train):\n    for x in data:\n        model(x).sum().backward()\n        if train:\n"
        "            opt.step()\n        else:\n            opt.zero_grad()\n",
        "def fit(model, opt, x, y):\n    model(x).sum().backward()\n    opt.zero_grad()\n    model(y).sum().backward()\n    opt.step()\n",
        "import torch\nopt = torch.optim.LBFGS(model.parameters())\nloss_fn(model(x)).backward()\ndef closure():\n"
        "    opt.zero_grad()\n    loss = loss_fn(model(x))\n    loss.backward()\n    return loss\nopt.zero_grad()\nopt.step(closure)\n",
        "from torch.optim import Adam\nopt_d = Adam(D.parameters())\nd_loss.backward()\nG.zero_grad()\nopt_d.step()\n",
        "def fit(g, d, opt_g, opt_d, x):\n    d(x).mean().backward()\n    opt_g.zero_grad()\n    opt_d.step()\n    opt_d.zero_grad()\n",
    ]
    INVALID = [
        Invalid("def fit(model, optimizer, loader, crit):\n    for x, y in loader:\n        loss = crit(model(x), y)\n"
                "        loss.backward()\n        optimizer.zero_grad()\n        optimizer.step()\n", line=5),
        Invalid("import torch as th\nopt = th.optim.SGD(net.parameters(), lr=0.1)\nfor xb in dl:\n    net(xb).mean().backward()\n"
                "    net.zero_grad(set_to_none=True)\n    print('step')\n    opt.step()\n", line=5),
        Invalid("def step(self, x):\n    with autocast():\n        loss = self.model(x).mean()\n    self.scaler.scale(loss).backward()\n"
                "    self.optimizer.zero_grad()\n    self.scaler.step(self.optimizer)\n    self.scaler.update()\n", line=5),
        Invalid("from torch.optim import SGD\nopt = SGD(model.parameters())\nmodel(x).sum().backward()\n"
                "for p in model.parameters():\n    p.grad = None\nopt.step()\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if method_call(node) and method_call(node)[1] == "zero_grad":
            self._check(node, self.code_for(method_call(node)[0]))

    def visit_For(self, node: cst.For) -> None:  # for p in model.parameters(): p.grad = None
        roots, grad = param_roots(self, node.iter), self.code_for(node.target) + ".grad"
        if len(roots) == 1 and any(self.code_for(n) in (f"{grad} = None", f"{grad}.zero_()") for n in walk_own(
                node.body, (cst.Assign, cst.Call))):
            self._check(node, roots.pop())

    def _check(self, node: cst.CSTNode, recv: str) -> None:
        its, k = straight_line(self, node)
        for it in its[k + 1:] if k is not None else []:
            if isinstance(it, EXITS) or writes_grads(self, it, strict=False):
                return
            opt = next((o for c in walk_own(it, cst.Call) if (o := stepped(self, c)) and clears(self, recv, o, node)
                        and not isinstance(it, (cst.FunctionDef, cst.ClassDef))), None)
            if opt is not None:
                break
        else:
            return
        fn, line = enclosing_function(self, node) or self.ctx.module, self.line_of(node)
        if not writes_grads(self, fn, strict=True) or not any(writes_grads(self, lp.body, strict=True) for lp in
                enclosing_loops(self, node) if isinstance(lp, (cst.For, cst.While))) and not any(
                self.line_of(c) < line and writes_grads(self, c, strict=True) for c in walk_own(fn, cst.Call)):
            return  # no backward before the clear
        what = self.code_for(node) if isinstance(node, cst.Call) else f"setting `.grad = None` on `{recv}.parameters()`"
        self.report(
            node,
            problem=(f"`{what}` clears the gradients after `backward()` and before `{opt}` is stepped, with no "
                     "backward in between: the step uses empty gradients."),
            impact=("The optimizer skips every parameter whose grad is None (or applies zero gradients, so only momentum "
                    "and weight decay move the weights): the model silently never learns from the data."),
            fix=Fix(before="loss.backward()\noptimizer.zero_grad()\noptimizer.step()",
                    after="optimizer.zero_grad()\nloss.backward()\noptimizer.step()"),
        )
