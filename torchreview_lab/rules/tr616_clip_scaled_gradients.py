from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst

from ..findings import Fix
from ._knowledge import CLIP_GRAD_FUNCTIONS
from ._torch import enclosing_function, kwarg, last_part, method_call, positional, torch_function, walk_own
from ._training import backward_loss, is_grad_scaler, stepped, straight_line, writes_grads
from .base import Invalid, Rule

_INF = frozenset({"float('inf')", 'float("inf")', "math.inf", "np.inf", "numpy.inf", "torch.inf", "inf"})


class ClipScaledGradients(Rule):
    """Gradients are clipped while still multiplied by the GradScaler's loss scale.

    What it does:
        Flags ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` (any import form) whose nearest
        preceding backward, looking back through the enclosing blocks of the loop body or function, is
        ``scaler.scale(loss).backward()`` with ``scaler`` a ``torch.amp`` / ``torch.cuda.amp``
        GradScaler (or, when its construction is not visible, a ``scaler`` later stepped with
        ``scaler.step(opt)``), and no ``scaler.unscale_(opt)`` in between. Quiet when ``unscale_``
        precedes the clip, when the backward is a plain one, when the threshold reads the scaler
        (``max_norm * scaler.get_scale()``), and for norm-only calls with ``max_norm=inf``.

    Why is this bad:
        ``scaler.scale(loss)`` multiplies the loss, hence every gradient, by the current scale
        (65536 at the start, changing during training). The clip then compares the *scaled* norm with
        ``max_norm``: gradients are cut down by a factor of about the scale, and ``scaler.step`` divides
        them by the scale again, so the update is orders of magnitude too small and varies with the
        dynamic scale. Training crawls or stalls, with no error.

    Example:
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)

    Use instead:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
    """

    code = "TR616"
    title = "Gradient clipping on scaled (GradScaler) gradients"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\nfrom torch.nn.utils import clip_grad_norm_\nscaler = torch.amp.GradScaler('cuda')\n"
        "for x in loader:\n    opt.zero_grad()\n    scaler.scale(model(x).mean()).backward()\n    scaler.unscale_(opt)\n"
        "    clip_grad_norm_(model.parameters(), 1.0)\n    scaler.step(opt)\n    scaler.update()\n",
        "import torch\ndef fit(model, opt, loader, accum, scaler):\n    for i, x in enumerate(loader):\n"
        "        scaler.scale(model(x).mean() / accum).backward()\n        if (i + 1) % accum == 0:\n"
        "            scaler.unscale_(opt)\n            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "            scaler.step(opt)\n            scaler.update()\n            opt.zero_grad()\n",
        "import torch\ndef fit(model, opt, loader):\n    for x in loader:\n        opt.zero_grad()\n        model(x).mean().backward()\n"
        "        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)\n        opt.step()\n",
        "import torch\nclass LossScaler:\n    def scale(self, loss):\n        return loss * 8.0\n"
        "def fit(model, opt, x):\n    ls = LossScaler()\n    ls.scale(model(x).mean()).backward()\n"
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 8.0)\n    opt.step()\n",
        "import math, torch\ndef fit(model, opt, scaler, x):\n    scaler.scale(model(x).mean()).backward()\n"
        "    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)\n    scaler.step(opt)\n    scaler.update()\n",
    ]
    INVALID = [
        Invalid("import torch\nscaler = torch.cuda.amp.GradScaler()\nfor it, (x, y) in enumerate(dl):\n"
                "    with torch.autocast('cuda', dtype=torch.float16):\n        loss = crit(model(x), y)\n"
                "    scaler.scale(loss).backward()\n    if (it + 1) % 8 == 0:\n"
                "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n        scaler.step(optimizer)\n"
                "        scaler.update()\n        optimizer.zero_grad()\n", line=8),
        Invalid("from torch.amp import GradScaler\nfrom torch.nn.utils import clip_grad_value_\nclass Trainer:\n"
                "    def __init__(self, model, opt):\n        self.model, self.opt = model, opt\n        self.scaler = GradScaler()\n"
                "    def step(self, x):\n        self.opt.zero_grad()\n        self.scaler.scale(self.model(x).mean()).backward()\n"
                "        clip_grad_value_(self.model.parameters(), 0.1)\n        self.scaler.step(self.opt)\n"
                "        self.scaler.update()\n", line=10),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node) or ""
        if not tf.startswith("nn.utils.") or last_part(tf) not in CLIP_GRAD_FUNCTIONS:
            return
        bound = kwarg(node, "max_norm") or (positional(node)[1:2] or [None])[0]
        if bound is not None and self.code_for(bound.value).replace(" ", "") in _INF:
            return
        scaler = self._scaled_backward_before(node)
        if scaler is None:
            return
        known = is_grad_scaler(self, scaler, node)
        s = self.code_for(scaler)
        if any(s in self.code_for(a.value) for a in node.args[1:]):
            return  # a threshold multiplied by the scale (``max_norm * scaler.get_scale()``) is meant for scaled grads
        fn = enclosing_function(self, node) or self.ctx.module
        if known is False or known is None and not any(
                self.line_of(c) > self.line_of(node) and method_call(c) and method_call(c)[1] == "step"
                and self.code_for(method_call(c)[0]) == s for c in walk_own(fn, cst.Call)):
            return
        clip = self.code_for(node)
        self.report(
            node,
            problem=(f"`{clip}` clips the gradients of `{s}.scale(loss).backward()` while they are still multiplied by "
                     f"the loss scale: `{s}.unscale_(optimizer)` is not called before it."),
            impact=("The threshold is compared with gradients about 65536 times too large, so they are cut far too much "
                    f"and `{s}.step` then divides them by the scale again: updates become tiny and depend on the "
                    "dynamic scale, and training stalls without an error."),
            fix=Fix(before=f"{s}.scale(loss).backward()\n{clip}\n{s}.step(optimizer)",
                    after=f"{s}.scale(loss).backward()\n{s}.unscale_(optimizer)\n{clip}\n{s}.step(optimizer)"),
        )

    def _scaled_backward_before(self, node: cst.CSTNode) -> Optional[cst.BaseExpression]:
        """The scaler of the nearest backward before ``node`` when it is ``scaler.scale(loss).backward()``
        and no ``unscale_`` (or optimizer step) comes in between; None otherwise."""
        for it in self._before(node):
            if isinstance(it, (cst.FunctionDef, cst.ClassDef)):
                continue
            calls = list(walk_own(it, cst.Call))
            if any(method_call(c) and "unscale" in method_call(c)[1] or stepped(self, c) for c in calls):
                return None
            scaled = [bl[1] for c in calls if (bl := backward_loss(self, c)) and bl[1] is not None]
            if scaled:
                return scaled[0]
            if any(writes_grads(self, c, strict=True) for c in calls):
                return None
        return None

    def _before(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        """The statements that run before ``node``, nearest first: its block, then the blocks of the ``if``
        and ``try`` statements around it, up to the start of the enclosing loop body or function."""
        cur = node
        while True:
            its, k = straight_line(self, cur)
            if k is None:
                return
            yield from reversed(its[:k])
            block = next(a for a in self.ancestors(cur) if isinstance(a, (cst.IndentedBlock, cst.SimpleStatementSuite,
                                                                          cst.Module)) and not isinstance(
                self.parent(a), cst.With))
            owner = self.parent(block)
            owner = self.parent(owner) if isinstance(owner, (cst.Else, cst.ExceptHandler, cst.Finally)) else owner
            if not isinstance(owner, (cst.If, cst.Try)):
                return  # a loop, a function or the module: earlier iterations are not looked at
            cur = owner
