from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._flow import canonical_size, const_int, size_bound
from ._torch import assigned_values, enclosing_function, function_facts, names_in, range_args, walk, walk_own
from .base import Invalid, Rule


def _positions_of(sub: cst.Subscript, name: str):
    """Dimensions at which ``sub`` indexes with exactly ``name`` (``x[:, t]`` -> 1); none after an Ellipsis."""
    for i, e in enumerate(sub.slice):
        if isinstance(e.slice, cst.Index) and isinstance(e.slice.value, cst.Ellipsis):
            return
        if isinstance(e.slice, cst.Index) and isinstance(e.slice.value, cst.Name) and e.slice.value.value == name:
            yield i


def _ahead(expr: cst.CSTNode, name: str) -> bool:
    """``t + 1`` (a look-ahead) somewhere in ``expr``."""
    return any(isinstance(b.operator, cst.Add) and name in names_in(b) and (const_int(b.right) or const_int(b.left) or 0) > 0
               for b in walk(expr, cst.BinaryOperation))


class RecursionStopsEarly(Rule):
    """A recursion over the positions of a sequence stops one position before the end.

    What it does:
        Flags ``for t in range(1, T - 1)`` (or ``range(T - 1)``) whose body carries a state from step to
        step (``alpha = f(alpha, x[:, t])``) and reads position ``t`` of a tensor whose axis has size
        ``T``, when nothing looks ahead (no ``x[:, t + 1]``) and the last position ``T - 1`` is not read after
        the loop either.

    Why is this bad:
        Valid positions are 0..T-1, and ``range(.., T - 1)`` stops at T - 2: the last frame is never scored.
        A forward algorithm then returns the likelihood of the first T - 1 observations, an accumulation
        misses one term, and nothing fails: the result is silently wrong.

    Example:
        alpha = log_init + log_emit[:, 0]
        for t in range(1, T - 1):
            alpha = torch.logsumexp(alpha[:, :, None] + log_trans, dim=1) + log_emit[:, t]

    Use instead:
        for t in range(1, T):
            alpha = torch.logsumexp(alpha[:, :, None] + log_trans, dim=1) + log_emit[:, t]
    """

    code = "TR107"
    title = "Recursion over a sequence stops one position early"
    category = "algorithm-correctness"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "def f(x, h):\n    T = x.shape[1]\n    for t in range(1, T):\n        h = h + x[:, t]\n    return h\n",
        "def f(x, h):\n    T = x.shape[1]\n    for t in range(T - 1):\n        h = h + x[:, t + 1] - x[:, t]\n    return h\n",
        "def f(x, h):\n    T = x.shape[1]\n    for t in range(T - 1):\n        h = h * x[:, t]\n    return h + x[:, -1]\n",
        "def f(x):\n    T = x.shape[0]\n    for t in range(T - 1):\n        y = x[t] * 2\n    return y\n",
    ]
    INVALID = [
        Invalid("def f(log_emit, log_trans, a):\n    B, T, S = log_emit.shape\n    for t in range(1, T - 1):\n"
                "        a = (a[:, :, None] + log_trans).logsumexp(1) + log_emit[:, t]\n    return a\n", line=3),
        Invalid("def f(x, h):\n    T = x.size(0)\n    for t in range(T - 1):\n        h = h + x[t]\n    return h\n", line=3),
    ]

    def visit_For(self, node: cst.For) -> None:
        args = range_args(node)
        if not args or len(args) > 2 or not isinstance(node.target, cst.Name):
            return
        fn = enclosing_function(self, node)
        b = size_bound(self, fn, args[-1])
        if b is None or b[1] != -1 or not b[0] or ".shape[" not in b[0] or node.orelse is not None:
            return
        t = node.target.value
        read = self._reads_position(fn, node, t, b[0])
        if read is None or _ahead(node.body, t) or not self._carries_state(fn, node):
            return
        if self._last_read_after(fn, node, read):
            return
        stop = self.code_for(args[-1])
        size = stop.rsplit("-", 1)[0].strip()
        self.report(
            node,
            problem=(f"`{self.code_for(node.iter)}` ends at t = {size} - 2, one before the last position ({size} - 1) of "
                     f"`{read}`'s axis of size `{size}`: the recursion never processes the final step."),
            impact="The result silently omits the last position (a likelihood over T - 1 frames, a sum missing a term).",
            fix=Fix(before=self.code_for(node.iter), after=self.code_for(node.iter).replace(stop, size)),
        )

    def _reads_position(self, fn, loop: cst.For, t: str, size: str) -> Optional[str]:
        for sub in walk(loop.body, cst.Subscript):
            if isinstance(sub.value, cst.Name):
                for d in _positions_of(sub, t):
                    if canonical_size(self, fn, cst.parse_expression(f"{sub.value.value}.shape[{d}]")) == size:
                        return sub.value.value
        return None

    def _carries_state(self, fn, loop: cst.For) -> bool:
        """A name bound before the loop is updated in it from values that read it (``alpha = f(alpha)``,
        possibly through a temporary, or ``h += x[t]``)."""
        assigned, reads = set(), set()
        for n in walk(loop.body):
            if isinstance(n, cst.AugAssign) and isinstance(n.target, cst.Name):
                return True
            if isinstance(n, cst.Assign):
                assigned |= {tg.target.value for tg in n.targets if isinstance(tg.target, cst.Name)}
                reads |= names_in(n.value)
        in_loop = [tg.target.value for n in walk(loop.body, cst.Assign) for tg in n.targets if isinstance(tg.target, cst.Name)]
        before = {a for a in assigned & reads if fn is not None and (a in function_facts(self, fn).params
                                                                     or len(assigned_values(self, fn, a)) > in_loop.count(a))}
        return bool(before)

    def _last_read_after(self, fn, loop: cst.For, arr: str) -> bool:
        """``x[:, -1]`` / ``x[:, T - 1]`` outside the loop: the last position is handled separately."""
        scope = fn.body if fn is not None else self.ctx.module
        inside = {id(n) for n in walk(loop)}
        for sub in walk_own(scope, cst.Subscript):
            if id(sub) in inside or not (isinstance(sub.value, cst.Name) and sub.value.value == arr):
                continue
            for e in sub.slice:
                v = e.slice.value if isinstance(e.slice, cst.Index) else None
                if v is not None and (const_int(v) == -1 or isinstance(v, cst.BinaryOperation) and "- 1" in self.code_for(v)
                                      or isinstance(v, cst.Name) and v.value not in ("None",)):
                    return True
        return False
