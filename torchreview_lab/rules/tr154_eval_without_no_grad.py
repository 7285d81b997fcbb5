from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._flow import in_no_grad
from ._torch import in_loop_body, method_call, walk
from .base import Invalid, Rule

class EvalWithoutNoGrad(Rule):
    """Evaluation (``model.eval()``) runs the model in a loop without ``torch.no_grad()``.

    What it does:
        Flags a function that calls ``model.eval()`` and then calls the model inside a loop, with
        no ``torch.no_grad()``/``torch.inference_mode()`` (context or decorator) and no
        ``.backward()`` anywhere in the function.

    Why is this bad:
        ``eval()`` only changes dropout and batch norm; autograd still records every op and keeps
        the activations each one saves for a backward pass that never comes. Evaluation then
        needs about as much memory as training (more with large validation batches), runs
        slower, and any output kept in a list holds its whole graph.

    Example:
        model.eval()
        for x in val_loader:
            preds.append(model(x))

    Use instead:
        model.eval()
        with torch.inference_mode():     # or @torch.no_grad() on the function
            for x in val_loader:
                preds.append(model(x))
    """

    code = "TR154"
    title = "Evaluation loop without torch.no_grad()"
    category = "memory-complexity"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\n@torch.no_grad()\ndef evaluate(model, xs):\n    model.eval()\n    return [model(x) for x in xs]\n",
        "import torch\ndef evaluate(model, xs):\n    model.eval()\n    with torch.inference_mode():\n        return [model(x) for x in xs]\n",
        "def finetune(model, opt, xs):\n    model.eval()  # frozen batch norm\n    for x in xs:\n        model(x).sum().backward()\n        opt.step()\n",
    ]
    INVALID = [
        Invalid("def evaluate(model, loader):\n    model.eval()\n    preds = []\n    for x in loader:\n"
                "        preds.append(model(x))\n    return preds\n", line=2),
        Invalid("def score(net, batches):\n    net.eval()\n    return sum(net(b).sum() for b in batches)\n", line=2),
    ]

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        eval_call: Optional[cst.Call] = None
        model: Optional[str] = None
        calls = list(walk(node.body, cst.Call))
        for c in calls:
            mc = method_call(c)
            if mc and mc[1] == "eval" and not c.args and isinstance(mc[0], (cst.Name, cst.Attribute)):
                eval_call, model = c, self.code_for(mc[0])
                break
        if eval_call is None or any(method_call(c) and method_call(c)[1] == "backward" for c in calls):
            return
        looped = [c for c in calls if self.code_for(c.func) == model and in_loop_body(self, c)]
        if not looped or any(in_no_grad(self, c) for c in looped):
            return
        self.report(
            eval_call,
            problem=(f"`{model}.eval()` is followed by calls of `{model}` in a loop, but autograd is still on "
                     f"(no `torch.no_grad()`/`inference_mode()` in `{node.name.value}`)."),
            impact=("Every forward records a graph and keeps the activations saved for backward: evaluation uses "
                    "training-level memory and time, and kept outputs hold their graphs."),
            fix=Fix(before=f"{model}.eval()", after=f"{model}.eval()\nwith torch.inference_mode():\n    ..."),
        )
