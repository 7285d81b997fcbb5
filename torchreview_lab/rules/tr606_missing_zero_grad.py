from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._torch import method_call, walk, walk_own
from .base import Invalid, Rule
from .tr605_train_mode_not_restored import _is_training_loop

_RESETS = {"zero_grad"}


def _resets_grads(scope: cst.CSTNode) -> bool:
    """``opt.zero_grad()`` / ``model.zero_grad()``, ``p.grad = None`` or ``p.grad.zero_()`` in ``scope``."""
    for n in walk(scope):
        if isinstance(n, cst.Call):
            mc = method_call(n)
            if mc and mc[1] in _RESETS:
                return True
            if mc and mc[1] in ("zero_", "detach_") and isinstance(mc[0], cst.Attribute) and mc[0].attr.value == "grad":
                return True
        elif isinstance(n, cst.Assign):
            for t in n.targets:
                if isinstance(t.target, cst.Attribute) and t.target.attr.value == "grad":
                    return True
    return False


class MissingZeroGrad(Rule):
    """A training loop never clears gradients.

    What it does:
        Flags a loop whose body calls ``.backward()`` and ``optimizer.step()`` when neither the
        loop nor the function around it calls ``zero_grad()`` (or sets ``p.grad = None``).

    Why is this bad:
        ``backward()`` adds into ``.grad``. Without clearing, step n applies the sum of all
        gradients so far: the effective learning rate grows every step and training diverges or
        drifts, with no error raised.

    Example:
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()

    Use instead:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
        # (for gradient accumulation, zero every `accum` steps, next to the step)
    """

    code = "TR606"
    title = "Training loop never clears gradients (missing zero_grad)"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "def fit(model, opt, data):\n    for x in data:\n        opt.zero_grad()\n        model(x).sum().backward()\n        opt.step()\n",
        "def fit(model, opt, data, k):\n    for i, x in enumerate(data):\n        (model(x).sum() / k).backward()\n"
        "        if (i + 1) % k == 0:\n            opt.step()\n            opt.zero_grad(set_to_none=True)\n",
        "def fit(model, opt, data):\n    for x in data:\n        for p in model.parameters():\n            p.grad = None\n"
        "        model(x).sum().backward()\n        opt.step()\n",
    ]
    INVALID = [
        Invalid("def fit(model, opt, data):\n    for x in data:\n        loss = model(x).sum()\n        loss.backward()\n"
                "        opt.step()\n", line=2),
        Invalid("for epoch in range(3):\n    for x in data:\n        model(x).sum().backward()\n        opt.step()\n", line=2),
    ]

    def visit_For(self, node: cst.For) -> None:
        if not _is_training_loop(node):
            return
        # only the innermost training loop: an outer epoch loop contains the same calls
        if any(_is_training_loop(inner) for inner in walk_own(node.body, cst.For)):
            return
        scope = node
        for a in self.ancestors(node):
            if isinstance(a, (cst.FunctionDef, cst.Module)):
                scope = a
                break
        if _resets_grads(scope):
            return
        self.report(
            node,
            problem="This loop calls `.backward()` and `optimizer.step()` but gradients are never cleared "
                    "(no `zero_grad()` or `p.grad = None`).",
            impact=("`backward()` accumulates into `.grad`: every step applies the sum of all previous gradients, so "
                    "the effective learning rate grows each step and training drifts or diverges silently."),
            fix=Fix(before=self.code_for(node).splitlines()[0],
                    after=self.code_for(node).splitlines()[0] + "\n    optimizer.zero_grad(set_to_none=True)"),
        )
