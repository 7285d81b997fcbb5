from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import construction_of
from ._loader_flow import loops_over
from ._loops import caller_loops
from ._samplers import epoch_seeded_sampler, iterated_names, shuffle_flag, shuffled_by_callers
from ._torch import (assigned_name, assigned_values, enclosing_function, enclosing_loops, kwarg, last_part, method_call,
                     module_functions, names_in, positional, torch_function, walk, walk_own)
from .base import Invalid, Rule


class DistributedSamplerWithoutSetEpoch(Rule):
    """A ``DistributedSampler`` is never told the epoch: every epoch sees the same order.

    What it does:
        Finds ``DataLoader(..., sampler=s)`` (or ``batch_sampler=BatchSampler(s, ...)``) with a shuffling
        ``DistributedSampler`` ``s`` (built in place or named) and flags the epoch loop around the loop over that
        loader (where the loader is returned or passed to, or around the method that loops) when it never calls
        ``set_epoch``. The sampler may be built on one branch (``DistributedSampler(ds) if ddp else None``); a
        ``shuffle=train`` flag that is a parameter of the builder is read at the call that made the loader.
        Any ``set_epoch`` call in the epoch loop or that method, a helper of this document that calls it with
        the loader or sampler, ``shuffle=False`` (or another non-literal shuffle), a sampler or loader built in
        the epoch loop and a loader iterated once are not flagged.

    Why is this bad:
        ``DistributedSampler`` shuffles with ``seed + epoch`` and its epoch stays 0 until ``set_epoch``
        is called: every epoch then visits the data in exactly the same order on every rank, and each
        rank sees the same shard of samples forever. Generalization degrades (as if shuffling were off
        after the first epoch) and results differ from single-GPU training, silently.

    Example:
        sampler = DistributedSampler(dataset)
        loader = DataLoader(dataset, batch_size=64, sampler=sampler)
        for epoch in range(epochs):
            for x, y in loader:
                ...

    Use instead:
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for x, y in loader:
                ...
    """

    code = "TR617"
    title = "DistributedSampler without set_epoch in the epoch loop"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "from torch.utils.data import DataLoader, DistributedSampler\ndef fit(ds, epochs):\n    sampler = DistributedSampler(ds)\n"
        "    loader = DataLoader(ds, batch_size=8, sampler=sampler)\n    for epoch in range(epochs):\n"
        "        sampler.set_epoch(epoch)\n        for x in loader:\n            step(x)\n",
        "from torch.utils.data import DataLoader\nfrom torch.utils.data.distributed import DistributedSampler\n"
        "def fit(ds, epochs):\n    loader = DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, seed=1))\n"
        "    for epoch in range(epochs):\n        loader.sampler.set_epoch(epoch)\n        for x in loader:\n            step(x)\n",
        "from torch.utils.data import DataLoader, DistributedSampler\ndef evaluate(ds, epochs):\n"
        "    loader = DataLoader(ds, sampler=DistributedSampler(ds, shuffle=False))\n    for epoch in range(epochs):\n"
        "        for x in loader:\n            step(x)\n",
        "from torch.utils.data import DataLoader, DistributedSampler\ndef once(ds):\n"
        "    loader = DataLoader(ds, sampler=DistributedSampler(ds))\n    for x in loader:\n        step(x)\n",
        "from torch.utils.data import DataLoader, DistributedSampler\ndef fit(ds, epochs):\n    for epoch in range(epochs):\n"
        "        sampler = DistributedSampler(ds, seed=epoch)\n        for x in DataLoader(ds, sampler=sampler):\n            step(x)\n",
        "from torch.utils.data import DataLoader, DistributedSampler\ndef reseed(loader, epoch):\n    loader.sampler.set_epoch(epoch)\n"
        "def fit(ds, epochs):\n    loader = DataLoader(ds, sampler=DistributedSampler(ds))\n    for epoch in range(epochs):\n"
        "        reseed(loader, epoch)\n        for x in loader:\n            step(x)\n",
        "from torch.utils.data import DataLoader, DistributedSampler\ndef make(ds, train):\n"
        "    return DataLoader(ds, sampler=DistributedSampler(ds, shuffle=train))\ndef fit(ds, epochs):\n"
        "    val_loader = make(ds, train=False)\n    for epoch in range(epochs):\n        for x in val_loader:\n            step(x)\n",
    ]
    INVALID = [
        Invalid("from torch.utils.data import DataLoader\nfrom torch.utils.data.distributed import DistributedSampler\n"
                "def main(dataset, epochs):\n    sampler = DistributedSampler(dataset, shuffle=True, drop_last=True)\n"
                "    loader = DataLoader(dataset, batch_size=256, sampler=sampler, num_workers=8)\n"
                "    for epoch in range(epochs):\n        model.train()\n        for (v1, v2), _ in loader:\n"
                "            step(v1, v2)\n", line=6),
        Invalid("import torch.utils.data as tud\nsampler = tud.DistributedSampler(train_ds)\n"
                "train_dl = tud.DataLoader(train_ds, batch_sampler=tud.BatchSampler(sampler, 32, drop_last=True))\n"
                "step = 0\nwhile step < total:\n    for i, batch in enumerate(train_dl):\n        step += 1\n", line=5),
        Invalid("from torch.utils.data import DataLoader, DistributedSampler\ndef make_loader(ds, bs, train):\n"
                "    sampler = DistributedSampler(ds, shuffle=train, drop_last=train)\n"
                "    return DataLoader(ds, batch_size=bs, sampler=sampler), sampler\ndef main(ds, epochs):\n"
                "    train_loader, train_sampler = make_loader(ds, 64, train=True)\n    for epoch in range(epochs):\n"
                "        for x, y in train_loader:\n            step(x, y)\n", line=7),
        Invalid("from torch.utils.data import DataLoader, DistributedSampler\ndef fit(ds, epochs, ddp):\n"
                "    sampler = DistributedSampler(ds) if ddp else None\n"
                "    loader = DataLoader(ds, batch_size=32, sampler=sampler, shuffle=sampler is None)\n"
                "    for epoch in range(epochs):\n        for x in loader:\n            step(x)\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if last_part(torch_function(self, node)) != "DataLoader" or "utils.data" not in (torch_function(self, node) or ""):
            return
        fn = enclosing_function(self, node)
        arg = kwarg(node, "sampler") or (positional(node)[3:4] or [None])[0]
        batch = kwarg(node, "batch_sampler")
        built = construction_of(self, fn, batch.value) if batch is not None and arg is None else None
        arg = arg or built is not None and (kwarg(built, "sampler") or (positional(built)[:1] or [None])[0])
        sampler = arg.value if arg else None
        made = epoch_seeded_sampler(self, fn, sampler) if sampler is not None else None
        flag = shuffle_flag(self, fn, made) if made is not None else False  # a parameter's name: per call of fn
        if not flag:
            return
        name = assigned_name(self, node)
        scope = fn or self.ctx.module
        if name is not None and len(assigned_values(self, fn, name)) != 1:
            return  # rebound (e.g. wrapped by a launcher that handles the epoch): not followed
        loops = [f for f in walk_own(scope, cst.For) if name in iterated_names(self, f.iter, scope)] if name is not None else [
            f for f in [a for a in self.ancestors(node) if isinstance(a, cst.For)][:1] if any(x is node for x in walk(f.iter))]
        loops = loops or [f for f in loops_over(self, node) if isinstance(f, cst.For)]  # returned or passed on
        for loop in loops:
            if isinstance(flag, str) and not shuffled_by_callers(self, loop, fn, flag):
                continue
            outer = [a for a in enclosing_loops(self, loop) if isinstance(a, (cst.For, cst.While)) and not any(
                x is made or x is node for x in walk(a))]
            own = enclosing_function(self, loop)  # else the loops that call this method (fit -> self.train_epoch())
            outer = outer or ([] if own is None or self._sets_epoch(own, set()) else caller_loops(self, own)[-1:])
            if not outer or self._sets_epoch(outer[-1], {name, self.code_for(sampler)} - {None}):
                continue  # iterated once, rebuilt per epoch, or set_epoch is called
            self.report(  # at the epoch loop, where set_epoch goes
                outer[-1],
                problem=(f"This epoch loop calls no `set_epoch`, yet the loop at {self.where(loop)} iterates a "
                         f"DataLoader whose `{self.code_for(made.func)}` shuffles by epoch: it is never given one."),
                impact=("The sampler shuffles with the same seed every epoch: each epoch visits the data in the same "
                        "order and each rank sees the same shard forever, which hurts generalization silently."),
                fix=Fix(before="for epoch in range(epochs):\n    for batch in loader:",
                        after="for epoch in range(epochs):\n    sampler.set_epoch(epoch)\n    for batch in loader:"),
            )

    def _sets_epoch(self, epoch: cst.CSTNode, names: set) -> bool:
        """The epoch loop calls ``set_epoch`` (on anything) or sets ``.epoch``/``.seed`` by hand, or hands the
        loader or sampler to a function of this document that calls ``set_epoch``."""
        if any(self.code_for(t.target).endswith((".epoch", ".seed")) for a in walk_own(epoch.body, cst.Assign)
               for t in a.targets) or any(method_call(c) and method_call(c)[1] == "set_epoch" for c in walk_own(
                   epoch.body, cst.Call)):
            return True
        for c in walk_own(epoch.body, cst.Call):
            fdef = module_functions(self).get(self.code_for(c.func))
            if fdef is not None and set().union(*(names_in(a.value) for a in c.args)) & names and any(
                    method_call(x) and method_call(x)[1] == "set_epoch" for x in walk(fdef, cst.Call)):
                return True
        return False

