from __future__ import annotations

from typing import List, Optional

import libcst as cst

from ..findings import Fix
from ._flow import in_no_grad
from ._training import backward_loss, optimizers, param_roots, stepped, straight_line
from ._torch import dotted_name, method_call, walk
from .base import Invalid, Rule


class SteppedModelDetachedFromLoss(Rule):
    """An optimizer steps a model whose output reaches the loss only through ``.detach()``.

    What it does:
        For ``opt.step()`` where ``opt`` was built on ``model.parameters()``, follows the loss of the
        ``backward()`` just before it through the names it is computed from. When ``model``'s output
        takes part only as ``.detach()`` (``netD(fake.detach())`` in a generator update), the detach
        is reported; so is a parameter-only ``model.method()`` (no inputs) computed under
        ``no_grad`` and then used in the loss (those parameters never get a gradient).

    Why is this bad:
        ``.detach()`` cuts the graph: the backward writes no gradient into ``model``'s parameters, so
        the optimizer steps with zero (or stale, or None) gradients and the model never learns, while
        the loss still looks normal. In a GAN the generator stays at its initialisation.

    Example:
        fake = netG(noise)
        lossG = criterion(netD(fake.detach()), ones)
        lossG.backward()
        optG.step()

    Use instead:
        lossG = criterion(netD(fake), ones)        # detach only for the discriminator's update
    """

    code = "TR309"
    title = "Optimizer steps a model whose output reaches the loss only through .detach()"
    category = "gradient-flow"
    severity = {"research": "critical", "production": "critical"}
    VALID = [
        "import torch\ndef step(netG, netD, noise, real, crit, optD, optG):\n    optD = torch.optim.Adam(netD.parameters())\n"
        "    optG = torch.optim.Adam(netG.parameters())\n    fake = netG(noise)\n"
        "    lossD = crit(netD(real), 1) + crit(netD(fake.detach()), 0)\n    lossD.backward()\n    optD.step()\n"
        "    lossG = crit(netD(fake), 1)\n    lossG.backward()\n    optG.step()\n",
        "import torch\ndef fit(student, teacher, x):\n    opt = torch.optim.SGD(student.parameters(), lr=0.1)\n"
        "    target = teacher(x).detach()\n    loss = ((student(x) - target) ** 2).mean()\n    loss.backward()\n    opt.step()\n",
    ]
    INVALID = [
        Invalid("import torch\ndef step(netG, netD, noise, crit):\n    optG = torch.optim.Adam(netG.parameters())\n"
                "    fake = netG(noise)\n    out = netD(fake.detach())\n    lossG = crit(out, 1)\n    lossG.backward()\n"
                "    optG.step()\n", line=5),
        Invalid("import torch\ndef fit(model, xs):\n    opt = torch.optim.Adam(model.parameters())\n    for x in xs:\n"
                "        with torch.no_grad():\n            trans = model.transitions()\n"
                "        loss = model.nll(x, trans)\n        loss.backward()\n        opt.step()\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        opt = stepped(self, node)
        if opt is None:
            return
        roots = param_roots(self, optimizers(self).get(opt))
        if len(roots) != 1:
            return
        model = next(iter(roots))
        loss = self._loss_before(node)
        if loss is None:
            return
        uses: List[Optional[cst.Call]] = []  # None: a use without detach; a Call: the detach it went through
        frozen: List[cst.Call] = []  # model.method() with no inputs, computed under no_grad
        self._uses(model, loss, None, node, uses, set(), 0, frozen)
        if frozen:
            f = frozen[0]
            block = next((a for a in self.ancestors(f) if isinstance(a, cst.With)), f)
            self.report(
                block, title="Parameter-only computation under no_grad feeds the loss",
                problem=(f"`{self.code_for(f)}` depends only on `{model}`'s parameters, but it is computed under "
                         f"no_grad and then used in the loss that `{opt}` steps on."),
                impact=(f"The parameters behind `{self.code_for(f)}` get no gradient: `{opt}` never trains them, "
                        "while the loss looks normal."),
                fix=Fix(before=f"with torch.no_grad():\n    x = {self.code_for(f)}", after=f"x = {self.code_for(f)}"),
            )
        elif uses and all(u is not None for u in uses):
            d = uses[0]
            self.report(
                d,
                problem=(f"`{opt}` steps `{model}`, but `{model}`'s output reaches the loss only through "
                         f"`{self.code_for(d)}`: the backward writes no gradient into `{model}`."),
                impact=(f"`{model}` never learns: the optimizer steps with zero/None gradients while the loss "
                        "looks normal (a GAN generator stays at its initialisation)."),
                fix=Fix(before=self.code_for(d), after=self.code_for(method_call(d)[0])),
            )

    def _loss_before(self, step: cst.Call) -> Optional[cst.BaseExpression]:
        items, i = straight_line(self, step)
        for it in reversed(items[:i] if i is not None else []):
            for c in walk(it, cst.Call):
                bl = backward_loss(self, c)
                if bl is not None:
                    return bl[0]
        return None

    def _uses(self, model: str, expr, detach, at, out, seen, depth, frozen) -> None:
        """Record each way ``expr`` reaches a call of ``model`` (``None``: not detached; else the detach)."""
        if depth > 8:
            return
        if isinstance(expr, cst.Call):
            mc = method_call(expr)
            if mc and mc[1] == "detach":
                return self._uses(model, mc[0], detach or expr, at, out, seen, depth + 1, frozen)
            callee = dotted_name(expr.func) or ""
            if callee == model or callee.startswith(model + "."):
                out.append(detach)
        if isinstance(expr, cst.Name):
            assign = self._assigned_before(expr.value, at)
            if assign is None or id(assign) in seen:
                return
            seen.add(id(assign))
            value, at = assign.value, assign  # ``nll = nll / n``: the earlier ``nll`` is above this line
            if isinstance(value, cst.Call) and not value.args and (dotted_name(value.func) or "").startswith(
                    model + ".") and in_no_grad(self, value):
                frozen.append(value)  # a parameter-only computation frozen by no_grad
            elif value is not None:
                self._uses(model, value, detach, at, out, seen, depth + 1, frozen)
            return
        for child in expr.children:
            if isinstance(child, cst.BaseExpression) or isinstance(child, (cst.Arg, cst.Element, cst.SubscriptElement,
                                                                            cst.Index, cst.Comparison, cst.ComparisonTarget)):
                self._uses(model, child, detach, at, out, seen, depth + 1, frozen)

    def _assigned_before(self, name: str, at: cst.CSTNode) -> Optional[cst.Assign]:
        """The last plain assignment to ``name`` above ``at`` in its function (or module)."""
        scope = next((a for a in self.ancestors(at) if isinstance(a, cst.FunctionDef)), self.ctx.module)
        key = ("tr309-assignments", id(scope))
        if key not in self.ctx.cache:  # name -> [(line, assign)], built once per scope
            index = {}
            for a in walk(scope, cst.Assign):
                for n in {x.value for t in a.targets for x in walk(t.target, cst.Name)}:
                    index.setdefault(n, []).append((self.line_of(a), a))
            self.ctx.cache[key] = index
        line = self.line_of(at)
        before = [(ln, a) for ln, a in self.ctx.cache[key].get(name, []) if ln < line]
        return max(before, key=lambda p: p[0])[1] if before else None
