from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._bindings import derived_names
from ._context import is_evaluation_name, is_forward
from ._evaluation import callers_evaluate, kept_graph, runs_network
from ._flow import accumulations, called_only_under_no_grad, grad_disabled_before, in_no_grad
from ._loops import bounded_iterable
from ._modes import train_mode_evaluation
from ._torch import dotted_name, enclosing_loops, in_loop_body, loop_targets, method_call, names_in, walk, walk_own
from ._training import writes_grads
from .base import Invalid, Rule

# Ops whose result is a number, a prediction or a metric: nothing after them needs the graph.
_DONE = frozenset({"item", "argmax", "argmin", "cpu", "numpy", "tolist", "detach", "eq", "float", "int"})
_TRAINING = frozenset({"step", "zero_grad", "train", "requires_grad_", "enable_grad"})


class EvalWithoutNoGrad(Rule):
    """Evaluation (``model.eval()``) runs the model in a loop without ``torch.no_grad()``.

    What it does:
        Flags a function that calls ``model.eval()`` and then calls the model inside a loop, with
        no ``torch.no_grad()``/``torch.inference_mode()`` (context or decorator) and no
        ``.backward()`` anywhere in the function. Also (High) an evaluation with neither: a loop over
        batches that runs a model on them and accumulates metrics or predictions (``.item()``,
        ``argmax``, comparisons; any kept output in a function named for evaluation or whose callers all
        call ``.eval()`` first, e.g. feature extraction for retrieval), with nothing
        that trains (backward, optimizer step, ``.train()``, here or in called functions) and no
        ``no_grad`` around it, a module-level ``set_grad_enabled(False)`` or around every caller. When
        TR633 shows that the network runs in training mode there, this rule reports only the autograd
        part, at the forward; loops that keep outputs or losses with their graphs are TR155's.

    Why is this bad:
        ``eval()`` only changes dropout and batch norm; autograd still records every op and keeps the
        activations each one saves for a backward pass that never comes. Evaluation then needs about as
        much memory as training, runs slower, and any output kept in a list holds its whole graph.

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
        "import torch\ndef evaluate(model, loader):\n    correct = 0\n    for x, y in loader:\n"
        "        correct += (model(x).argmax(-1) == y).sum().item()\n    return correct\n\n"
        "def main(model, loader):\n    model.eval()\n    with torch.no_grad():\n        print(evaluate(model, loader))\n",
        "def fit(model, loader, opt):\n    total = 0\n    for x, y in loader:\n        loss = model(x).sum()\n"
        "        loss.backward()\n        opt.step()\n        total += loss.item()\n    return total\n",
    ]
    INVALID = [
        Invalid("def evaluate(model, loader):\n    model.eval()\n    hits = 0\n    for x, y in loader:\n"
                "        hits += (model(x).argmax(-1) == y).sum().item()\n    return hits\n", line=2),
        Invalid("def score(net, batches):\n    net.eval()\n    return sum(net(b).sum() for b in batches)\n", line=2),
        Invalid("def evaluate(model, loader):\n    correct = 0\n    for x, y in loader:\n"
                "        correct += (model(x).argmax(-1) == y).sum().item()\n    return correct\n", line=3),
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
        if eval_call is None:
            return self._unguarded_evaluation(node)
        if any(method_call(c) and method_call(c)[1] == "backward" for c in calls):
            return
        looped = [c for c in calls if self.code_for(c.func) == model and in_loop_body(self, c) and not any(
            bounded_iterable(getattr(lp, "iter", None) or getattr(getattr(lp, "for_in", None), "iter", None))
            for lp in enclosing_loops(self, c)[:1])]  # the loop that repeats it: not `for _ in range(6)`
        if not looped or any(in_no_grad(self, c) for c in looped) or self._kept(looped):
            return
        self.report(
            eval_call,
            problem=(f"`{model}.eval()` is followed by calls of `{model}` in a loop, but autograd is still on "
                     f"(no `torch.no_grad()`/`inference_mode()` in `{node.name.value}`)."),
            impact=("Every forward records a graph and keeps the activations saved for backward: evaluation uses "
                    "training-level memory and time, and kept outputs hold their graphs."),
            fix=Fix(before=f"{model}.eval()", after=f"{model}.eval()\nwith torch.inference_mode():\n    ..."),
        )

    def _unguarded_evaluation(self, fn: cst.FunctionDef) -> None:
        """A loop over batches that runs a model and keeps metrics or predictions, with neither ``.eval()``
        nor ``no_grad`` here or around every caller, and nothing that trains (here or in called functions)."""
        trains = writes_grads(self, fn.body, False) or any((mc := method_call(c)) and mc[1] in _TRAINING for c in walk(fn.body, cst.Call))
        if "train" in fn.name.value.lower() or is_forward(self, fn) or trains \
                or grad_disabled_before(self, self.ctx.module, 10 ** 9) or called_only_under_no_grad(self, fn):
            return
        for loop in walk_own(fn.body, cst.For):
            if bounded_iterable(loop.iter):
                continue
            runs = [c for c in walk_own(loop.body, cst.Call) if runs_network(self, fn, c)]
            outs = derived_names(loop.body, runs)
            outs |= {t for lp in walk_own(loop.body, cst.For) if names_in(lp.iter) & outs for t in loop_targets(lp)}
            accs = [(a, v) for n in walk_own(loop.body) for a, v, _ in accumulations(n)
                    if names_in(v) & outs or any(v is c or c in walk(v) for c in runs)]
            metric = any(isinstance(n, cst.Comparison) or (dotted_name(n.func) or (method_call(n) or ("", ""))[1]).split(
                ".")[-1] in _DONE for _, v in accs for n in walk(v, (cst.Call, cst.Comparison)))
            moded = bool(runs and accs) and callers_evaluate(self, fn)  # kept outputs of a model its callers evaluate
            if runs and accs and (metric or moded or is_evaluation_name(fn.name.value.lower())):
                model, head = self.code_for(runs[0].func), self.code_for(loop).splitlines()[0]
                proven = train_mode_evaluation(self, runs[0]) is not None  # TR633 reports the training mode
                memory = moded or proven
                return self.report(
                    runs[0] if proven else loop,
                    problem=(f"`{fn.name.value}` evaluates `{model}` over batches (keeping `{self.code_for(accs[0][0])}`) "
                             + (f"without `torch.no_grad()` ({'its callers call `.eval()`' if moded else 'not around its callers either'}"
                                "): autograd records every forward for a backward that never comes." if memory else f"with neither `{model}.eval()` nor "
                                "`torch.no_grad()`: BatchNorm and dropout run in training mode and autograd keeps every batch's graph.")),
                    impact=("" if memory else "Metrics come from a model with dropout on and batch statistics (BatchNorm "
                            "running stats are even updated by the evaluation data); ") + "each forward stores the "
                           "activations for a backward pass that never comes, at training-level memory and time.",
                    fix=Fix(before=head, after=(f"{model}.eval()\n" if not memory else "") + f"with torch.inference_mode():\n    {head}"),
                    severity=None if memory else "high", category=None if memory else "algorithm-correctness",
                    title=None if memory else "Evaluation loop without model.eval() or torch.no_grad()",
                )

    def _kept(self, looped) -> bool:
        """The loop around a looped call keeps outputs or losses with their graphs: TR155 reports it."""
        loops = {id(lp): lp for c in looped for lp in enclosing_loops(self, c)[:1] if isinstance(lp, (cst.For, cst.While))}
        return any(kept_graph(self, n, a, v) for lp in loops.values() for n in walk_own(lp.body)
                   for a, v, _ in accumulations(n))
