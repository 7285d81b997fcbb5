from __future__ import annotations

from typing import Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._activations import activation_of
from ._model_outputs import model_output
from ._rates import poisson_log_rate
from ._context import construction_of, last_layer
from ._knowledge import LOSS_INPUTS, WRONG_LOSS_INPUTS
from ._torch import (enclosing_function, kwarg, last_part, method_call, positional, source_text, torch_function,
                     with_arg_value)
from .base import Invalid, Rule


class ProbabilitiesIntoLogitLoss(Rule):
    """Probabilities fed to a loss that applies its own softmax/log (a "double softmax").

    What it does:
        Flags ``F.cross_entropy``/``nn.CrossEntropyLoss``/``BCEWithLogitsLoss`` whose input is
        ``softmax``/``sigmoid`` output, and ``F.nll_loss``/``F.kl_div``/``F.ctc_loss`` (and their modules)
        whose input is probabilities instead of log-probabilities. The input is followed through
        assignments in the same function (or notebook), reshapes, criteria built as ``crit = ...`` or
        ``self.crit = ...``, ``nn.Softmax`` modules, an ``nn.Sequential`` ending in one, and instances
        (``model = Net()``, ``self.model = Net(...)``) of a document class whose ``forward`` always returns one.
        Also ``F.poisson_nll_loss``/``nn.PoissonNLLLoss`` with ``log_input=True`` (the default) given a positive
        rate (``softplus``/``exp``/``relu`` output, followed the same ways); ``log_input=False`` is quiet.

    Why is this bad:
        ``cross_entropy`` applies ``log_softmax`` itself, so the loss optimised is not cross-entropy: it
        is bounded and its gradient vanishes as the softmax saturates. ``nll_loss``/``kl_div`` read their
        input as log-probabilities, ``poisson_nll_loss`` as a log-rate. Nothing fails: the model trains slowly.

    Example:
        loss = F.cross_entropy(F.softmax(logits, dim=-1), target)
        loss = F.nll_loss(F.softmax(logits, dim=-1), target)
        loss = F.poisson_nll_loss(F.softplus(z), counts)

    Use instead:
        loss = F.cross_entropy(logits, target)
        loss = F.nll_loss(F.log_softmax(logits, dim=-1), target)
        loss = F.poisson_nll_loss(F.softplus(z), counts, log_input=False)
    """

    code = "TR607"
    title = "Probabilities passed to a loss that expects logits or log-probabilities"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    autofix = True
    _H = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
    VALID = [
        _H + "def f(z, y):\n    return F.cross_entropy(z, y) + F.nll_loss(F.log_softmax(z, dim=-1), y)\n",
        _H + "def f(s, t):\n    return F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction='batchmean')\n",
        _H + "def f(z, y):\n    p = torch.sigmoid(z)\n    return F.binary_cross_entropy(p, y)\n",
        _H + "def f(z, t):\n    return F.cross_entropy(z, F.softmax(t, dim=-1))\n",
        _H + "def f(z, y, flag):\n    p = z\n    if flag:\n        p = z.softmax(-1)\n    return F.cross_entropy(p, y)\n",
        _H + "class Net(nn.Module):\n    def forward(self, x):\n        z = self.fc(x)\n        if self.training:\n"
        "            return z\n        return z.softmax(-1)\n\nmodel = Net()\nloss = F.cross_entropy(model(x), y)\n",
        _H + "def f(z, y):\n    return F.poisson_nll_loss(F.softplus(z), y, log_input=False) + F.poisson_nll_loss(z, y)\n",
        _H + "def f(z, y):\n    crit = nn.PoissonNLLLoss(log_input=False)\n    return crit(torch.exp(z), y)\n",
    ]
    INVALID = [
        Invalid(_H + "def f(z, y):\n    return F.cross_entropy(F.softmax(z, dim=-1), y)\n", line=5,
                expected_fix=_H + "def f(z, y):\n    return F.cross_entropy(z, y)\n"),
        Invalid(_H + "def f(z, y):\n    return F.nll_loss(F.softmax(z, dim=-1), y)\n", line=5,
                expected_fix=_H + "def f(z, y):\n    return F.nll_loss(F.log_softmax(z, dim=-1), y)\n"),
        Invalid("import torch as th\nfrom torch.nn import CrossEntropyLoss\ndef f(z, y):\n    probs = th.softmax(z, 1)\n"
                "    crit = CrossEntropyLoss()\n    return crit(probs.view(-1, 3), y)\n", line=6),
        Invalid(_H + "def f(z, y):\n    return nn.CrossEntropyLoss()(torch.softmax(z, -1), y)\n", line=5),
        Invalid(_H + "def f(s, t):\n    return F.kl_div(input=s.softmax(-1), target=t.softmax(-1))\n", line=5,
                expected_fix=_H + "def f(s, t):\n    return F.kl_div(input=s.log_softmax(-1), target=t.softmax(-1))\n"),
        Invalid(_H + "class M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))\n        self.loss = nn.CrossEntropyLoss()\n"
                "    def step(self, x, y):\n        out = self.net(x)\n        return self.loss(out, y)\n", line=11),
        Invalid(_H + "def f(z, y):\n    return F.binary_cross_entropy_with_logits(torch.sigmoid(z), y)\n", line=5,
                expected_fix=_H + "def f(z, y):\n    return F.binary_cross_entropy_with_logits(z, y)\n"),
        Invalid(_H + "class Net(nn.Module):\n    def forward(self, x):\n        return F.softmax(self.fc(x), dim=-1)\n\n"
                "def fit(x, y):\n    model = Net().cuda()\n    crit = nn.CrossEntropyLoss()\n    return crit(model(x), y)\n", line=11),
        Invalid(_H + "class Net(nn.Module):\n    def forward(self, x):\n        return F.softplus(self.head(x))\n\n"
                "model = Net()\nloss = F.poisson_nll_loss(model(x), y)\n", line=9),
        Invalid(_H + "def f(z, y):\n    rate = z.exp()\n    return F.poisson_nll_loss(rate, y)\n", line=6, expected_fix=_H +
                "def f(z, y):\n    rate = z.exp()\n    return F.poisson_nll_loss(rate, y, log_input=False)\n"),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if (poisson := poisson_log_rate(self, node)) is not None:
            return self.report(**poisson)
        loss = self._loss_of(node)
        arg = kwarg(node, "input") or kwarg(node, "log_probs") or next(iter(positional(node)), None)
        if loss is None or arg is None:
            return
        expects, fn = LOSS_INPUTS[loss], enclosing_function(self, node)
        found = activation_of(self, arg.value, fn, self.line_of(node)) or model_output(self, fn, arg.value)
        if found is None or found[0] not in WRONG_LOSS_INPUTS[expects]:
            return
        kind, producer = found[:2]
        if len(found) == 3:  # the model's forward applies it: fix the forward
            fix, safe = Fix(before=self.code_for(found[2]), after=f"<{expects}: drop the final {kind} from "
                            f"`forward` and apply it only where probabilities are needed>"), False
        else:
            fix, safe = self._fix(node, arg, producer, kind, expects)
        via = f", whose `forward` returns `{self.code_for(found[2])}`" if len(found) == 3 else ""
        what = {"softmax": "softmax probabilities", "sigmoid": "sigmoid probabilities", "log_softmax": "log-probabilities"}
        does = {"logits": "applies log_softmax to it", "binary logits": "applies a sigmoid to it"}
        self.report(
            producer if safe else node,
            problem=(f"`{self.code_for(node)}` receives {what[kind]} (`{self.code_for(producer)}`{via}), but `{loss}` "
                     f"expects {expects} and {does.get(expects, 'reads it as log-probabilities')}."),
            impact=("The loss optimised is not the intended objective: its gradient vanishes as the probabilities "
                    "saturate, so the model trains slowly or to a worse optimum, without any error."),
            fix=fix, replacement=producer if safe else None,
        )

    def _loss_of(self, call: cst.Call) -> Optional[str]:
        tf = torch_function(self, call)
        if tf is not None:
            name = last_part(tf)
            return name if name in LOSS_INPUTS and name[0].islower() and (tf.startswith("nn.") or tf == name) else None
        built = construction_of(self, enclosing_function(self, call), call.func)
        name = last_part(torch_function(self, built)) if built is not None else ""
        return name if name in LOSS_INPUTS and name[0].isupper() else None

    def _fix(self, node, arg, producer, kind: str, expects: str) -> Tuple[Fix, bool]:
        """The fix, and whether it is a safe autofix (an inline softmax/sigmoid call rewritten in place)."""
        module = construction_of(self, enclosing_function(self, node), producer.func)
        if module is not None and torch_function(self, producer) is None:  # a module does it: change the module
            last = last_layer(self, module)
            if expects == "log-probabilities" and kind == "softmax" and isinstance(last.func, cst.Attribute):
                after = source_text(self, module, [(last.func.attr, "LogSoftmax")])
            elif last is not module and expects != "log-probabilities":
                after = f"{self.code_for(module.func)}({', '.join(self.code_for(a.value) for a in module.args[:-1])})"
            else:
                after = f"{self.code_for(node.func)}(...)  # pass the {expects}, not {kind} output"
            return Fix(before=source_text(self, module), after=after), False
        mc = method_call(producer)
        inner = (mc[0] if torch_function(self, producer) is None else
                 (kwarg(producer, "input") or next(iter(positional(producer)), arg)).value)
        if expects == "log-probabilities":
            rename = kind == "softmax" and isinstance(producer.func, cst.Attribute)
            fixed = source_text(self, producer, [(producer.func.attr, "log_softmax")]) if rename else None
            advice = fixed or f"torch.log_softmax({self.code_for(inner)}, dim=-1)"
        else:  # drop a softmax before cross_entropy, a sigmoid before BCE-with-logits (a sigmoid before CE: say so)
            fixed = source_text(self, inner) if kind == "softmax" or expects == "binary logits" else None
            advice = self.code_for(inner)
        if producer is arg.value and fixed is not None:
            return Fix(before=source_text(self, producer), after=fixed), True
        fixed_call = with_arg_value(node, arg, cst.parse_expression(advice))
        return Fix(before=self.code_for(node), after=self.code_for(fixed_call)), False
