from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import is_none, kwarg, positional, torch_function, with_keyword
from .base import Invalid, Rule

# torch callable -> position of ``dim`` among the positional arguments. ``gumbel_softmax`` defaults
# to ``dim=-1`` and ``torch.softmax``/``Tensor.softmax`` require ``dim`` (TypeError): neither belongs here.
_FUNCTIONS = {f"nn.functional.{n}": 1 for n in ("softmax", "log_softmax", "softmin")}
_MODULES = {f"nn.{p}{n}": 0 for n in ("Softmax", "LogSoftmax", "Softmin") for p in ("", "modules.", "modules.activation.")}


class SoftmaxImplicitDim(Rule):
    """``softmax`` / ``log_softmax`` / ``softmin`` called or constructed without ``dim``.

    What it does:
        Flags ``F.softmax(x)``, ``F.log_softmax(x)`` and ``F.softmin(x)`` and the modules
        ``nn.Softmax()``, ``nn.LogSoftmax()`` and ``nn.Softmin()`` when ``dim`` is not passed
        (positionally or as a keyword) or is the literal ``None``. A variable ``dim``, ``*args`` /
        ``**kwargs`` forwarding, ``F.gumbel_softmax`` (``dim=-1`` by default), ``nn.Softmax2d`` and
        ``torch.softmax`` / ``Tensor.softmax`` (which require ``dim``) are left alone. No autofix:
        which axis must sum to one is the author's decision.

    Why is this bad:
        Without ``dim`` torch guesses (``_get_softmax_dim``): dim 0 for 0-, 1- and 3-D inputs, dim 1
        otherwise. A 3-D ``(batch, time, classes)`` or ``(batch, seq, vocab)`` input is therefore
        normalised across the *batch*: every example's probabilities depend on the other examples,
        the loss trains the wrong thing and nothing fails. The guess only matches ``dim=-1`` for 2-D
        inputs, so code that works on ``(batch, classes)`` silently breaks when a time axis is added.
        Torch only emits a deprecation warning ("Implicit dimension choice ... has been deprecated").

    Example:
        probs = F.softmax(logits)            # logits: (batch, T, classes) -> normalised over batch
        head = nn.Sequential(nn.Linear(d, k), nn.LogSoftmax())

    Use instead:
        probs = F.softmax(logits, dim=-1)    # the class dimension
        head = nn.Sequential(nn.Linear(d, k), nn.LogSoftmax(dim=-1))
    """

    code = "TR612"
    title = "softmax / log_softmax without dim normalises over a guessed dimension"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch.nn.functional as F\ndef f(x):\n    return F.softmax(x, dim=-1) + F.log_softmax(x, 1) + F.softmin(x, -1)\n",
        "import torch.nn.functional as F\ndef sample(logits):\n    return F.gumbel_softmax(logits, tau=0.5, hard=True)\n",
        "import torch.nn as nn\nhead = nn.Sequential(nn.Linear(8, 3), nn.LogSoftmax(dim=1))\nact = nn.Softmax(-1)\nseg = nn.Softmax2d()\n",
        "import torch\ndef f(x):\n    return torch.softmax(x, -1) + x.log_softmax(dim=2)\n",
        "import torch.nn.functional as F\nclass Attn:\n    def __init__(self, dim=None):\n        self.dim = dim\n"
        "    def __call__(self, x, *args, **kwargs):\n        return F.softmax(x, self.dim) + F.softmax(x, *args, **kwargs)\n",
        "def softmax(x):\n    return x / x.sum()\nprobs = softmax([1.0, 2.0])\n",
    ]
    INVALID = [
        Invalid("import torch.nn.functional as F\ndef predict(model, x):\n    logits = model(x)  # (batch, T, vocab)\n"
                "    return F.softmax(logits)\n", line=4),
        Invalid("import torch.nn as nn\nclf = nn.Sequential(nn.Linear(128, 10),\n                    nn.LogSoftmax())\n", line=3),
        Invalid("from torch.nn.functional import log_softmax\ndef nll(scores, y):\n"
                "    return -log_softmax(scores, None).gather(-1, y[:, None]).mean()\n", line=3),
        Invalid("import torch as th\nclass Gate(th.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.norm = th.nn.Softmin(dim=None)\n", line=5),
        Invalid("import torch\ndef weights(d):\n    return torch.nn.functional.softmin(d, dtype=torch.float64)\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        index = _FUNCTIONS.get(tf, _MODULES.get(tf)) if tf else None
        if index is None or any(a.star for a in node.args):  # ``*args``/``**kwargs`` may carry dim
            return
        dim = self._dim(node, index)
        if dim is not None and not is_none(dim.value):
            return
        name = tf.rsplit(".", 1)[-1]
        if dim is not None:
            after = node.with_changes(args=[a.with_changes(value=cst.parse_expression("-1")) if a is dim else a
                                            for a in node.args])
        else:
            after = with_keyword(node, "dim", cst.parse_expression("-1"))
        module = tf in _MODULES
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` leaves the {'normalised ' if module else ''}dimension implicit: torch "
                     f"guesses dim 0 for 0-, 1- and 3-D inputs and dim 1 otherwise (and only warns that "
                     f"implicit `{name}` dim is deprecated)."),
            impact=("A 3-D (batch, time, classes) input is normalised across the batch, so each example's "
                    "probabilities depend on the rest of the batch: silently wrong outputs and a loss that "
                    "trains the wrong thing. The guess matches the class axis only for 2-D inputs."),
            fix=Fix(before=self.code_for(node),
                    after=f"{self.code_for(after)}  # pass the axis that must sum to 1 (usually -1, the classes)"),
        )

    @staticmethod
    def _dim(node: cst.Call, index: int) -> Optional[cst.Arg]:
        arg = kwarg(node, "dim")
        pos = positional(node)
        return arg if arg is not None else pos[index] if len(pos) > index else None
