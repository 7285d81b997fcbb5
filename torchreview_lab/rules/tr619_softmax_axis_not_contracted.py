from __future__ import annotations

import re
from typing import List, Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._contraction import einsum_spec, neg_axis, projected_logits, rank, renormalised, softmax_weights, source_axis
from ._torch import (enclosing_class, enclosing_function, is_method_call, method_call, positional, source_text,
                     torch_function)
from .base import Invalid, Rule

_COMPETING = re.compile(r"slot|caps|rout|invert|compet", re.I)  # normalised over one axis, pooled over another


class SoftmaxAxisNotContracted(Rule):
    """Softmax normalises an axis that the following matmul or einsum does not contract.

    What it does:
        Follows a ``softmax`` result (``torch.softmax``, ``F.softmax``, ``x.softmax``, an ``nn.Softmax``
        module) through names, dropout, masking, casts, transposes and permutes to the matmul it weights
        (``p @ v``, ``matmul``/``bmm``: the left operand contracts its last axis, the right one axis -2)
        or ``einsum`` (it sums the letters the output drops), and flags a softmax over another axis.
        Axes are compared when both count from the right, or when the rank is known (``view``,
        ``reshape``, ``bmm``, einsum subscripts). Left alone: softmax over the last axis contracted
        over another (``p.mT @ grad``, a Markov ``alpha @ P``), weights also contracted over their own
        axis, renormalised (``attn.sum(-1)``), or scored by a learned layer (NetVLAD-style assignment).

    Why is this bad:
        Attention weights must sum to 1 over the keys that the matmul sums over. Normalised over the
        queries instead, every output is a sum of weights that do not add up to 1: its scale depends on
        the sequence length and on the other queries (masked positions leak in), the model trains on
        silently wrong attention and nothing fails, because the shapes are (N, N).

    Example:
        attn = scores.softmax(dim=-2)          # scores: (B, h, N_q, N_k)
        ctx = attn @ v                         # sums over N_k

    Use instead:
        attn = scores.softmax(dim=-1)          # normalise over the keys that `@ v` sums over
        ctx = attn @ v
    """

    code = "TR619"
    title = "Softmax normalises an axis the following matmul does not contract"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    _H = "import math\nimport torch\nimport torch.nn.functional as F\n"
    VALID = [
        _H + "def attend(q, k, v):\n    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))\n"
        "    p = s.softmax(dim=-1)\n    return F.dropout(p, 0.1) @ v\n",
        _H + "def attend(q, k, v):\n    p = torch.einsum('bhid,bhjd->bhij', q, k).softmax(-1)\n"
        "    return torch.einsum('bhij,bhjd->bhid', p, v)\n",
        _H + "def grad_v(q, k, do):\n    p = torch.softmax(q @ k.mT, dim=-1)\n    return p.transpose(-2, -1) @ do\n",
        _H + "def pool(k, v):\n    w = k.softmax(dim=-2)\n    return w.transpose(-1, -2) @ v\n",
        _H + "def forward(alpha, logits):\n    trans = torch.softmax(logits, dim=-1)\n    return alpha @ trans\n",
        _H + "def slots(q, k, v):\n    a = torch.einsum('bid,bjd->bij', q, k).softmax(dim=1) + 1e-8\n"
        "    a = a / a.sum(dim=-1, keepdim=True)\n    return torch.einsum('bjd,bij->bid', v, a)\n",
    ]
    INVALID = [
        Invalid(_H + "def attend(q, k, v, mask):\n    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))\n"
                "    s = s.masked_fill(mask, float('-inf'))\n    p = s.softmax(dim=-2)\n    p = F.dropout(p, 0.1)\n"
                "    return p @ v\n", line=7),
        Invalid(_H + "def attend(q, k, v):\n    s = torch.bmm(q, k.transpose(1, 2))\n    p = F.softmax(s, 1)\n"
                "    return torch.bmm(p, v)\n", line=6),
        Invalid(_H + "def attend(q, k, v):\n    s = torch.einsum('bhid,bhjd->bhij', q, k)\n"
                "    p = torch.softmax(s, dim=2)\n    return torch.einsum('bhij,bhjd->bhid', p, v)\n", line=6),
        Invalid(_H + "def attend(q, k, v):\n    p = (q @ k.mT).softmax(-2)\n    return v.mT @ p.mT\n", line=5),
    ]

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        if isinstance(node.operator, cst.MatrixMultiply):
            self._matmul(node, node.left, node.right, None)

    def visit_Call(self, node: cst.Call) -> None:
        tf, pos = torch_function(self, node), positional(node)
        if tf in ("matmul", "bmm", "mm") and len(pos) == 2:
            self._matmul(node, pos[0].value, pos[1].value, tf)
        elif is_method_call(self, node, {"matmul", "bmm", "mm"}) and len(pos) == 1:
            self._matmul(node, method_call(node)[0], pos[0].value, method_call(node)[1])
        elif (tf == "einsum" or tf is None) and einsum_spec(self, node) is not None:
            ops, subs, out = einsum_spec(self, node)
            for op, sub in zip(ops, subs):
                tail = sub[sub.index("...") + 1:] if "..." in sub else sub  # axes counted from the right
                if len(set(sub)) == len(sub):  # no diagonals
                    self._check(node, op, [(i - len(tail), t not in out) for i, t in enumerate(tail)], tail)

    def _matmul(self, node, left, right, kind: Optional[str]) -> None:
        self._check(node, left, [(-1, True)])
        fn = enclosing_function(self, node)
        if kind in ("bmm", "mm") or (rank(self, fn, right) or 0) >= 2 or source_axis(self, fn, right, -2) is not None:
            self._check(node, right, [(-2, True)])  # a 1-D right operand contracts its only axis

    def _check(self, node, operand, axes: List[Tuple[int, bool]], letters: Optional[List[str]] = None) -> None:
        fn = enclosing_function(self, node)
        w = softmax_weights(self, fn, operand, [a for a, _ in axes])
        scopes = (fn, enclosing_class(self, node))
        if w is None or any(s is not None and _COMPETING.search(s.name.value) for s in scopes):
            return
        n = rank(self, fn, w.input)
        a, src = neg_axis(w.dim, n), w.axes
        summed = [s for (s, (_, is_summed)) in zip(src, axes) if is_summed]
        uses = self.ctx.cache.setdefault(("tr619-uses",), {})  # softmax call -> [contracted right somewhere, bad use]
        seen = uses.setdefault(id(w.call), [False, None])
        if a is not None and a in summed:
            seen[0] = True
        # a softmax over the last axis contracted over another is a transposed use (p.mT @ grad, alpha @ P)
        elif not (a is None or a == -1 or not summed or a not in src and letters is not None or seen[1] is not None
                  or n is not None and min(src) < -n or renormalised(self, fn, w.names)
                  or projected_logits(self, fn, w.input)):
            seen[1] = (node, w, n, a, axes, summed, letters)

    def leave_Module(self, original_node: cst.Module) -> None:
        for ok, bad in self.ctx.cache.get(("tr619-uses",), {}).values():
            if bad is not None and not ok:  # not also contracted over its axis elsewhere
                self._report(*bad)

    def _report(self, node, w, n, a, axes, summed, letters) -> None:
        src = w.axes
        say = lambda ax: str(ax + n if w.dim >= 0 and n is not None else ax)  # noqa: E731  # as the author counts
        if letters is not None:
            what = (f"sums over axis {', '.join(say(s) for s in summed)} of it "
                    f"(`{'`, `'.join(letters[src.index(s)] for s in summed)}`) and keeps axis {say(a)} "
                    f"(`{letters[src.index(a)]}`)")
        else:
            side = "the last axis of the left" if axes[0][0] == -1 else "axis -2 of the right"
            what = f"contracts axis {say(summed[0])} of it ({side} operand)"
        before = source_text(self, w.holder)
        after = source_text(self, w.holder, [(w.dim_node, say(summed[0]))]) if len(summed) == 1 else \
            f"{before}  # normalise over the axis the contraction sums"
        self.report(
            w.call,
            problem=(f"`{self.code_for(w.call)}` normalises axis {w.dim} of `{self.code_for(w.input)}`, but "
                     f"`{self.code_for(node)}` ({self.where(node)}) {what}: the weights it sums do not add up to 1."),
            impact=("Each output is a weighted sum whose weights do not sum to 1: its scale depends on the sequence "
                    "length and on the other rows (masked positions leak in). The shapes still match, so the model "
                    "silently trains on wrong attention."),
            fix=Fix(before=before, after=after),
        )
