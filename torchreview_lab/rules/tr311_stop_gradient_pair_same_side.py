from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value
from ._graph_terms import detached, distance_pair, linear_terms
from ._torch import assigned_name, assigned_values, method_call, torch_function, walk_own
from .base import Invalid, Rule

_LOOKUPS = frozenset({"index_select", "embedding", "nn.functional.embedding", "gather", "take", "matmul"})
_COMMIT_HINTS = ("commit",)
_CODEBOOK_HINTS = ("codebook", "code_loss", "book", "embed", "dictionary", "vq_loss", "q_loss")


class StopGradientPairSameSide(Rule):
    """The two stop-gradient halves of one loss pair detach the same side.

    What it does:
        Flags two distance terms of one loss (``mse_loss``, ``l1_loss``, ``((a - b) ** 2).mean()``) that
        compare the same two tensors and stop the gradient of the same one (``mse(z, q.detach())`` twice),
        when they are added into one loss: the VQ-VAE codebook/commitment pair, whose halves must be
        ``mse(q, z.detach())`` and ``mse(z, q.detach())``.

    Why is this bad:
        Each half exists to send gradient to one side. With both detaching ``q``, nothing reaches the
        codebook (or, both detaching ``z``, nothing pulls the encoder to its codes): the code vectors stay at
        their initial values, codes die, and the loss still decreases, so nothing looks wrong.

    Example:
        codebook = F.mse_loss(z, q.detach())
        commit = F.mse_loss(z, q.detach())
        loss = codebook + beta * commit

    Use instead:
        codebook = F.mse_loss(q, z.detach())   # moves the code vectors
        commit = F.mse_loss(z, q.detach())     # keeps the encoder close to its codes
    """

    code = "TR311"
    title = "Stop-gradient pair detaches the same side twice"
    category = "gradient-flow"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch.nn.functional as F\ndef vq(z, q, beta):\n    a = F.mse_loss(q, z.detach())\n"
        "    b = F.mse_loss(z, q.detach())\n    return a + beta * b\n",
        "import torch.nn.functional as F\ndef sym(p1, p2, z1, z2):\n    return F.mse_loss(p1, z2.detach()) + F.mse_loss(p2, z1.detach())\n",
        "import torch.nn.functional as F\ndef two(z, q):\n    a = F.mse_loss(z, q.detach())\n    log(a)\n"
        "    b = F.mse_loss(z, q.detach())\n    return b\n",
    ]
    INVALID = [
        Invalid("import torch.nn.functional as F\ndef vq(z, book, idx, beta):\n    q = book[idx]\n"
                "    codebook = F.mse_loss(z, q.detach())\n    commit = F.mse_loss(z, q.detach())\n"
                "    return codebook + beta * commit\n", line=4),
        Invalid("def vq(z, q, beta):\n    l1 = ((q - z.detach()) ** 2).mean()\n    l2 = ((q - z.detach()) ** 2).mean()\n"
                "    return l1 + beta * l2\n", line=3),
    ]

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        seen: Dict[Tuple[str, str], cst.Call] = {}
        for c in walk_own(node.body, cst.Call):
            pair = distance_pair(self, c)
            if pair is None:
                continue
            sides = [detached(self, s) for s in pair]
            if sum(s is not None for s in sides) != 1:
                continue
            held = self.code_for(pair[1 if sides[0] else 0]).replace(" ", "")
            key = (held, sides[0] or sides[1])
            first = seen.setdefault(key, c)
            if first is not c and self._combined(node, first, c):
                self._report(node, first, c, key, pair[0 if sides[0] else 1])
                return

    def _handle(self, c: cst.Call):
        return assigned_name(self, c) or id(c)

    def _combined(self, fn, a: cst.Call, b: cst.Call) -> bool:
        """Both terms are added into one expression (directly or through the names they are bound to)."""
        want = {self._handle(a), self._handle(b)}
        for n in walk_own(fn.body, (cst.Assign, cst.Return, cst.Arg, cst.AugAssign)):
            e = n.value
            if e is None:
                continue
            if want <= self._summands(e):
                return True
        return False

    def _summands(self, e) -> set:
        """Names and call ids in the sum ``e`` (through ``+``, ``-``, weights and ``.mean()``/``.sum()``)."""
        if isinstance(e, cst.BinaryOperation) and not isinstance(e.operator, cst.Power):
            return self._summands(e.left) | self._summands(e.right)
        if isinstance(e, cst.UnaryOperation):
            return self._summands(e.expression)
        terms = linear_terms(self, e) if isinstance(e, cst.Call) else [e]
        return {t.value if isinstance(t, cst.Name) else id(t) for t in terms}

    def _weighted(self, fn, c: cst.Call) -> bool:
        h = self._handle(c)
        for n in walk_own(fn.body, cst.BinaryOperation):
            if isinstance(n.operator, cst.Multiply) and any(
                    (s.value if isinstance(s, cst.Name) else id(s)) == h for s in (n.left, n.right)):
                return True
        return False

    def _report(self, fn, a: cst.Call, b: cst.Call, key, detached_expr) -> None:
        held, frozen = key
        wrong = self._wrong(fn, a, b, detached_expr)
        other = b if wrong is a else a
        self.report(
            wrong,
            problem=(f"`{self.code_for(wrong)}` ({self.where(wrong)}) and `{self.code_for(other)}` "
                     f"({self.where(other)}) are the same term: both stop the gradient of `{frozen}`, so the pair "
                     f"never trains `{frozen}` through `{held}`."),
            impact=(f"The two halves of a stop-gradient pair must detach opposite sides; as written `{frozen}` "
                    "(e.g. the codebook) receives no gradient from either and silently stays where it started."),
            fix=Fix(before=self.code_for(wrong), after=f"<same loss>({frozen}, {held}.detach())"),
        )

    def _wrong(self, fn, a: cst.Call, b: cst.Call, detached_expr) -> cst.Call:
        """Which half is miswritten: with the looked-up side (``q``) detached twice it is the codebook half
        (the unweighted one, or named so); with the encoder side detached twice, the commitment half."""
        names = {c: (assigned_name(self, c) or "").lower() for c in (a, b)}
        commit = [c for c in (a, b) if any(h in names[c] for h in _COMMIT_HINTS)]
        book = [c for c in (a, b) if any(h in names[c] for h in _CODEBOOK_HINTS)] or [
            c for c in (a, b) if c not in commit and commit]
        if not commit and not book:
            weighted = [c for c in (a, b) if self._weighted(fn, c)]
            commit = weighted if len(weighted) == 1 else []
            book = [c for c in (a, b) if commit and c not in commit]
        lookup = self._lookup(fn, method_call(detached_expr)[0] if method_call(detached_expr) else detached_expr)
        pick: List[cst.Call] = (book if lookup else commit) or []
        return pick[0] if len(pick) == 1 else b

    def _lookup(self, fn, e, depth: int = 0) -> Optional[bool]:
        """``e`` is a row looked up in a table (``book[idx]``, ``index_select``, ``embedding(idx)``)."""
        if isinstance(e, cst.Name) and depth < 3:
            v = reaching_value(self, fn, e.value, e)
            vals = [v] if v is not None else assigned_values(self, fn, e.value)  # bound in a loop: its one value
            return len(vals) == 1 and self._lookup(fn, vals[0], depth + 1)
        if isinstance(e, cst.Subscript):
            return True
        if isinstance(e, cst.Call):
            mc = method_call(e)
            return (torch_function(self, e) or "") in _LOOKUPS or bool(mc and mc[1] in _LOOKUPS) or bool(
                mc and "embed" in self.code_for(e.func).lower() or "codebook" in self.code_for(e.func).lower())
        return False
