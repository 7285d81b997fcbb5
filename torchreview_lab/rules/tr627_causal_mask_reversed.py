from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._masks import Fact, Tri, blocked_set, causal_intent, fixed_triangle, intent_scope, keys_before_queries
from .base import Invalid, Rule

_H = "import torch\nimport torch.nn as nn\n"
_GPT = (_H + "class CausalSelfAttention(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
        "        self.register_buffer('bias', torch.tril(torch.ones(n, n)).view(1, 1, n, n))\n"
        "    def forward(self, q, k):\n        T = q.size(-2)\n        att = q @ k.transpose(-2, -1)\n"
        "        att = att.masked_fill(self.bias[:, :, :T, :T] == {v}, float('-inf'))\n        return att.softmax(-1)\n")


class CausalMaskReversed(Rule):
    """Causal mask blocks the past instead of the future (or blocks the diagonal too).

    What it does:
        Works out which triangle of the scores (query ``i``, key ``j``) a causal attention mask sets to
        ``-inf``: ``masked_fill(M, -inf)`` blocks where ``M`` holds, ``torch.where(M, s, -inf)`` where it
        does not, an additive ``torch.full(..., -inf).triu(1)`` or ``m * -1e9`` where it is non-zero, a
        boolean ``attn_mask`` where ``nn.MultiheadAttention``/``nn.Transformer*`` get True and where
        ``F.scaled_dot_product_attention`` gets False; ``triu(ones, k)`` holds on ``j - i >= k``,
        ``tril(ones, k)`` on ``j - i <= k``, followed through ``~``, ``logical_not``, ``== 0``, ``1 - m``,
        transposes, casts, slices, names, ``self.<buffer>`` and local helpers. A causal mask must block
        exactly ``j > i``. Flags a mask that blocks the past (``j < i``) and one that also blocks the
        diagonal (``j >= i``), when the class or function says it is causal (causal, decoder,
        autoregressive, future, GPT...) and not reversed/backward, and the scores are not laid out
        keys-first (``k @ q.T``). Reported at the ``triu``/``tril`` that must change, or at the use when
        the same mask is used the right way elsewhere.

    Why is this bad:
        A reversed mask lets every token see the tokens it has to predict: the training loss falls
        fast, and generation fails. Blocking the diagonal leaves the first query with no key at all:
        a fully masked row is NaN after softmax (uniform with a finite fill), and each token loses
        itself. Nothing crashes: the shapes are right.

    Example:
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))     # True on j <= i
        att = att.masked_fill(causal, float("-inf"))                # blocks the past

    Use instead:
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)   # True on j > i
        att = att.masked_fill(causal, float("-inf"))
    """

    code = "TR627"
    title = "Causal mask blocks the past instead of the future"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    VALID = [
        _GPT.format(v="0"),
        _H + "def causal_mask(sz):\n    return torch.triu(torch.full((sz, sz), float('-inf')), diagonal=1)\n",
        _H + "def causal_attention(s):\n    T = s.size(-1)\n    mask = torch.ones(T, T).tril().bool()\n"
        "    return torch.where(mask, s, float('-inf')).softmax(-1)\n",
        _H + "def decoder_bias(T, dtype):\n    m = torch.tril(torch.ones(T, T))\n    return (1.0 - m) * torch.finfo(dtype).min\n",
        _H + "def causal(s):\n    i = torch.arange(s.size(-1))\n    return s.masked_fill(i[None, :] > i[:, None], -1e9)\n",
        _H + "def backward_lm_attention(s):\n    '''Right-to-left decoder: each token sees the future.'''\n"
        "    T = s.size(-1)\n    return s.masked_fill(torch.tril(torch.ones(T, T), -1).bool(), float('-inf'))\n",
    ]
    INVALID = [
        Invalid(_GPT.format(v="1"), line=6),
        Invalid(_H + "def causal_attention(s):\n    T = s.size(-1)\n    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))\n"
                "    return s.masked_fill(mask, float('-inf')).softmax(-1)\n", line=5),
        Invalid(_H + "def decoder_attention(s):\n    T = s.size(-1)\n    future = torch.triu(torch.ones(T, T)).bool()\n"
                "    return torch.softmax(s.masked_fill(future, float('-inf')), dim=-1)\n", line=5),
        Invalid(_H + "def square_subsequent_mask(sz):\n    return torch.tril(torch.full((sz, sz), float('-inf')), diagonal=-1)\n",
                line=4),
        Invalid(_H + "def causal(s):\n    T = s.size(-1)\n    keep = torch.ones(T, T).triu(1).bool()\n"
                "    return torch.where(keep, s, -1e9).softmax(-1)\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        self._record(node)

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        self._record(node)

    def _record(self, anchor) -> None:
        got = blocked_set(self, anchor)
        fact = got[0] if got is not None else None
        if not isinstance(fact, Fact) or fact.bound == "sub":
            return
        t = fact.tri
        verdict = "reversed" if t.op == "le" and t.k >= -1 else "diagonal" if t.op == "ge" and t.k <= 0 else "ok"
        if verdict != "ok" and (not causal_intent(self, anchor, fact.origin) or any(
                keys_before_queries(self, intent_scope(self, n)) for n in (anchor, fact.origin))):
            return
        if verdict == "ok" and t != Tri("ge", 1):
            return
        uses = self.ctx.cache.setdefault(("tr627-uses",), {})
        uses.setdefault(id(fact.origin), []).append((anchor, verdict, fact, got[1]))

    def leave_Module(self, original_node: cst.Module) -> None:
        for uses in self.ctx.cache.get(("tr627-uses",), {}).values():
            bad = [u for u in uses if u[1] != "ok"]
            if not bad:
                continue
            if any(u[1] == "ok" and u[2].bound == "eq" for u in uses):  # the mask is right, this use is not
                for anchor, verdict, fact, mask in bad:
                    after = _negated(self, mask) if fact.tri.complement() == Tri("ge", 1) else \
                        "the mask that blocks j > i, as the other uses of it do"
                    self._report(anchor, verdict, fact, Fix(before=self.code_for(mask), after=after))
            else:
                anchor, verdict, fact, _ = bad[0]
                origin = fact.origin
                after = fixed_triangle(self, origin, fact.at_origin(Tri("ge", 1)))
                self._report(anchor, verdict, fact, Fix(before=self.code_for(origin), after=after), origin)

    def _report(self, anchor, verdict: str, fact: Fact, fix: Fix, at=None) -> None:
        where = "" if anchor is fact.origin else f", as used at {self.where(anchor)},"
        what = f"`{self.code_for(fact.origin)}`{where} blocks {fact.tri.text()}"
        if at is None:
            what = f"`{self.code_for(anchor)}` blocks {fact.tri.text()}"
        if verdict == "reversed":
            problem = f"{what}: each query sees the keys after it and none before it. A causal mask must block j > i."
            impact = ("Every token attends to the tokens it has to predict: training leaks the targets (the loss drops "
                      "suspiciously fast) and generation, which has no future to look at, fails.")
            title = None
        else:
            problem = (f"{what}: besides the future it hides each token from itself, so the first query has no key "
                       f"left. A causal mask must block j > i only.")
            impact = ("Row 0 is masked everywhere: softmax gives NaN with -inf (uniform weights with a finite fill) "
                      "and the NaN spreads into the loss; every other token also loses its own position.")
            title = "Causal mask also blocks the diagonal (the first query sees no key)"
        self.report(at if at is not None else anchor, problem, impact, fix, title=title)


def _negated(rule, mask) -> str:
    """``m == 0`` for ``m != 0`` (and back), else ``~(mask)``."""
    if isinstance(mask, cst.Comparison) and len(mask.comparisons) == 1:
        op = mask.comparisons[0].operator
        swap = {cst.Equal: "!=", cst.NotEqual: "=="}.get(type(op))
        if swap:
            return f"{rule.code_for(mask.left)} {swap} {rule.code_for(mask.comparisons[0].comparator)}"
    return f"~({rule.code_for(mask)})"
