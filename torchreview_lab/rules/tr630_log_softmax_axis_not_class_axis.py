from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._axes2 import provably_other, trace
from ._context import construction_of
from ._contraction import rank
from ._torch import enclosing_function, kwarg, last_part, positional, source_text, torch_function
from .base import Invalid, Rule

_LOSSES = {"ctc_loss": "ctc", "CTCLoss": "ctc", "nll_loss": "nll", "NLLLoss": "nll", "kl_div": "kl", "KLDivLoss": "kl"}
_LAYOUT = {"ctc": "its (T, N, C) `log_probs` carry the classes on axis 2",
           "nll": "its (N, C, ...) input carries the classes on axis 1"}


class LogSoftmaxAxisNotClassAxis(Rule):
    """``log_softmax`` normalises an axis that the loss it feeds does not read as the class axis.

    What it does:
        Follows the input of ``F.ctc_loss``/``nn.CTCLoss`` (``(T, N, C)``: classes on axis 2) and
        ``F.nll_loss``/``nn.NLLLoss`` (``(N, C, ...)``: classes on axis 1) back through names, casts, full
        slices, ``transpose``/``swapaxes``/``permute``/``movedim`` and into the ``forward`` of a document model,
        to the ``log_softmax`` (or ``log`` of a ``softmax``, or an ``nn.LogSoftmax`` module) that made it, and
        flags it when the axis it normalised is provably not the one the loss reads as classes. The rank
        comes from the loss (CTC: 3), a ``permute`` arity or what built the tensor; a negative ``dim`` of
        unknown rank is left alone for ``nll_loss``. ``F.kl_div``: flagged when the input's ``log_softmax``
        and the target's ``softmax`` normalise different axes (both counted the same way).

    Why is this bad:
        The loss reads the class axis as a distribution over classes. Normalised over time or the batch
        instead, the "log-probabilities" of each frame or example do not sum to one over the classes: CTC's
        alignment scores, the NLL of each label and the KL are those of a different distribution. Shapes
        match, the loss decreases, and the model learns the wrong thing without any error.

    Example:
        log_probs = logits.log_softmax(dim=1).transpose(0, 1)   # logits (N, T, C): normalised over T
        loss = ctc(log_probs, targets, in_lens, tgt_lens)       # ctc = nn.CTCLoss()

    Use instead:
        log_probs = logits.log_softmax(dim=-1).transpose(0, 1)  # normalise the classes, then (T, N, C)
        loss = ctc(log_probs, targets, in_lens, tgt_lens)
    """

    code = "TR630"
    title = "log_softmax over an axis the loss does not read as the class axis"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    _H = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\nctc = nn.CTCLoss(blank=0)\n"
    VALID = [
        _H + "def f(logits, t, il, tl):\n    lp = logits.log_softmax(dim=-1).transpose(0, 1)\n    return ctc(lp, t, il, tl)\n",
        _H + "def f(logits, t, il, tl):\n    lp = F.log_softmax(logits, 2).permute(1, 0, 2)\n"
        "    return F.ctc_loss(lp, t, il, tl)\n",
        _H + "def f(feats, t, il, tl):\n    lp = F.log_softmax(feats, dim=1).permute(2, 0, 1)  # (N, C, T) -> (T, N, C)\n"
        "    return ctc(lp, t, il, tl)\n",
        _H + "def f(x, y):\n    return F.nll_loss(x.log_softmax(dim=1), y) + F.nll_loss(x.log_softmax(-1), y)\n",
        _H + "def f(s, t):\n    return F.kl_div(F.log_softmax(s, dim=-1), F.softmax(t, dim=-1), reduction='batchmean')\n",
    ]
    INVALID = [
        Invalid(_H + "def f(logits, t, il, tl):\n    log_probs = logits.log_softmax(dim=1).transpose(0, 1)\n"
                "    return ctc(log_probs, t, il, tl)\n", line=6),
        Invalid(_H + "def f(x, y):\n    return F.nll_loss(x.log_softmax(dim=0), y)\n", line=6),
        Invalid(_H + "def f(logits, t, il, tl):\n    lp = F.log_softmax(logits.permute(1, 0, 2), dim=0)\n"
                "    return F.ctc_loss(lp, t, il, tl)\n", line=6),
        Invalid(_H + "class Net(nn.Module):\n    def forward(self, x):\n        return F.log_softmax(self.fc(x), dim=0)\n"
                "model = Net()\ncrit = nn.NLLLoss()\nloss = crit(model(x), y)\n", line=7),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        kind = self._loss(node)
        pos = positional(node)
        arg = kwarg(node, "log_probs") or kwarg(node, "input") or (pos[0] if pos else None)
        if kind is None or arg is None or any(a.star for a in node.args):
            return
        fn = enclosing_function(self, node)
        if kind == "kl":
            return self._kl(node, fn, arg.value, kwarg(node, "target") or (pos[1] if len(pos) > 1 else None))
        r = rank(self, fn, arg.value)
        if kind == "ctc":
            axis, n = (1, 2) if r == 2 else (2, 3) if r in (None, 3) else (None, None)
        else:
            axis, n = (0, 1) if r == 1 else (1, r)
        found = trace(self, fn, arg.value, axis, n) if axis is not None else None
        if found is None or not provably_other(found):
            return
        to = "-1" if found.ndim is not None and found.axis == found.ndim - 1 else str(found.axis)
        self._report(found, f"`{self.code_for(node)}` ({self.where(node)}) reads axis {found.axis} of it as the "
                     f"classes ({_LAYOUT[kind]})", Fix(before=source_text(self, found.holder),
                                                       after=source_text(self, found.holder, [(found.dim_node, to)])))

    def _kl(self, node, fn, input_expr, target: Optional[cst.Arg]) -> None:
        a = trace(self, fn, input_expr, None, None)
        b = trace(self, fn, target.value, None, None, logged=True) if target is not None else None
        if a is None or b is None or a.dim == b.dim or not ((a.dim < 0) == (b.dim < 0)) \
                or a.ndim is not None and b.ndim is not None and a.ndim != b.ndim:
            return
        before = f"{source_text(self, a.holder)}  ...  {source_text(self, b.holder)}"
        after = f"{source_text(self, a.holder)}  ...  {source_text(self, b.holder, [(b.dim_node, str(a.dim))])}"
        self._report(a, f"the target of `{self.code_for(node)}` ({self.where(node)}) is normalised over axis {b.dim} "
                     f"(`{self.code_for(b.call)}`): the KL compares distributions over different axes",
                     Fix(before=before, after=f"{after}  # the same (class) axis for both"))

    def _loss(self, call: cst.Call) -> Optional[str]:
        tf = torch_function(self, call)
        if tf is not None:
            return _LOSSES.get(last_part(tf)) if tf.startswith("nn.functional.") else None
        if not isinstance(call.func, (cst.Name, cst.Attribute)):
            return None
        built = construction_of(self, enclosing_function(self, call), call.func)
        name = last_part(torch_function(self, built)) if built is not None and built is not call else ""
        return _LOSSES.get(name) if name[:1].isupper() else None

    def _report(self, found, why: str, fix: Fix) -> None:
        done = self.ctx.cache.setdefault(("tr630-reported",), set())
        if id(found.call) in done:
            return
        done.add(id(found.call))
        self.report(
            found.call,
            problem=f"`{self.code_for(found.call)}` normalises axis {found.dim}, but {why}.",
            impact=("What the loss reads as log-probabilities over the classes is normalised over another axis (time, "
                    "the batch): it does not sum to one over the classes, so the loss trains a different model, "
                    "silently: shapes match and the loss still decreases."),
            fix=fix,
        )
