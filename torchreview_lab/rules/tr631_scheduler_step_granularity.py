from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._loops import runs_step
from ._schedulers import chains, is_scheduler, is_scheduler_name, schedule_kind, scheduler_constructions, step_level
from ._torch import method_call, walk_own
from ._training import stepped, straight_line
from .base import Invalid, Rule


class SchedulerStepGranularity(Rule):
    """An LR scheduler is stepped per epoch while sized in optimizer steps, or per batch while sized in epochs.

    What it does:
        Finds ``sched.step()`` (no argument) and the scheduler it steps (built in the function, on ``self`` or
        passed in by the document's callers). Flags a schedule whose length is provably in optimizer steps
        (``OneCycleLR(epochs=..., steps_per_epoch=...)``, ``T_max``/``total_iters``/``total_steps`` computed with
        ``len(loader)`` or a ``*steps``/``*iters`` name, transformers' ``get_*_schedule_with_warmup`` with such a
        ``num_training_steps``) stepped once per epoch (in the epoch loop, outside the loop over batches, or in a
        per-epoch function after its batch loop); and one sized in epochs (``StepLR(step_size=<epochs>)``,
        ``MultiStepLR(milestones=<epochs>)``, ``CosineAnnealingLR(T_max=epochs)``, ``ExponentialLR(gamma<0.99)``)
        stepped on every batch. Literal or unnamed lengths are not judged. Also flags (medium) a scheduler stepped
        before the optimizer step of the same iteration.

    Why is this bad:
        A schedule advances one position per ``step()``. Sized in steps but stepped per epoch, it sees only
        ``epochs`` of its ``epochs * len(loader)`` positions: one-cycle never reaches its peak, warmup never ends,
        cosine never anneals. Sized in epochs but stepped per batch, it decays ``len(loader)`` times too fast:
        the LR collapses within the first epoch. Stepping the scheduler before the optimizer skips its first value.

    Example:
        sched = OneCycleLR(opt, max_lr=1e-3, total_steps=epochs * len(loader))
        for epoch in range(epochs):
            for x, y in loader:
                ...
                opt.step()
            sched.step()

    Use instead:
        for epoch in range(epochs):
            for x, y in loader:
                ...
                opt.step()
                sched.step()
    """

    code = "TR631"
    title = "LR scheduler stepped at the wrong granularity"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef fit(model, opt, loader, epochs):\n"
        "    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=epochs * len(loader))\n"
        "    for epoch in range(epochs):\n        for x in loader:\n            model(x).sum().backward()\n"
        "            opt.step()\n            opt.zero_grad()\n            sched.step()\n",
        "from torch.optim.lr_scheduler import StepLR\ndef fit(model, opt, loader, args):\n"
        "    sched = StepLR(opt, step_size=args.decay_epochs)\n    for epoch in range(args.epochs):\n"
        "        for x in loader:\n            model(x).sum().backward()\n            opt.step()\n"
        "            opt.zero_grad()\n        sched.step()\n",
        "from torch.optim.lr_scheduler import StepLR\ndef fit(model, opt, loader):\n    sched = StepLR(opt, 30)\n"
        "    for x in loader:\n        model(x).sum().backward()\n        opt.step()\n        sched.step()\n",
        "import torch\ndef fit(model, opt, loader, epochs):\n"
        "    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)\n    for epoch in range(epochs):\n"
        "        train_one_epoch(model, opt, loader)\n        sched.step()\n",
        "import torch\ndef fit(model, opt, loader, epochs, accum):\n"
        "    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=epochs * len(loader) // accum)\n"
        "    for epoch in range(epochs):\n        for i, x in enumerate(loader):\n            (model(x).sum() / accum).backward()\n"
        "            if (i + 1) % accum == 0:\n                opt.step()\n                opt.zero_grad()\n"
        "                sched.step()\n",
        "import torch\ndef fit(model, opt, loader, epochs):\n    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)\n"
        "    for epoch in range(epochs):\n        for i, x in enumerate(loader):\n            model(x).sum().backward()\n"
        "            opt.step()\n            opt.zero_grad()\n            if i == len(loader) - 1:\n                sched.step()\n",
    ]
    INVALID = [
        Invalid("import torch\ndef fit(model, opt, loader, epochs):\n"
                "    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=epochs * len(loader))\n"
                "    for epoch in range(epochs):\n        for x in loader:\n            model(x).sum().backward()\n"
                "            opt.step()\n            opt.zero_grad()\n        sched.step()\n", line=9),
        Invalid("import torch\nfrom torch.optim.lr_scheduler import StepLR\n"
                "def train_one_epoch(model, loader, opt, scheduler):\n    for x, y in loader:\n"
                "        torch.nn.functional.cross_entropy(model(x), y).backward()\n        opt.step()\n"
                "        opt.zero_grad()\n        scheduler.step()\ndef main(model, opt, loader, args):\n"
                "    scheduler = StepLR(opt, step_size=args.lr_step_epochs, gamma=0.1)\n    for epoch in range(args.epochs):\n"
                "        train_one_epoch(model, loader, opt, scheduler)\n", line=8),
        Invalid("from transformers import get_linear_schedule_with_warmup\nclass Trainer:\n"
                "    def __init__(self, model, optimizer, loader, epochs):\n        self.model, self.optimizer = model, optimizer\n"
                "        self.scheduler = get_linear_schedule_with_warmup(optimizer, 100, epochs * len(loader))\n"
                "    def train_epoch(self, loader):\n        for batch in loader:\n            self.model(**batch).loss.backward()\n"
                "            self.optimizer.step()\n            self.optimizer.zero_grad()\n        self.scheduler.step()\n"
                "    def fit(self, loader, epochs):\n        for _ in range(epochs):\n            self.train_epoch(loader)\n",
                line=11),
        Invalid("import torch\ndef fit(model, opt, loader):\n    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)\n"
                "    for x in loader:\n        sched.step()\n        model(x).sum().backward()\n        opt.step()\n"
                "        opt.zero_grad()\n", line=5),
        Invalid("from torch.optim.lr_scheduler import MultiStepLR\ndef fit(model, opt, loader, args):\n"
                "    sched = MultiStepLR(opt, milestones=[args.epochs // 2, args.epochs * 3 // 4])\n"
                "    for epoch in range(args.epochs):\n        for x in loader:\n            model(x).sum().backward()\n"
                "            opt.step()\n            opt.zero_grad()\n            sched.step()\n", line=9),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if mc is None or mc[1] != "step" or node.args:
            return
        made = scheduler_constructions(self, mc[0])
        if not (all(is_scheduler(self, m) for m, _ in made) if made else is_scheduler_name(mc[0])):
            return
        kinds = {schedule_kind(self, m, fn) for m, fn in made}
        kind = kinds.pop() if len(kinds) == 1 else None
        level, loop = step_level(self, node)
        if kind is not None and kind[0].startswith("steps") and level == "epoch" and (
                kind[0] == "steps!" or not kind[2] & chains(getattr(loop, "iter", loop))):  # not the loop's own count
            return self.report(
                node,
                problem=(f"`{self.code_for(node)}` runs once per epoch, but the `{kind[1]}` schedule ({self.where(made[0][0])}) "
                         "is sized in optimizer steps (its length counts batches): it only advances `epochs` of its positions."),
                impact=("The learning rate stays near the start of the schedule for the whole run: warmup never ends, "
                        "one-cycle never reaches its peak, cosine/linear decay never happens."),
                fix=Fix(before="    opt.step()\nsched.step()  # per epoch", after="    opt.step()\n    sched.step()  # per batch"),
            )
        if kind is not None and kind[0] == "epochs" and level == "batch":
            return self.report(
                node,
                problem=(f"`{self.code_for(node)}` runs on every batch, but the `{kind[1]}` schedule ({self.where(made[0][0])}) "
                         "is sized in epochs."),
                impact=("The schedule advances len(loader) times per epoch: the LR decays that many times too fast and "
                        "collapses within the first epochs."),
                fix=Fix(before="    opt.step()\n    sched.step()  # per batch", after="    opt.step()\nsched.step()  # per epoch"),
            )
        self._before_optimizer(node)

    def _before_optimizer(self, node: cst.Call) -> None:
        its, k = straight_line(self, node)
        if k is None or any(runs_step(self, it, False) for it in its[:k]):
            return
        later = next((it for it in its[k + 1:] if any(stepped(self, c) for c in walk_own(it, cst.Call))), None)
        if later is None:
            return
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` runs before the optimizer step of the same iteration "
                     f"({self.where(later)})."),
            impact=("PyTorch warns and the first value of the schedule is skipped: the first update already uses the "
                    "second learning rate (warmup starts one step late)."),
            fix=Fix(before=f"{self.code_for(node)}\noptimizer.step()", after=f"optimizer.step()\n{self.code_for(node)}"),
            severity="medium",
            title="LR scheduler stepped before the optimizer",
        )
