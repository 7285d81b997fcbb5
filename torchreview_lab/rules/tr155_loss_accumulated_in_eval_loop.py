from __future__ import annotations

import libcst as cst

from ._flow import AccumulationVisits
from ._evaluation import kept_graph
from ._torch import atom_code
from .base import Invalid, Rule


class LossAccumulatedInEvalLoop(AccumulationVisits, Rule):
    """An evaluation loop runs with autograd on and accumulates the loss (or the outputs) across batches.

    What it does:
        Flags ``total += loss``, ``losses.append(loss)`` and ``total = total + criterion(out, y)`` in a
        loop that has no training step (no ``.backward()``, ``optimizer.step()`` or ``autograd.grad``)
        and is not under ``torch.no_grad()``/``torch.inference_mode()`` (a with-block, a decorator, a
        ``torch.set_grad_enabled(False)`` statement, or every caller of the function), when the value is
        a loss (a criterion/loss call, ``outputs.loss``, or a reduction such as ``.sum()``) of a model
        called in that loop, and the loop evaluates: the model was put in eval mode (``model.eval()``
        or ``model.train(False)``) earlier in the same function or cell, or the total is only turned
        into numbers after the loop (``.item()``, ``float()``, ``print``/logging, f-strings, numpy) and
        never ``.backward()``-ed, returned or passed on. An evaluation-like function name counts only
        together with such a use (or a returned mean). Summing losses for one backward after the loop
        (the caller's or this function's) is deliberate and not flagged; loops with a training step are
        TR151's. Network outputs kept the same way (``preds.append(model(x))``) count when the network
        was put in eval mode before the loop. When the total is only used as a number, the autofix
        appends ``.detach()``, which changes no result and adds no per-batch host sync.

    Why is this bad:
        Without ``no_grad`` every forward pass records a graph and keeps the activations saved for
        backward. A loss tensor kept across batches keeps all of that alive (``+=`` chains every batch's
        graph into one), so memory grows with the number of batches: evaluation on a full validation set
        runs out of memory although each batch fits, and the number you wanted costs a training step's
        memory per batch.

    Example:
        model.eval()
        total = 0.0
        for x, y in val_loader:
            total += criterion(model(x), y)
        print(total / len(val_loader))

    Use instead:
        model.eval()
        total = 0.0
        with torch.no_grad():             # or torch.inference_mode()
            for x, y in val_loader:
                total += criterion(model(x), y)
        # or accumulate numbers: total += loss.item() / loss.detach()
    """

    code = "TR155"
    title = "Evaluation loop accumulates the loss with autograd on: memory grows per batch"
    category = "memory-correctness"
    severity = {"research": "high", "production": "high"}
    autofix = True
    VALID = [
        "import torch\ndef evaluate(model, loader, criterion):\n    model.eval()\n    total = 0.0\n    with torch.no_grad():\n"
        "        for x, y in loader:\n            total += criterion(model(x), y)\n    return total / len(loader)\n",
        "import torch\n@torch.inference_mode()\ndef evaluate(model, loader):\n    model.eval()\n    losses = []\n"
        "    for x in loader:\n        losses.append(model(x).mean())\n    return torch.stack(losses).mean().item()\n",
        "def evaluate(model, loader, criterion):\n    model.eval()\n    total = 0.0\n    for x, y in loader:\n"
        "        total += criterion(model(x), y).item()\n    return total / len(loader)\n",
        "def get_loss(outputs, model):\n    loss = 0.0\n    for v in outputs:\n        loss += model(v).sum()\n    return loss\n",
        "def accumulate(model, chunks, criterion, opt):\n    total = 0\n    for x, y in chunks:\n"
        "        total = total + criterion(model(x), y)\n    total.backward()\n    opt.step()\n    print(total.item())\n",
        "def fit(model, loader, criterion, opt):\n    model.eval()\n    total = 0.0\n    for x, y in loader:\n"
        "        loss = criterion(model(x), y)\n        loss.backward()\n        opt.step()\n        total += loss\n    print(total)\n",
        "import torch\ndef summarize(scores):\n    total = 0\n    for s in scores:\n        total += torch.log(s).sum()\n"
        "    print(float(total))\n",
        "import torch\ndef evaluate(model, loader, criterion):\n    model.eval()\n    total = 0\n    for x, y in loader:\n"
        "        with torch.no_grad():\n            out = model(x)\n        total += criterion(out, y)\n    print(total.item())\n",
        "def accuracy(model, loader):\n    correct = 0\n    for x, y in loader:\n"
        "        correct += (model(x).argmax(-1) == y).sum()\n    return correct.item() / len(loader.dataset)\n",
        "import torch\ndef robust_eval(model, loader, criterion):\n    model.eval()\n    total = 0\n    for x, y in loader:\n"
        "        x.requires_grad_(True)\n        loss = criterion(model(x), y)\n        g, = torch.autograd.grad(loss, x)\n"
        "        total += loss\n    print(total.item())\n",
        "import torch\ndef evaluate(model, loader, criterion):\n    total = 0\n    for x, y in loader:\n"
        "        total += criterion(model(x), y)\n    return total / len(loader)\n\n@torch.no_grad()\n"
        "def report(model, loader, criterion):\n    print(evaluate(model, loader, criterion))\n",
        "import torch\nmodel.eval()\nouts = []\nwith torch.no_grad():\n    for x in val_batches:\n        outs.append(model(x))\n",
        "def embed(model, loader):\n    feats = []\n    for x in loader:\n        feats.append(model(x))\n    return feats\n",
    ]
    INVALID = [
        Invalid("import torch\ndef evaluate(model, loader, criterion):\n    model.eval()\n    total = 0.0\n"
                "    for x, y in loader:\n        total += criterion(model(x), y)\n    return total / len(loader)\n", line=6),
        Invalid("import torch\n\ndef val_loss(net, loader):\n    losses = []\n    for x, y in loader:\n"
                "        loss = torch.nn.functional.cross_entropy(net(x), y)\n        losses.append(loss)\n"
                "    print(f\"val loss {torch.stack(losses).mean().item():.3f}\")\n", line=7,
                expected_fix="import torch\n\ndef val_loss(net, loader):\n    losses = []\n    for x, y in loader:\n"
                "        loss = torch.nn.functional.cross_entropy(net(x), y)\n        losses.append(loss.detach())\n"
                "    print(f\"val loss {torch.stack(losses).mean().item():.3f}\")\n"),
        Invalid("import torch\nmodel.train(False)\ntotal = 0\nfor batch in val_loader:\n"
                "    total = total + model(**batch).loss\nprint(total.item() / len(val_loader))\n", line=5,
                expected_fix="import torch\nmodel.train(False)\ntotal = 0\nfor batch in val_loader:\n"
                "    total = total + model(**batch).loss.detach()\nprint(total.item() / len(val_loader))\n"),
        Invalid("import torch.nn.functional as F\ndef validate(model, loader):\n    total, n = 0, 0\n    for x, y in loader:\n"
                "        total += F.mse_loss(model(x), y) * len(x)\n        n += len(x)\n    return total / n\n", line=5),
        Invalid("import torch\nmodel.eval()\nval_logits = []\nfor x, y in val_batches:\n"
                "    val_logits.append(model(x))\nacc = (torch.cat(val_logits).argmax(-1) == y).float().mean()\n", line=5),
    ]

    def _check(self, node, acc, value, rebuild) -> None:
        kept = kept_graph(self, node, acc, value)
        if kept is None:
            return
        v, w, model = self.code_for(value), atom_code(self, value), kept["model"]
        replacement = None
        if kept["numeric_only"]:  # nothing after the loop needs the graph: detaching changes no result
            replacement = rebuild(cst.parse_expression(f"{w}.detach()"))
        self.report(
            node,
            problem=(f"`{self.code_for(node).strip()}` keeps `{v}` from every batch while it still carries the "
                     f"autograd graph of `{model}(...)`: this loop evaluates ({kept['evidence']}) but runs without "
                     f"`torch.no_grad()`. Wrap the evaluation in `torch.no_grad()`/`torch.inference_mode()`, "
                     + (f"or accumulate `{w}.item()` / `{w}.detach()`." if kept["loss"] else f"or keep `{w}.detach()`.")),
            impact=("Each batch's graph and the activations saved for backward stay alive until the "
                    + ("total" if kept["loss"] else "list") + " is dropped"
                    + (" (`+=` chains them all)" if kept["loss"] else "") + ", so memory grows with the number of "
                    "batches: evaluation on a full validation set runs out of memory although every batch fits."),
            replacement=replacement,
            title=None if kept["loss"] else "Evaluation loop keeps network outputs with autograd on: memory grows per batch",
            evidence={"reason": kept["evidence"], "model": model},
        )
