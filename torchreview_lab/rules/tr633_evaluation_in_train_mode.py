from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._flow import NO_GRAD_CONTEXTS
from ._modes import train_mode_evaluation
from ._torch import enclosing_function, torch_function
from .base import Invalid, Rule


class EvaluationInTrainMode(Rule):
    """Evaluation runs with the model in training mode.

    What it does:
        Flags code that evaluates or predicts with a network (runs it under ``torch.no_grad()`` /
        ``inference_mode()``, in a function named like ``evaluate``/``validate``/``test``/``predict``/
        ``generate``/``sample``, or over a validation/test loader; nothing trains there) while the flow of the
        document leaves it in training mode: no ``.eval()`` / ``.train(False)`` on it in the function, and at
        every call site of the function its last mode switch in the caller's flow is ``.train()`` (directly or
        in a function such as ``train_epoch(model)``), or it was freshly built (``Net()``,
        ``models.resnet50(...)``, ``timm.create_model``) and then trained or loaded, with no ``.eval()``
        since. Only for networks whose layers depend on the mode: a class of the document with dropout,
        batch norm or a ``self.training`` test, a torch.nn layer of that kind, or a library/imported model;
        a document class without any stays quiet. Reported at the evaluation (its ``no_grad`` block when it
        wraps the evaluation loop, else the first forward), or at the ``return`` of the function that loads
        the checkpoint and hands the network out in training mode, where ``.eval()`` belongs.

    Why is this bad:
        In training mode dropout keeps zeroing activations and batch norm normalises with the statistics of
        the current batch and overwrites its running statistics with evaluation data. Metrics are noisy and
        biased, a prediction depends on the other samples in its batch (with batch size 1, on that sample
        alone), and the weights saved afterwards carry the corrupted running statistics.

    Example:
        train_epoch(model, train_loader, opt)      # calls model.train()
        with torch.no_grad():
            acc = accuracy(model(x_val), y_val)

    Use instead:
        model.eval()
        with torch.no_grad():
            acc = accuracy(model(x_val), y_val)
    """

    code = "TR633"
    title = "Evaluation runs with the model in training mode"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch, torch.nn as nn\nmodel = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\nmodel.train()\nmodel.eval()\nwith torch.no_grad():\n"
        "    out = model(torch.ones(2, 4))\n",
        "import torch, torch.nn as nn\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(4, 2)\n    def forward(self, x):\n        return self.fc(x)\n\n"
        "model = Net()\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\nmodel.train()\n"
        "with torch.no_grad():\n    out = model(torch.ones(2, 4))\n",
        "import torch\n@torch.no_grad()\ndef evaluate(model, loader):\n    return [model(x) for x in loader]\n",
        "import torch\ndef evaluate(model, loader):\n    with torch.no_grad():\n        return [model(x) for x in loader]\n\n"
        "def fit(model, loader, opt):\n    model.train()\n    for x in loader:\n        model(x).sum().backward()\n"
        "        opt.step()\n    model.eval()\n    return evaluate(model, loader)\n",
        "import torch, torch.nn as nn\ndef test_forward_train():\n    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout())\n"
        "    model.load_state_dict(ref.state_dict())\n    model.train()\n    with torch.no_grad():\n"
        "        assert model(torch.ones(2, 4)).shape == (2, 4)\n",
        "import torch\ndef gan_step(G, D, z, opt):\n    with torch.no_grad():\n        fake = G(z)\n"
        "    D(fake).mean().backward()\n    opt.step()\n",
    ]
    INVALID = [
        Invalid("import torch\n\ndef train_epoch(model, loader, opt):\n    model.train()\n    for x in loader:\n"
                "        model(x).sum().backward()\n        opt.step()\n\n@torch.no_grad()\ndef evaluate(model, loader):\n"
                "    total = 0.0\n    for x in loader:\n        total += model(x).sum().item()\n    return total\n\n"
                "def fit(model, loader, opt):\n    for epoch in range(3):\n        train_epoch(model, loader, opt)\n"
                "        print(evaluate(model, loader))\n", line=13),
        Invalid("import torch, torch.nn as nn\nG = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))\n"
                "opt = torch.optim.Adam(G.parameters())\n\ndef render(net, seed):\n    z = torch.randn(1, 8)\n"
                "    with torch.no_grad():\n        return net(z)\n\nimgs = [render(G, s) for s in range(4)]\n", line=8),
        Invalid("import torch\nfrom mylib import ConvNet\n\ndef load_model(path, device):\n    model = ConvNet()\n"
                "    model.load_state_dict(torch.load(path, map_location=device))\n    return model.to(device)\n\n"
                "def predict(model, xs):\n    return [model(x).argmax(-1) for x in xs]\n\n"
                "preds = predict(load_model('m.pt', 'cpu'), [])\n", line=7),
        Invalid("import torch\nfrom torchvision import models\nmodel = models.resnet18(weights='DEFAULT')\n"
                "opt = torch.optim.SGD(model.parameters(), lr=0.1)\nmodel.train()\nfor x, y in train_loader:\n"
                "    model(x).sum().backward()\n    opt.step()\nwith torch.no_grad():\n    for x in val_loader:\n"
                "        out = model(x)\n", line=9),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        self._done: set = set()

    def visit_Call(self, node: cst.Call) -> None:
        found = train_mode_evaluation(self, node)
        if found is None:
            return
        model, mode = found
        fn = enclosing_function(self, node)
        key = id(mode.loader) if mode.loader is not None else (id(fn) if fn is not None else self._top(node), model)
        if key in self._done:
            return
        self._done.add(key)
        where, line = self._site(node), self.code_for(node).splitlines()[0]
        if mode.loader is not None:
            ret = self.code_for(mode.loader).strip()
            return self.report(
                mode.loader,
                problem=(f"`{fn.name.value if fn else 'this code'}` runs `{model}` for inference, but the function that "
                         f"loads it hands it out in training mode (`{ret}`, no `.eval()`): {mode.why}."),
                impact=self._impact(), fix=Fix(before=ret, after=ret + ".eval()" if ret.startswith("return ") else ret))
        self.report(
            where,
            problem=(f"`{model}` runs for evaluation here (`{line}`) but is still in training mode: {mode.why}, and "
                     f"no `{model}.eval()` comes in between."),
            impact=self._impact(),
            fix=Fix(before=self.code_for(where).splitlines()[0],
                    after=f"{model}.eval()\n{self.code_for(where).splitlines()[0]}"),
        )

    @staticmethod
    def _impact() -> str:
        return ("Dropout stays active and batch norm uses the batch's own statistics and overwrites its running "
                "statistics with evaluation data: metrics are noisy and biased, predictions depend on the rest of the "
                "batch, and a checkpoint saved afterwards keeps the corrupted statistics.")

    def _top(self, node: cst.CSTNode) -> int:
        """The top-level statement around ``node``: one report per notebook block."""
        top = node
        for a in self.ancestors(node):
            if isinstance(a, cst.Module):
                break
            top = a
        return id(top)

    def _site(self, call: cst.Call) -> cst.CSTNode:
        """The ``with torch.no_grad():`` that wraps the evaluation loop around ``call``, else ``call``."""
        looped = False
        for a in self.ancestors(call):
            if isinstance(a, (cst.FunctionDef, cst.Module)):
                break
            if isinstance(a, (cst.For, cst.While, cst.ListComp, cst.GeneratorExp, cst.SetComp, cst.DictComp)):
                looped = True
            if isinstance(a, cst.With) and any(isinstance(i.item, cst.Call) and torch_function(self, i.item) in (
                    NO_GRAD_CONTEXTS) for i in a.items):
                return a if looped else call
        return call
