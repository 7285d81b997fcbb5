from __future__ import annotations

from typing import Dict, Optional, Set

import libcst as cst

from ..findings import Fix
from ._torch import method_call, module_functions, walk, walk_own
from .base import Invalid, Rule


def _calls_method(scope: cst.CSTNode, name: str) -> bool:
    return any(method_call(c) is not None and method_call(c)[1] == name and not c.args
               for c in walk(scope, cst.Call))


def _is_training_loop(loop: cst.For) -> bool:
    """The loop body runs ``loss.backward()`` and ``<optimizer>.step()``."""
    methods = {method_call(c)[1] for c in walk(loop.body, cst.Call) if method_call(c) is not None}
    return "backward" in methods and "step" in methods


class TrainModeNotRestored(Rule):
    """A training loop never puts the model back in training mode after evaluation.

    What it does:
        Flags a training loop (a loop whose body calls ``.backward()`` and ``optimizer.step()``)
        in a function that never calls ``model.train()``, when that function (directly, or
        through a function of the same document it calls) runs ``model.eval()``. High when the
        evaluation runs inside the training loop itself; Medium when it only happens in a
        function the training calls before the loop.

    Why is this bad:
        ``eval()`` switches dropout off and makes batch norm use running statistics. Without
        ``train()`` afterwards, every epoch after the first evaluation trains a different model
        than intended: no error, just worse (or suspiciously overfit) results.

    Example:
        for epoch in range(epochs):
            for x, y in loader:
                loss = criterion(model(x), y); loss.backward(); opt.step()
            evaluate(model, val_loader)      # calls model.eval()

    Use instead:
        for epoch in range(epochs):
            model.train()
            for x, y in loader:
                ...
            evaluate(model, val_loader)
    """

    code = "TR605"
    title = "Training continues in eval mode after evaluation"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "def evaluate(model, xs):\n    model.eval()\n    return [model(x) for x in xs]\n\n"
        "def fit(model, opt, data, epochs):\n    for epoch in range(epochs):\n        model.train()\n"
        "        for x in data:\n            loss = model(x).sum()\n            loss.backward()\n            opt.step()\n"
        "        evaluate(model, data)\n",
        "def fit(model, opt, data):\n    for x in data:\n        loss = model(x).sum()\n        loss.backward()\n        opt.step()\n",
    ]
    INVALID = [
        Invalid("def evaluate(model, xs):\n    model.eval()\n    return [model(x) for x in xs]\n\n"
                "def fit(model, opt, data, epochs):\n    for epoch in range(epochs):\n"
                "        for x in data:\n            loss = model(x).sum()\n            loss.backward()\n            opt.step()\n"
                "        evaluate(model, data)\n", line=6),
        Invalid("def fit(model, opt, data, epochs):\n    for epoch in range(epochs):\n        for x in data:\n"
                "            model(x).sum().backward()\n            opt.step()\n        model.eval()\n"
                "        val = model(data[0])\n", line=2),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        self._functions = module_functions(self)
        self._memo: Dict[str, bool] = {}

    def _evaluates(self, scope: cst.CSTNode, seen: Optional[Set[str]] = None) -> bool:
        """``scope`` calls ``.eval()`` itself or through the document's functions it calls."""
        seen = seen or set()
        if _calls_method(scope, "eval"):
            return True
        for c in walk(scope, cst.Call):
            if isinstance(c.func, cst.Name) and c.func.value in self._functions and c.func.value not in seen:
                name = c.func.value
                if name not in self._memo:
                    self._memo[name] = self._evaluates(self._functions[name], seen | {name})
                if self._memo[name]:
                    return True
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        if _calls_method(node.body, "train"):
            return
        for loop in walk_own(node.body, cst.For):
            if not _is_training_loop(loop):
                continue
            outer = self._outermost_loop(loop, node)
            if not self._evaluates(node.body):
                return
            inside = self._evaluates(outer.body)
            self.report(
                outer,
                problem=(f"`{node.name.value}` trains in a loop but never calls `model.train()`, while "
                         + ("an evaluation inside the loop" if inside else "code it runs")
                         + " calls `model.eval()`."),
                impact=("After the first evaluation, dropout stays off and batch norm uses running statistics for "
                        "all further training steps: a different model trains, silently."),
                fix=Fix(before=self.code_for(outer).splitlines()[0],
                        after=self.code_for(outer).splitlines()[0] + "\n    model.train()  # at the start of every epoch"),
                severity=None if inside else "medium",
            )
            return

    def _outermost_loop(self, loop: cst.For, fn: cst.FunctionDef) -> cst.For:
        outer = loop
        for a in self.ancestors(loop):
            if a is fn:
                break
            if isinstance(a, cst.For):
                outer = a
        return outer
