from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._flow import exp_arg, scope_of
from ._numerics import shifted
from ._torch import is_method_call, positional, torch_function, walk_own
from .base import Invalid, Rule

_SUMS = {"sum", "cumsum", "mean", "nansum"}


class ExpWithoutMaxShift(Rule):
    """``exp`` of unbounded scores is summed or normalised without subtracting the maximum.

    What it does:
        Flags ``torch.exp(x)`` / ``x.exp()`` whose result is summed or used in a division (a
        hand-written softmax or partition function) when ``x`` was not shifted by its maximum
        (``x - x.amax(dim, keepdim=True)``, a running maximum included), is not a log-probability and is
        not clamped from above. When ``exp(x)`` is renormalised by its own sum, ``x`` is an unnormalised
        log-score (``log_alpha + log_beta``): its ``log_`` name does not make it safe.

    Why is this bad:
        float32 ``exp`` overflows to ``inf`` for inputs above ~88.7 (float16: ~11), and
        ``inf / inf`` is NaN. Scores grow with sequence length, temperature and training, so code
        that works on the test inputs returns NaN on real ones; very negative scores underflow to 0
        and make the denominator 0.

    Example:
        e = torch.exp(x)
        p = e / e.sum(-1, keepdim=True)

    Use instead:
        p = torch.softmax(x, dim=-1)
        # or, by hand: e = torch.exp(x - x.amax(-1, keepdim=True)); p = e / e.sum(-1, keepdim=True)
    """

    code = "TR202"
    title = "exp without max subtraction overflows"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef sm(x):\n    e = torch.exp(x - x.amax(-1, keepdim=True))\n    return e / e.sum(-1, keepdim=True)\n",
        "import torch\ndef probs(logp):\n    return torch.exp(logp).sum(-1)\n",
        "import torch\ndef f(x):\n    m = x.max(dim=-1, keepdim=True).values\n    e = (x - m).exp()\n    return e / e.sum(-1, keepdim=True)\n",
        "import torch\ndef scale(log_scale):\n    return torch.exp(log_scale)\n",
        "import torch\ndef f(x):\n    return torch.exp(-x.abs()).sum()\n",
        # an online softmax: shifted by a running maximum, reshaped
        "import torch\ndef blk(s, m_old):\n    m = torch.maximum(m_old, s.amax(-1))\n    p = torch.exp(s - m.unsqueeze(-1))\n"
        "    return p.sum(-1)\n",
        "import torch\ndef renorm(log_probs):\n    p = log_probs.exp()\n    return p / p.sum(-1, keepdim=True)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef softmax_manual(x):\n    e = torch.exp(x)\n    return e / e.sum(-1, keepdim=True)\n", line=3),
        Invalid("def partition(scores):\n    return scores.exp().sum(dim=-1)\n", line=2),
        # an unnormalised log joint (alpha + beta) renormalised by hand underflows to 0/0
        Invalid("import torch\ndef post(log_alpha, log_beta):\n    log_ab = log_alpha + log_beta\n    p = torch.exp(log_ab)\n"
                "    return p / p.sum(-1, keepdim=True)\n", line=4),
        Invalid("import torch as th\ndef attn(q, k):\n    w = th.exp(q @ k.T)\n    return w / w.sum(1, keepdim=True)\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        arg = exp_arg(self, node)
        if arg is None or self._inside_log(node):
            return
        fn, scope = scope_of(self, node)
        use = self._summed_or_divided(node, scope)
        manual = use == "softmax"
        # renormalising exp(x) by its own sum means x is an unnormalised log-score (a log joint that
        # grows with T): a ``log_`` name is no proof that it stays near 0
        if use is None or shifted(self, fn, arg, strict=manual):
            return
        a = self.code_for(arg)
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` is " + ("normalised by its own sum (a hand-written softmax)" if manual
                                                        else "summed or divided") +
                     f" without subtracting the maximum of `{a}` first."),
            impact=("float32 exp overflows to inf above ~88.7 (float16: ~11) and inf/inf is NaN; large scores "
                    "(long sequences, low temperature, late training) silently produce NaN" + (
                        ", and unnormalised log-scores below ~-103 (log joints that grow with the sequence length) "
                        "underflow to 0, giving 0/0 = NaN." if manual else ".")),
            fix=Fix(before=self.code_for(node),
                    after=(f"torch.softmax({a}, dim=-1)" if manual else
                           f"torch.exp({a} - {a}.amax(dim=-1, keepdim=True))  # or torch.logsumexp in log space")),
            evidence={"use": use},
        )

    def _inside_log(self, node) -> bool:
        for a in self.ancestors(node):
            if isinstance(a, cst.Call) and (torch_function(self, a) == "log" or is_method_call(self, a, {"log"})):
                return True
            if isinstance(a, (cst.SimpleStatementLine, cst.FunctionDef)):
                return False
        return False

    def _use_of(self, node) -> Optional[str]:
        """How the value of ``node`` is used right where it appears."""
        p = self.parent(node)
        if isinstance(p, cst.Attribute) and p.value is node and p.attr.value in _SUMS:
            return "sum"
        if isinstance(p, cst.Arg):
            call = self.parent(p)
            if isinstance(call, cst.Call) and torch_function(self, call) in _SUMS and positional(call) and positional(call)[0] is p:
                return "sum"
        if isinstance(p, cst.BinaryOperation) and isinstance(p.operator, cst.Divide):
            return "div"
        return None

    def _summed_or_divided(self, node, scope) -> Optional[str]:
        direct = self._use_of(node)
        if direct:
            return direct
        p = self.parent(node)
        if not (isinstance(p, cst.Assign) and len(p.targets) == 1 and isinstance(p.targets[0].target, cst.Name)):
            return None
        name = p.targets[0].target.value
        uses = set()
        for n in walk_own(scope, cst.Name):
            if n.value == name and n is not p.targets[0].target:
                u = self._use_of(n)
                if u:
                    uses.add(u)
        for b in walk_own(scope, cst.BinaryOperation):
            if isinstance(b.operator, cst.Divide) and isinstance(b.left, cst.Name) and b.left.value == name:
                if any(isinstance(x, cst.Name) and x.value == name for x in _walk_names(b.right)):
                    return "softmax"
        return "sum" if uses else None


def _walk_names(node):
    from ._torch import walk
    return walk(node, cst.Name)
