from __future__ import annotations

import re
from typing import Optional

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value
from ._flow import in_no_grad
from ._torch import enclosing_function, method_call, torch_function, walk
from .base import Invalid, Rule

# A log-probability of the taken actions, by name or by the call that made it.
_LOGP_NAME = re.compile(r"(^|_)(log_?probs?|logp\w*|log_pi|log_likelihoods?|logprobs?|lp)(_|$)", re.I)
_LOGP_CALLS = frozenset({"log_prob", "log_softmax", "log_probs"})
# A critic's estimate: what a baseline subtraction removes.
_VALUE_NAME = re.compile(r"(^|_)(values?|vals?|v|v_?pred|value_?preds?|baselines?|critic\w*|state_values?|v_?s)(_|$)",
                         re.I)
_DETACHING = frozenset({"detach", "item", "cpu", "numpy", "tolist", "detach_"})


class AdvantageNotDetached(Rule):
    """A policy-gradient loss multiplies log-probabilities by an advantage that still carries the critic's graph.

    What it does:
        Flags ``logp * adv`` (inside a loss such as ``-(logp * adv).mean()``) where ``logp`` is a
        log-probability (``dist.log_prob(a)``, ``log_softmax(...)`` gathered, or a name such as ``log_probs``
        or ``logp_a``) and ``adv`` is (or is bound to) ``returns - values`` whose ``values`` is a critic's
        output (a name such as ``values``/``baseline``/``v_pred``, or ``critic(obs)``) that is not detached
        (``.detach()``, ``.item()``, computed under ``no_grad``). ``(returns - values).detach()``,
        ``returns - values.detach()`` and advantages computed under ``no_grad`` are not flagged.

    Why is this bad:
        The REINFORCE gradient with a baseline treats the advantage as a constant weight. Left attached,
        the policy loss also sends gradient into the value head (``-logp * (R - V)`` pushes ``V`` up
        wherever ``logp`` is negative, i.e. always), so the critic is trained on the wrong objective, the
        baseline is biased and the policy gradient loses its variance reduction; shared trunks get both
        signals mixed. Training is slower or unstable, with no error.

    Example:
        advantages = returns - values
        policy_loss = -(log_probs * advantages).mean()

    Use instead:
        advantages = (returns - values).detach()
        policy_loss = -(log_probs * advantages).mean()
    """

    code = "TR308"
    title = "Policy-gradient advantage not detached from the critic"
    category = "gradient-flow"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "def loss_fn(log_probs, returns, values):\n    adv = (returns - values).detach()\n    return -(log_probs * adv).mean()\n",
        "def loss_fn(log_probs, returns, values):\n    adv = returns - values.detach()\n    return -(log_probs * adv).mean()\n",
        "import torch\ndef loss_fn(log_probs, returns, critic, obs):\n    with torch.no_grad():\n        adv = returns - critic(obs)\n"
        "    return -(log_probs * adv).mean()\n",
        "def loss_fn(log_probs, returns, mean):\n    adv = returns - mean\n    return -(log_probs * adv).mean()\n",
        "def value_loss(values, returns):\n    return ((returns - values) ** 2).mean()\n",
        "import torch\ndef update(net, obs, rets):\n    logits, log_probs = net.pi(obs)\n    with torch.no_grad():\n"
        "        _, values = net(obs)\n    return -(log_probs * (rets - values)).mean()\n",
    ]
    INVALID = [
        Invalid("def update(net, obs, acts, rets):\n    probs, log_probs, values = net(obs)\n"
                "    logp_a = log_probs.gather(1, acts.unsqueeze(1)).squeeze(1)\n    advantages = rets - values\n"
                "    policy_loss = -(logp_a * advantages).mean()\n    return policy_loss\n", line=5),
        Invalid("def a2c(dist, actions, returns, critic, obs):\n    return -(dist.log_prob(actions) * (returns - critic(obs))).mean()\n",
                line=2),
    ]

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        if not isinstance(node.operator, cst.Multiply):
            return
        fn = enclosing_function(self, node)
        for logp, adv in ((node.left, node.right), (node.right, node.left)):
            if not self._log_prob(fn, logp):
                continue
            critic = self._attached_critic(fn, adv, node)
            if critic is None:
                continue
            self.report(
                node,
                problem=(f"`{self.code_for(node)}` weights the log-probabilities by `{self.code_for(adv)}`, which "
                         f"subtracts the critic's `{critic}` without `.detach()`: the policy loss also trains the critic."),
                impact=("The advantage is meant to be a constant weight; attached, the policy gradient flows into the "
                        "value head (biasing the baseline and mixing objectives in a shared trunk): slower, unstable "
                        "training with no error."),
                fix=Fix(before=self.code_for(adv), after=f"({self.code_for(adv)}).detach()"),
            )
            return

    def _log_prob(self, fn, expr, depth: int = 0) -> bool:
        while isinstance(expr, cst.Call) and (method_call(expr) or (None, ""))[1] in ("gather", "squeeze", "sum",
                                                                                     "view", "reshape", "unsqueeze"):
            expr = method_call(expr)[0]
        if isinstance(expr, cst.Name):
            if _LOGP_NAME.search(expr.value):
                return True
            v = reaching_value(self, fn, expr.value, expr) if depth < 3 else None
            return v is not None and self._log_prob(fn, v, depth + 1)
        if isinstance(expr, cst.Call):
            name = (torch_function(self, expr) or (method_call(expr) or (None, ""))[1] or "").split(".")[-1]
            return name in _LOGP_CALLS
        return False

    def _attached_critic(self, fn, adv, use: cst.CSTNode, depth: int = 0) -> Optional[str]:
        """The critic term of ``returns - values`` in ``adv`` when nothing detaches it."""
        if isinstance(adv, cst.Name) and depth < 3:
            v = reaching_value(self, fn, adv.value, use)
            return None if v is None or in_no_grad(self, v) else self._attached_critic(fn, v, v, depth + 1)
        if not (isinstance(adv, cst.BinaryOperation) and isinstance(adv.operator, cst.Subtract)):
            return None
        right = adv.right
        if any(method_call(c) and method_call(c)[1] in _DETACHING for c in walk(right, cst.Call)):
            return None
        if isinstance(right, cst.Name):
            held = reaching_value(self, fn, right.value, adv)
            if held is not None and (in_no_grad(self, held) or any(
                    method_call(c) and method_call(c)[1] in _DETACHING for c in walk(held, cst.Call))):
                return None
            binds = [a for a in walk(fn or self.ctx.module, cst.Assign) if any(
                isinstance(n, cst.Name) and n.value == right.value for t in a.targets for n in walk(t.target))]
            if binds and all(in_no_grad(self, a) for a in binds):
                return None  # `_, values = net(obs)` under no_grad
            return right.value if _VALUE_NAME.search(right.value) else None
        if isinstance(right, cst.Call) and re.search(r"critic|value|baseline", self.code_for(right.func), re.I):
            return self.code_for(right)
        return None
