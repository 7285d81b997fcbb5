from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._torch import enclosing_loops, method_call, walk_own
from ._training import accumulation, clears, stepped, unconditional_in, writes_grads
from .base import Invalid, Rule


class ZeroGradEveryAccumulationStep(Rule):
    """Gradient accumulation is undone by ``zero_grad()`` on every micro-step.

    What it does:
        Flags ``opt.zero_grad()`` / ``model.zero_grad()`` that runs on every iteration of a loop whose
        optimizer steps all run only when a modulo test on the loop counter passes
        (``if (i + 1) % accum == 0: opt.step()``, or after ``if i % accum: continue``), while a
        ``backward()`` runs on every iteration. A clear inside the stepping branch (or after the
        ``continue`` guard), a clear under its own condition, loops that also step unconditionally
        (a GAN's discriminator) and clears of another model's gradients are not flagged.

    Why is this bad:
        Each micro-step wipes the gradients the earlier micro-steps accumulated, so the step applies
        the gradient of the last micro-batch only: ``accum - 1`` of every ``accum`` batches are
        computed and thrown away, and the effective batch is ``accum`` times smaller than configured
        (``accum`` times smaller still when the loss is divided by ``accum``). Critical: the model
        trains on a fraction of the data with the wrong step size, with no error and a plausible loss
        curve (incorrect results).

    Example:
        for i, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            (criterion(model(x), y) / accum).backward()
            if (i + 1) % accum == 0:
                optimizer.step()

    Use instead:
        for i, (x, y) in enumerate(loader):
            (criterion(model(x), y) / accum).backward()
            if (i + 1) % accum == 0:
                optimizer.step()
                optimizer.zero_grad()
    """

    code = "TR614"
    title = "zero_grad() on every micro-step of gradient accumulation"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    VALID = [
        "def fit(model, opt, loader, crit, accum):\n    for i, (x, y) in enumerate(loader):\n"
        "        (crit(model(x), y) / accum).backward()\n        if (i + 1) % accum == 0:\n            opt.step()\n"
        "            opt.zero_grad()\n",
        "def fit(model, opt, loader, crit, accum):\n    opt.zero_grad()\n    for i, (x, y) in enumerate(loader):\n"
        "        (crit(model(x), y) / accum).backward()\n        if (i + 1) % accum != 0:\n            continue\n"
        "        opt.step()\n        opt.zero_grad()\n",
        "def fit(model, opt, loader, k):\n    for i, x in enumerate(loader):\n        if i % k == 0:\n            opt.zero_grad()\n"
        "        (model(x).mean() / k).backward()\n        if (i + 1) % k == 0:\n            opt.step()\n",
        "def fit(G, D, opt_g, opt_d, loader, n_critic):\n    for i, x in enumerate(loader):\n        opt_d.zero_grad()\n"
        "        D(x).mean().backward()\n        opt_d.step()\n        if i % n_critic == 0:\n            opt_g.zero_grad()\n"
        "            G(x).mean().backward()\n            opt_g.step()\n",
        "def fit(model, opt, loader, log_every):\n    for step, x in enumerate(loader):\n        opt.zero_grad()\n"
        "        model(x).mean().backward()\n        if not bad_grads(model):\n            opt.step()\n"
        "        if step % log_every == 0:\n            print(step)\n",
        "def fit(model, opt, loader, k):\n    for i, x in enumerate(loader):\n        opt.zero_grad()\n"
        "        if (i + 1) % k == 0:\n            model(x).mean().backward()\n            opt.step()\n",
    ]
    INVALID = [
        Invalid("def fit(model, optimizer, loader, crit, accum):\n    for i, (x, y) in enumerate(loader):\n"
                "        optimizer.zero_grad()\n        loss = crit(model(x), y) / accum\n        loss.backward()\n"
                "        if (i + 1) % accum == 0:\n            optimizer.step()\n", line=3),
        Invalid("import torch\nscaler = torch.amp.GradScaler()\nopt = torch.optim.AdamW(net.parameters())\nstep = 0\n"
                "for x in dl:\n    with torch.autocast('cuda'):\n        loss = net(x).mean() / 4\n"
                "    scaler.scale(loss).backward()\n    step += 1\n    is_update = step % 4 == 0\n    if is_update:\n"
                "        scaler.step(opt)\n        scaler.update()\n    net.zero_grad(set_to_none=True)\n", line=14),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        loops = enclosing_loops(self, node)
        if not mc or mc[1] != "zero_grad" or not loops or not isinstance(loops[0], (cst.For, cst.While)):
            return
        loop = loops[0]
        acc = accumulation(self, loop) if unconditional_in(self, node, loop) else None
        if acc is None or acc[1] <= self.line_of(node) <= acc[2]:
            return
        n, lo, hi = acc
        outside = [c for c in walk_own(loop.body, cst.Call) if not lo <= self.line_of(c) <= hi]
        recv = self.code_for(mc[0])
        opt = next((o for c in walk_own(loop.body, cst.Call) if (o := stepped(self, c)) and clears(self, recv, o, node)),
                   None)  # the stepped optimizer whose gradients this clears (a loop may step several)
        if opt is None or not any(writes_grads(self, c, True) for c in outside):
            return
        every = self.code_for(n)
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` runs on every iteration, but `{opt}` is stepped only every `{every}` "
                     "iterations: each micro-step clears the gradients the previous ones accumulated."),
            impact=(f"Each step uses the gradient of the last micro-batch only: {every} - 1 of every {every} batches are "
                    "computed and discarded, and the effective batch and step size are not the configured ones."),
            fix=Fix(before=f"{self.code_for(node)}\nloss.backward()\nif (i + 1) % {every} == 0:\n    {opt}.step()",
                    after=f"loss.backward()\nif (i + 1) % {every} == 0:\n    {opt}.step()\n    {self.code_for(node)}"),
        )
