from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._loader_flow import dataset_exempt, training_use
from ._realcode import dict_key_sources
from ._torch import enclosing_function, kwarg, positional, torch_function, with_arg_value, with_keyword
from .base import Invalid, Rule

class TrainingLoaderNotShuffled(Rule):
    """A DataLoader that feeds a training loop never shuffles: every epoch sees the same batches in order.

    What it does:
        Flags ``torch.utils.data.DataLoader(...)`` without ``shuffle=True`` (missing or literal
        ``False``), without ``sampler=``/``batch_sampler=``, whose batches feed optimizer steps: the loader
        (or a name it was assigned, a ``tqdm``/``enumerate``/``zip``/``iter`` wrapper, a ``return`` to a
        caller of this document, a parameter of a local function or class, ``accelerator.prepare``) is
        iterated by a loop that steps an optimizer outside ``no_grad``, or handed to Lightning's
        ``trainer.fit`` / ignite's ``create_supervised_trainer(...).run`` / a Lightning
        ``train_dataloader`` method. Not flagged: a non-literal ``shuffle`` (``shuffle=is_train``), any
        sampler, evaluation loaders (val/test/eval/dev/calib/infer/predict in the loader, dataset or
        function names, ``train=False``), an ``IterableDataset`` (or a document that streams data), data
        shuffled by hand (any ``shuffle(...)`` call, ``randperm`` before the loader), synthetic random data,
        datasets whose ``__getitem__`` ignores the index, full-batch loaders (``batch_size=len(ds)``) and
        loops that carry a recurrent state across batches. Also flagged: ``shuffle`` set on one branch only, in
        a ``**kw`` dict filled under a condition (``if use_cuda: kw.update({'shuffle': True})``) or by a device
        flag (``shuffle=use_cuda``): on the other device the loader never shuffles.

    Why is this bad:
        ``shuffle`` defaults to ``False``: a ``SequentialSampler`` yields the dataset in its stored order,
        often sorted by class or source (``ImageFolder``, CIFAR, concatenated files), so each batch is
        correlated, the model drifts towards the classes it saw last, and every epoch repeats the same
        batches. Convergence and generalization suffer, silently. An ordered loader is right only when
        order is the model's input: truncated BPTT over a stream that carries the hidden state from batch
        to batch (``hidden = repackage_hidden(hidden)``), or curriculum ordering done on purpose.

    Example:
        train_loader = DataLoader(train_set, batch_size=128, shuffle=False, drop_last=True)
        for epoch in range(epochs):
            for x, y in train_loader:
                loss = criterion(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()

    Use instead:
        train_loader = DataLoader(train_set, batch_size=128, shuffle=True, drop_last=True)
        # distributed: DataLoader(train_set, sampler=DistributedSampler(train_set)) and
        # sampler.set_epoch(epoch) at the start of every epoch
    """

    code = "TR621"
    title = "Training DataLoader does not shuffle"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "from torch.utils.data import DataLoader\ndef fit(model, opt, train_set):\n"
        "    loader = DataLoader(train_set, batch_size=64, shuffle=True)\n    for x, y in loader:\n"
        "        opt.zero_grad()\n        model(x).sum().backward()\n        opt.step()\n",
        "from torch.utils.data import DataLoader\ndef fit(model, opt, ds, is_train):\n"
        "    loader = DataLoader(ds, batch_size=64, shuffle=is_train)\n    for x, y in loader:\n"
        "        opt.zero_grad()\n        model(x).sum().backward()\n        opt.step()\n",
        "import torch\nfrom torch.utils.data import DataLoader\ndef fit(model, opt, train_set, val_set):\n"
        "    val_loader = DataLoader(val_set, batch_size=64)\n    with torch.no_grad():\n"
        "        for x, y in val_loader:\n            print(model(x).mean())\n",
        "from torch.utils.data import DataLoader, WeightedRandomSampler\ndef fit(model, opt, ds, w):\n"
        "    loader = DataLoader(ds, batch_size=64, sampler=WeightedRandomSampler(w, len(w)))\n"
        "    for x, y in loader:\n        opt.zero_grad()\n        model(x).sum().backward()\n        opt.step()\n",
        "from torch.utils.data import DataLoader\ndef train(model, opt, corpus, h):\n"
        "    loader = DataLoader(corpus, batch_size=35, drop_last=True)\n    for x, y in loader:\n"
        "        h = h.detach()\n        out, h = model(x, h)\n        opt.zero_grad()\n"
        "        loss_fn(out, y).backward()\n        opt.step()\n",
        "from torch.utils.data import DataLoader\ndef fit(model, opt, train_set, use_cuda):\n    kw = {'batch_size': 64}\n"
        "    if use_cuda:\n        kw.update({'pin_memory': True, 'shuffle': True})\n    else:\n        kw['shuffle'] = True\n"
        "    for x, y in DataLoader(train_set, **kw):\n        opt.zero_grad()\n        model(x).sum().backward()\n"
        "        opt.step()\n",
    ]
    INVALID = [
        Invalid("import torchvision\nfrom torch.utils.data import DataLoader\n"
                "train_set = torchvision.datasets.CIFAR10('data', train=True, download=True)\n"
                "train_loader = DataLoader(train_set, batch_size=128, shuffle=False, drop_last=True)\n"
                "for epoch in range(10):\n    for x, y in train_loader:\n        loss = criterion(model(x), y)\n"
                "        opt.zero_grad(); loss.backward(); opt.step()\n", line=4),
        Invalid("import torch.utils.data as tud\ndef get_loaders(train_ds, test_ds):\n"
                "    train_loader = tud.DataLoader(train_ds, batch_size=32)\n"
                "    test_loader = tud.DataLoader(test_ds, batch_size=32)\n    return train_loader, test_loader\n"
                "def main(model, optimizer, train_ds, test_ds):\n"
                "    train_loader, test_loader = get_loaders(train_ds, test_ds)\n"
                "    for i, (x, y) in enumerate(train_loader):\n        optimizer.zero_grad()\n"
                "        model(x).sum().backward()\n        optimizer.step()\n", line=3),
        Invalid("import torch\nfrom torch.utils.data import DataLoader\ndef fit(model, opt, train_set, use_cuda):\n"
                "    kw = {'batch_size': 64}\n    if use_cuda:\n        cuda_kw = {'pin_memory': True, 'shuffle': True}\n"
                "        kw.update(cuda_kw)\n    loader = DataLoader(train_set, **kw)\n    for x, y in loader:\n"
                "        opt.zero_grad()\n        model(x).sum().backward()\n        opt.step()\n", line=8),
    ]

    def _only_if(self, node: cst.Call, shuffle) -> Optional[str]:
        """The condition under which alone the loader shuffles: the ``if`` test of a ``**kw`` dict's only
        ``'shuffle': True``, or a device flag given as ``shuffle=``; None otherwise ("" when never)."""
        if shuffle is not None:  # ``shuffle=use_cuda``/``torch.cuda.is_available()``: False on the CPU
            return next((self.code_for(shuffle.value) for w in ("cuda", "gpu") if w in self.code_for(shuffle.value)), None)
        stars = [a for a in node.args if a.star]
        fn, kw = enclosing_function(self, node), stars[0].value if len(stars) == 1 and stars[0].star == "**" else None
        srcs = dict_key_sources(self, fn, kw.value, "shuffle") if isinstance(kw, cst.Name) else None
        if srcs is None or any(g is None and self.code_for(v) != "False" for v, g in srcs) or any(
                dict_key_sources(self, fn, kw.value, k) for k in ("sampler", "batch_sampler")):
            return None  # cannot follow the dict, it shuffles on every path, or it holds a sampler
        guards = [g for v, g in srcs if self.code_for(v) == "True" and isinstance(g, cst.BaseExpression)]
        return self.code_for(guards[0]) if len(guards) == len(srcs) and guards else "" if not srcs else None

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node) or ""
        if tf.rsplit(".", 1)[-1] != "DataLoader" or "utils.data" not in tf:
            return
        pos = positional(node)
        shuffle = kwarg(node, "shuffle") or (pos[2] if len(pos) > 2 else None)
        only_if = self._only_if(node, shuffle) if shuffle is None or self.code_for(shuffle.value) not in (
            "True", "False", "None") else None
        if any(a.star for a in node.args) and only_if is None:
            return  # ``**kwargs`` the rule cannot follow
        if shuffle is not None and self.code_for(shuffle.value) not in ("False", "None") and not only_if:
            return  # shuffle=True, or decided by the caller
        samplers = [kwarg(node, "sampler"), kwarg(node, "batch_sampler"), *pos[3:5]]
        if any(s is not None and self.code_for(s.value) != "None" for s in samplers):
            return
        data = kwarg(node, "dataset") or (pos[0] if pos else None)
        if data is None or dataset_exempt(self, node, data.value, kwarg(node, "batch_size") or (
                pos[1] if len(pos) > 1 else None)):
            return
        use = training_use(self, node)
        if use is None:
            return
        given = f"`shuffle={self.code_for(shuffle.value)}`" if shuffle is not None else "no `shuffle=`"
        fixed = self.code_for(with_arg_value(node, shuffle, cst.Name("True")) if shuffle is not None else (
            with_keyword(node, "shuffle", cst.Name("True"))))
        if only_if and shuffle is None:
            fixed = "# set 'shuffle': True in the kwargs dict unconditionally, not only on one branch"
        self.report(
            shuffle or node,
            problem=(f"This DataLoader shuffles only when `{only_if}` (no sampler)" if only_if else
                     f"This DataLoader does not shuffle ({given}, no sampler)") + (
                f" and {use[1]}: {'otherwise ' if only_if else ''}batches come in the dataset's fixed order, the same "
                "every epoch."),
            impact=("Batches follow the stored order (often sorted by class or source): gradients are correlated, "
                    "the model drifts towards what it saw last and every epoch repeats the same batches; "
                    "convergence and generalization suffer silently."),
            fix=Fix(before=self.code_for(node), after=fixed
                    + "\n# distributed: sampler=DistributedSampler(dataset) and sampler.set_epoch(epoch) each epoch"),
        )
