from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._torch import kwarg, positional, torch_function, walk_own
from ._clip_order import backward_then_step
from ._training import EXITS, optimizers, param_roots, stepped, straight_line, writes_grads
from .base import Invalid, Rule

_CLIPS = frozenset({"clip_grad_norm_", "clip_grad_value_", "clip_grad_norm"})
_INF = frozenset({"float('inf')", 'float("inf")', "math.inf", "np.inf", "numpy.inf", "torch.inf", "inf"})


class ClipGradAfterStep(Rule):
    """Gradient clipping runs after the optimizer step it was meant to protect, or before the backward.

    What it does:
        In one straight-line block, flags ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` (any
        import form) called after ``opt.step()`` / ``scaler.step(opt)`` with no backward in between and
        no further step before the next backward (or the end of the block, e.g. the end of a loop body).
        Also flags a clip that runs before the backward of its iteration (after ``zero_grad``, or at the top of
        the loop body) when a step follows that backward: it clips None or stale gradients. Clipping between
        backward and step, ``scaler.unscale_(opt)`` then clip then ``scaler.step(opt)``, a clip followed by
        another step, and norm-only calls with ``max_norm=inf`` are not flagged.

    Why is this bad:
        The step already applied the unclipped gradients, and the next backward (after ``zero_grad``)
        replaces the clipped ones: clipping never limits an update, so the exploding-gradient spikes it
        was added for still hit the weights, and a logged "clipped" norm is misleading.

    Example:
        loss.backward()
        optimizer.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)

    Use instead:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    """

    code = "TR611"
    title = "Gradient clipping after the optimizer step"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef fit(model, opt, data):\n    for x in data:\n        opt.zero_grad()\n        model(x).sum().backward()\n"
        "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n        opt.step()\n",
        "from torch.nn.utils import clip_grad_norm_\ndef fit(model, opt, scaler, data):\n    for x in data:\n"
        "        opt.zero_grad()\n        scaler.scale(model(x).sum()).backward()\n        scaler.unscale_(opt)\n"
        "        clip_grad_norm_(model.parameters(), 1.0)\n        scaler.step(opt)\n        scaler.update()\n",
        "import torch\ndef fit(model, opt, x, y):\n    model(x).sum().backward()\n    opt.step()\n    opt.zero_grad()\n"
        "    model(y).sum().backward()\n    torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)\n    opt.step()\n",
        "import torch\ndef clip(model):\n    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "def fit(model, opt, x):\n    model(x).sum().backward()\n    opt.step()\n    opt.zero_grad()\n",
        "import math, torch\ndef fit(model, opt, x):\n    model(x).sum().backward()\n    opt.step()\n"
        "    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)\n    opt.zero_grad()\n",
        "import torch\nopt = torch.optim.Adam(model.parameters())\nfor x in data:\n    opt.zero_grad()\n    model(x).sum().backward()\n"
        "    scheduler.step()\n    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n    opt.step()\n",
        "import torch\ndef fit(model, opt, loader, crit):\n    for x, y in loader:\n"
        "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n        opt.step()\n        opt.zero_grad()\n"
        "        crit(model(x), y).backward()\n",
        "import torch\ndef fit(G, D, opt_d, opt_g, x, z):\n    D(x).mean().backward()\n"
        "    torch.nn.utils.clip_grad_norm_(D.parameters(), 1.0)\n    opt_d.step()\n    D(G(z)).mean().backward()\n"
        "    opt_g.step()\n",
    ]
    INVALID = [
        Invalid("import torch\ndef fit(model, optimizer, loader, crit):\n    for x, y in loader:\n        optimizer.zero_grad()\n"
                "        crit(model(x), y).backward()\n        optimizer.step()\n"
                "        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)\n", line=7),
        Invalid("from torch import nn\nfrom torch.optim import AdamW\nopt = AdamW(net.parameters())\nfor xb in dl:\n"
                "    net(xb).mean().backward()\n    opt.step()\n    nn.utils.clip_grad_value_(net.parameters(), 0.1)\n"
                "    opt.zero_grad()\n", line=7),
        Invalid("from torch.nn.utils import clip_grad_norm_\ndef train_step(self, x):\n    self.scaler.scale(self.model(x).mean()).backward()\n"
                "    self.scaler.step(self.opt)\n    self.scaler.update()\n    clip_grad_norm_(self.model.parameters(), 5.0)\n"
                "    self.opt.zero_grad()\n", line=6),
        Invalid("import torch\ndef fit(model, opt, loader, crit):\n    for x, y in loader:\n        loss = crit(model(x), y)\n"
                "        opt.zero_grad(set_to_none=True)\n        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
                "        loss.backward()\n        opt.step()\n", line=6),
        Invalid("from torch.nn.utils import clip_grad_norm_\ndef fit(model, opt, loader, crit, max_norm):\n"
                "    for x, y in loader:\n        loss = crit(model(x), y)\n        if max_norm:\n"
                "            clip_grad_norm_(model.parameters(), max_norm)\n        loss.backward()\n        opt.step()\n"
                "        opt.zero_grad()\n", line=6),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node) or ""
        if not tf.startswith("nn.utils.") or tf.rsplit(".", 1)[-1] not in _CLIPS:
            return
        bound = kwarg(node, "max_norm") or (positional(node)[1:2] or [None])[0]
        if bound is not None and self.code_for(bound.value).replace(" ", "") in _INF:
            return

        its, k = straight_line(self, node)
        opt = None
        for it in reversed(its[:k or 0]):
            if isinstance(it, (cst.FunctionDef, cst.ClassDef)):
                continue
            opt = next((o for c in walk_own(it, cst.Call) if (o := stepped(self, c))), None)
            if isinstance(it, EXITS) or writes_grads(self, it, strict=False) or opt and not isinstance(
                    it, cst.BaseSmallStatement):
                return  # clipping after a backward, or after a conditional step
            if opt:
                break
        if opt is None:
            return self._before_backward(node)
        clipped = param_roots(self, node.args[0].value if node.args else None)
        optimized = param_roots(self, optimizers(self).get(opt))
        if clipped and optimized and not clipped & optimized:
            return  # clips another model's gradients
        for it in its[k + 1:]:
            if isinstance(it, (cst.FunctionDef, cst.ClassDef)):
                continue
            if any(stepped(self, c) for c in walk_own(it, cst.Call)):
                return  # a later step uses the clipped gradients
            if isinstance(it, EXITS) or writes_grads(self, it, strict=True):
                break
        self.report(
            node,
            problem=(f"`{self.code_for(node.func)}(...)` runs after `{opt}` has already been stepped with these gradients, "
                     "and no further step uses the clipped ones."),
            impact=("The update applied the unclipped gradients: clipping never limits a step, so gradient spikes still "
                    "hit the weights (and a logged clipped norm is misleading)."),
            fix=Fix(before=f"optimizer.step()\n{self.code_for(node)}", after=f"{self.code_for(node)}\noptimizer.step()"),
        )

    def _before_backward(self, node: cst.Call) -> None:
        """The clip (maybe under an ``if``) runs before the backward of this iteration, which a step then uses."""
        found = backward_then_step(self, node)
        if found is None:
            return
        backward, opt = found
        clipped = param_roots(self, node.args[0].value if node.args else None)
        optimized = param_roots(self, optimizers(self).get(opt))
        if clipped and optimized and not clipped & optimized:
            return
        self.report(
            node,
            problem=(f"`{self.code_for(node.func)}(...)` runs before this iteration's backward "
                     f"(`{self.code_for(backward).strip()}`, {self.where(backward)}): the gradients it clips are None "
                     "after `zero_grad` (or stale ones from the previous step), so nothing this step uses is clipped."),
            impact=("The step applies the fresh, unclipped gradients: clipping never limits an update, so gradient spikes "
                    "still hit the weights (and a logged norm of 0 or of the previous step is misleading)."),
            fix=Fix(before=f"{self.code_for(node)}\nloss.backward()", after=f"loss.backward()\n{self.code_for(node)}"),
            title="Gradient clipping before the backward",
        )

