from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._knowledge import SCALING_OPS
from ._micro_batches import micro_batch_loop
from ._torch import bound_codes, enclosing_function, method_call, walk_own
from ._training import SCALING_ASSIGN, accumulation, backward_loss, loss_may_be_scaled
from .base import Invalid, Rule

class AccumulatedLossNotScaled(Rule):
    """Under gradient accumulation, the loss is not divided by the number of micro-steps.

    What it does:
        In a loop whose optimizer steps all run only when ``(i + 1) % N == 0`` (or ``k == N`` on a counter
        the step resets: gradient accumulation), or in an inner loop over ``N`` micro-batches followed by the
        step, that calls ``loss.backward()`` / ``scaler.scale(loss).backward()`` on every iteration, follows
        the loss back through its assignments in the loop and flags it (where it is computed) when nothing on
        that path divides or multiplies it. Quiet when the loss is divided by anything, multiplied by a non-literal,
        when the step branch rescales ``p.grad``, and when the loss comes from a call that could apply the
        scaling itself: a call that is passed ``N`` (or what it is read from), a function of this document
        that reads ``N``, or an unknown callee when ``N`` is a literal, imported or read from ``self``.
        Torch losses, model calls and local functions that cannot see ``N`` do not scale.

    Why is this bad:
        Gradients add up over the ``N`` backward passes, so each step applies ``N`` times the mean
        gradient of the accumulated batch: the effective learning rate is ``N`` times too large (SGD
        diverges, gradient clipping thresholds mean something else), and the results depend on ``N``.

    Example:
        for i, (x, y) in enumerate(loader):
            loss = criterion(model(x), y)
            loss.backward()
            if (i + 1) % accum == 0:
                optimizer.step()
                optimizer.zero_grad()

    Use instead:
        for i, (x, y) in enumerate(loader):
            loss = criterion(model(x), y) / accum
            loss.backward()
            if (i + 1) % accum == 0:
                optimizer.step()
                optimizer.zero_grad()
    """

    code = "TR615"
    title = "Accumulated loss not divided by the accumulation steps"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "def fit(model, opt, loader, crit, accum_steps):\n    for step, batch in enumerate(loader):\n"
        "        loss = model(**batch).loss\n        loss = loss / accum_steps\n        loss.backward()\n"
        "        if (step + 1) % accum_steps == 0:\n            opt.step()\n            opt.zero_grad()\n",
        "def fit(model, opt, scaler, loader, crit, k):\n    for i, (x, y) in enumerate(loader):\n"
        "        scaler.scale(crit(model(x), y) / k).backward()\n        if (i + 1) % k == 0:\n"
        "            scaler.unscale_(opt)\n            scaler.step(opt)\n            scaler.update()\n            opt.zero_grad()\n",
        "def fit(model, opt, loader, accum):\n    for i, x in enumerate(loader):\n        loss = compute_loss(model, x, accum)\n"
        "        loss.backward()\n        if (i + 1) % accum == 0:\n            opt.step()\n            opt.zero_grad()\n",
        "def fit(model, opt, loader, accum):\n    for i, x in enumerate(loader):\n        model(x).mean().backward()\n"
        "        if (i + 1) % accum == 0:\n            for p in model.parameters():\n                p.grad /= accum\n"
        "            opt.step()\n            opt.zero_grad()\n",
        "def fit(self, loader):\n    for i, x in enumerate(loader):\n        loss = self.training_loss(x)\n        loss.backward()\n"
        "        if (i + 1) % self.accum == 0:\n            self.opt.step()\n            self.opt.zero_grad()\n",
        "def fit(model, opt, loader, crit, n_critic):\n    for i, x in enumerate(loader):\n        loss = crit(model(x))\n"
        "        loss.backward()\n        opt.step()\n        if i % n_critic == 0:\n            print(i)\n",
        "def fit(model, opt, loader, accum):\n    for i, x in enumerate(loader):\n        loss = model(x).mean()\n"
        "        loss *= 1.0 / accum\n        loss.backward()\n        if (i + 1) % accum == 0:\n            opt.step()\n"
        "            opt.zero_grad()\n",
        "def fit(model, opt, get_batch, iters, accum):\n    for it in range(iters):\n        for _ in range(accum):\n"
        "            x, y = get_batch()\n            loss = model(x, y) / accum\n            loss.backward()\n"
        "        opt.step()\n        opt.zero_grad()\n",
        "def fit(model, opt, tasks):\n    for batch in tasks:\n        for head in range(3):\n"
        "            model(batch, head).backward()\n        opt.step()\n        opt.zero_grad()\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\ndef fit(model, optimizer, loader, accum):\n    crit = nn.CrossEntropyLoss()\n"
                "    for i, (x, y) in enumerate(loader):\n        loss = crit(model(x), y)\n        loss.backward()\n"
                "        if (i + 1) % accum == 0:\n            optimizer.step()\n            optimizer.zero_grad()\n", line=5),
        Invalid("import torch\nimport torch.nn.functional as F\nACCUM = 8\ndef lm_loss(logits, y):\n"
                "    return F.cross_entropy(logits.flatten(0, 1), y.flatten())\nscaler = torch.amp.GradScaler()\n"
                "for it, (x, y) in enumerate(dl):\n    with torch.autocast('cuda'):\n        loss = lm_loss(model(x).logits, y)\n"
                "    scaler.scale(loss).backward()\n    if (it + 1) % ACCUM == 0:\n        scaler.step(optimizer)\n"
                "        scaler.update()\n        optimizer.zero_grad()\n", line=9),
        Invalid("import torch.nn.functional as F\ndef fit(model, loader, opt, accum_steps):\n    micro = 0\n"
                "    for x, y in loader:\n        loss = F.cross_entropy(model(x), y)\n        loss.backward()\n"
                "        micro += 1\n        if micro == accum_steps:\n            opt.step()\n            opt.zero_grad()\n"
                "            micro = 0\n", line=5),
        Invalid("def fit(model, opt, get_batch, max_iters, grad_accum_steps):\n    for it in range(max_iters):\n"
                "        for micro_step in range(grad_accum_steps):\n            X, Y = get_batch('train')\n"
                "            logits, loss = model(X, Y)\n            loss.backward()\n        opt.step()\n"
                "        opt.zero_grad(set_to_none=True)\n", line=5),
    ]

    def visit_For(self, node: cst.For) -> None:
        self._check(node)

    def visit_While(self, node: cst.While) -> None:
        self._check(node)

    def _check(self, loop) -> None:
        acc = accumulation(self, loop) or micro_batch_loop(self, loop)
        if acc is None:
            return
        n, lo, hi = acc
        gated = [x for x in walk_own(loop.body, (cst.AugAssign, cst.Call)) if lo <= self.line_of(x) <= hi]
        if any(".grad" in self.code_for(x.target) and isinstance(x.operator, SCALING_ASSIGN) if isinstance(
                x, cst.AugAssign) else bool(mc := method_call(x)) and mc[1] in SCALING_OPS and ".grad" in self.code_for(mc[0])
                for x in gated):
            return  # the step branch rescales the gradients instead
        fn = enclosing_function(self, loop)
        for call in walk_own(loop.body, cst.Call):
            bl = backward_loss(self, call) if not lo <= self.line_of(call) <= hi else None
            if bl is None or loss_may_be_scaled(self, fn, bl[0], n):
                continue
            every = self.code_for(n)
            self.report(
                self._defined_at(loop, bl[0], call),
                problem=(f"`{self.code_for(bl[0])}` is back-propagated on every micro-step while the optimizer steps every "
                         f"`{every}` iterations, and nothing on its path divides it by `{every}`."),
                impact=(f"The {every} backward passes add up: each step applies {every} times the mean gradient, so the "
                        "effective learning rate (and any clipping threshold) is multiplied by the accumulation count."),
                fix=Fix(before=f"loss = criterion(out, y)\n{self.code_for(call)}",
                        after=f"loss = criterion(out, y) / {every}\n{self.code_for(call)}"),
            )

    def _defined_at(self, loop, loss: cst.BaseExpression, call: cst.Call) -> cst.CSTNode:
        """Where the division goes: the last ``loss = ...`` of the loop body before the backward (the
        backward itself when the loss is not a name assigned there)."""
        line = self.line_of(call)
        if not isinstance(loss, cst.Name):
            return call
        defs = [a for a in walk_own(loop.body, cst.Assign) if self.line_of(a) < line and any(
            loss.value in bound_codes(self, t.target) for t in a.targets)]
        return max(defs, key=self.line_of) if defs else call
