from __future__ import annotations

import libcst as cst

from ._context import imports_torch, is_evaluation_name
from ._flow import (AccumulationVisits, accumulating_loop, backwarded_later, called_only_under_no_grad,
                    grad_disabled_before, in_no_grad, loss_like, model_sources, modes_before, numeric_uses_after,
                    scope_of, training_step_in)
from ._torch import atom_code
from .base import Invalid, Rule


class LossAccumulatedInEvalLoop(AccumulationVisits, Rule):
    """An evaluation loop runs with autograd on and accumulates the loss tensor across batches.

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
        TR151's. When the total is only used as a number, the autofix appends ``.detach()``, which
        changes no result and adds no per-batch host sync.

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
    ]

    def _check(self, node, acc, value, rebuild) -> None:
        loop = accumulating_loop(self, node, acc)
        if loop is None or training_step_in(self, loop, consumers=True):
            return
        fn, scope = scope_of(self, node)
        start, end = self.line_of(loop), self.end_line_of(loop)
        if grad_disabled_before(self, scope, start):
            return
        evaluated, frozen = modes_before(self, scope, start)
        sources = [(c, m) for c, m in model_sources(self, fn, value, evaluated)
                   if m not in frozen and loop in self.ancestors(c) and not in_no_grad(self, c)]
        if not sources or not loss_like(self, fn, value) or backwarded_later(self, acc, scope, fn):
            return
        uses = numeric_uses_after(self, scope, acc, end) if isinstance(acc, cst.Name) else {"other"}
        if "backward" in uses or called_only_under_no_grad(self, fn):
            return
        name = self.code_for(acc)
        numeric_only = bool(uses) and uses <= {"numeric", "neutral"} and "numeric" in uses
        torch_file = imports_torch(self)
        fname = fn.name.value.lower() if fn is not None else ""
        eval_model = next((m for _, m in sources if m in evaluated), None)
        if eval_model is not None:
            evidence = f"`{eval_model}` was put in eval mode before the loop"
        elif numeric_only and torch_file:
            evidence = f"`{name}` is only turned into numbers after the loop"
        elif torch_file and is_evaluation_name(fname) and uses & {"numeric", "returned_mean", "stored"} \
                and not uses & {"returned"}:
            evidence = f"`{fn.name.value}` evaluates and reports `{name}` as a number or mean"
        else:
            return
        v, w = self.code_for(value), atom_code(self, value)
        replacement = None
        if numeric_only:  # nothing after the loop needs the graph: detaching changes no result
            replacement = rebuild(cst.parse_expression(f"{w}.detach()"))
        model = sources[0][1]
        self.report(
            node,
            problem=(f"`{self.code_for(node).strip()}` keeps `{v}` from every batch while it still carries the "
                     f"autograd graph of `{model}(...)`: this loop evaluates ({evidence}) but runs without "
                     f"`torch.no_grad()`. Wrap the evaluation in `torch.no_grad()`/`torch.inference_mode()`, "
                     f"or accumulate `{w}.item()` / `{w}.detach()`."),
            impact=("Each batch's graph and the activations saved for backward stay alive until the total is "
                    "dropped (`+=` chains them all), so memory grows with the number of batches: evaluation on a "
                    "full validation set runs out of memory although every batch fits."),
            replacement=replacement,
            evidence={"reason": evidence, "model": model},
        )
