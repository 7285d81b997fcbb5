from __future__ import annotations

import re
from typing import Iterator, Tuple

import libcst as cst

from ..findings import Fix
from ._axes import other_axis, store_base, unsqueezed
from ._bindings import reaching_value
from ._flow import const_int
from ._torch import (enclosing_function, enclosing_loops, kwarg, loop_targets, method_call, module_functions, positional,
                     torch_function, walk, walk_own)
from .base import Invalid, Rule

_REDUCTIONS = frozenset({"logsumexp", "sum", "max", "amax", "min", "amin", "mean", "prod"})
_COMBINE = (cst.Add, cst.Subtract, cst.Multiply)
_LOCAL_REDUCTION = re.compile(r"^(log_?sum_?exp|lse|logsumexp\w*|\w*_logsumexp|smooth_?max|semiring_sum)$")


class RecurrenceReducesBroadcastAxis(Rule):
    """A recurrence reduces over the axis along which its own state was only broadcast.

    What it does:
        In a loop that updates a state ``s`` (a name, or a DP table ``alpha[..., t]`` read at an earlier
        step), finds ``reduce(s.unsqueeze(k) + M, dim=k)`` (``logsumexp``/``sum``/``max``/``amax``/
        ``min``/``mean``/``prod``; the broadcast also as ``s[:, :, None]``, ``s[..., None]`` or
        ``torch.unsqueeze(s, k)``; the sum also through a name assigned just before) whose result is
        assigned back to ``s`` (directly, through ``torch.where``/masking, or through a name). Axes are
        compared when both are negative or both non-negative. Reductions over the axis ``s`` occupies
        (the forward algorithm's ``logsumexp(alpha.unsqueeze(2) + trans, dim=1)``) and over axes where
        only other terms (emissions) are broadcast are not flagged.

    Why is this bad:
        ``s.unsqueeze(k)`` is constant along axis ``k``, so reducing over ``k`` takes ``s`` out of the
        reduction unchanged: ``logsumexp(alpha[:, :, None] + trans, dim=2) == alpha + logsumexp(trans,
        dim=1)``. The recurrence never marginalizes the previous state; the CRF partition function,
        the HMM forward variable or the Viterbi score come out wrong (a plausible number, no error).

    Example:
        for t in range(1, T):
            scores = alpha.unsqueeze(2) + trans + emissions[:, t].unsqueeze(1)   # (B, prev, next)
            alpha = torch.logsumexp(scores, dim=2)

    Use instead:
        alpha = torch.logsumexp(scores, dim=1)   # sum out the previous tag, where alpha lives
    """

    code = "TR620"
    title = "Recurrence reduces over the axis its state was broadcast along"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    VALID = [
        "import torch\ndef forward_alg(alpha, trans, em, T):\n    for t in range(1, T):\n"
        "        scores = alpha.unsqueeze(2) + trans.unsqueeze(0) + em[:, t].unsqueeze(1)\n"
        "        alpha = torch.logsumexp(scores, dim=1)\n    return alpha\n",
        "import torch\ndef viterbi(v, trans, em):\n    for e in em:\n        v, idx = (v.unsqueeze(-1) + trans).max(dim=-2)\n"
        "        v = v + e\n    return v\n",
        "import torch\ndef pool(x, w):\n    for _ in range(3):\n        y = torch.logsumexp(x.unsqueeze(2) + w, dim=2)\n    return y\n",
        "import torch\ndef table(alpha, trans, T):\n    for t in range(1, T):\n"
        "        alpha[:, t] = torch.logsumexp(alpha[:, t - 1, :, None] + trans, dim=-2)\n    return alpha\n",
    ]
    INVALID = [
        Invalid("import torch\ndef log_partition(alpha, trans, em, mask, T):\n    for t in range(1, T):\n"
                "        scores = alpha.unsqueeze(2) + trans.unsqueeze(0) + em[:, t].unsqueeze(1)\n"
                "        new_alpha = torch.logsumexp(scores, dim=2)\n"
                "        alpha = torch.where(mask[:, t].unsqueeze(1), new_alpha, alpha)\n    return alpha\n", line=5),
        Invalid("import torch\ndef viterbi(v, trans, em):\n    for e in em:\n        v, idx = (v.unsqueeze(-1) + trans).max(dim=-1)\n"
                "        v = v + e\n    return v\n", line=4),
        Invalid("import torch\ndef table(alpha, trans, T):\n    for t in range(1, T):\n"
                "        alpha[:, t] = (alpha[:, t - 1, :, None] * trans).sum(2)\n    return alpha\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf, mc = torch_function(self, node), method_call(node)
        if tf in _REDUCTIONS and positional(node):
            src, rest = positional(node)[0].value, positional(node)[1:]
        elif tf is None and mc is not None and mc[1] in _REDUCTIONS:
            src, rest = mc[0], positional(node)
        elif tf is None and positional(node) and _LOCAL_REDUCTION.search(self.code_for(node.func)) and \
                self.code_for(node.func) in module_functions(self):
            src, rest = positional(node)[0].value, positional(node)[1:]  # the document's own logsumexp
        else:
            return
        dim = kwarg(node, "dim") or (rest[0] if rest else None)
        d = const_int(dim.value) if dim is not None else None
        if d is None or not enclosing_loops(self, node):
            return
        fn = enclosing_function(self, node)
        if isinstance(src, cst.Name):
            src = reaching_value(self, fn, src.value, node) or src
        scalars = set().union(*(loop_targets(lp) for lp in enclosing_loops(self, node)))
        for state, k in self._broadcast_terms(src, scalars):
            if (k < 0) == (d < 0) and k == d and self._updates(node, state):
                name = self.code_for(state)
                self.report(
                    node,
                    problem=(f"`{name}` is broadcast along dim {k} (`{name}` unsqueezed there) and this reduction "
                             f"runs over dim {d}, yet its result becomes the next `{name}`: the recurrence never "
                             f"reduces over `{name}`'s own entries."),
                    impact=(f"Reducing over an axis where `{name}` is constant leaves `{name}` out of the reduction "
                            "(logsumexp(a[:, :, None] + M, 2) == a + logsumexp(M, 1)): the forward variable, "
                            "partition function or Viterbi score is wrong, with no error."),
                    fix=Fix(before=self.code_for(node),
                            after=self.code_for(node).replace(self.code_for(dim.value), str(other_axis(k)), 1)),
                )
                return

    def _broadcast_terms(self, expr: cst.BaseExpression, scalars: set) -> Iterator[Tuple[cst.BaseExpression, int]]:
        """The summands/factors of ``expr`` that are ``s.unsqueeze(k)``-like: (s, k)."""
        if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, _COMBINE):
            yield from self._broadcast_terms(expr.left, scalars)
            yield from self._broadcast_terms(expr.right, scalars)
        else:
            hit = unsqueezed(self, expr, scalars)
            if hit is not None:
                yield hit

    def _updates(self, reduction: cst.Call, state: cst.BaseExpression) -> bool:
        """The reduction's value reaches the state's store in the loop: through assignments, subscript
        stores and ``list.append`` (a DP kept as ``alphas.append(...)`` and read back as ``alphas[t - k]``)."""
        fn, loop = enclosing_function(self, reduction), enclosing_loops(self, reduction)[-1]
        bases = {store_base(state)}
        if isinstance(state, cst.Name):
            held = reaching_value(self, fn, state.value, reduction)
            bases.add(store_base(held) if isinstance(held, cst.Subscript) else None)
        bases.discard(None)
        tainted: set = set()
        for _ in range(4):  # names, then the lists and tables they are written into
            before = len(tainted)
            for node in walk_own(loop.body, (cst.Assign, cst.AugAssign, cst.Call)):
                if isinstance(node, cst.Call):
                    mc = method_call(node)
                    if mc and mc[1] in ("append", "extend", "insert") and self._carries(node, reduction, tainted):
                        tainted.add(store_base(mc[0]))
                elif self._carries(node.value, reduction, tainted):
                    targets = [t.target for t in node.targets] if isinstance(node, cst.Assign) else [node.target]
                    tainted |= {store_base(x) for t in targets for x in (t.elements if isinstance(t, (cst.Tuple, cst.List))
                                                                     else [t])}
            if bases & tainted or len(tainted) == before:
                break
        return bool(bases & tainted)

    @staticmethod
    def _carries(expr: cst.CSTNode, reduction: cst.Call, tainted: set) -> bool:
        return any(x is reduction or isinstance(x, cst.Name) and x.value in tainted for x in walk(expr))
