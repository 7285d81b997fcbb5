from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._knowledge import INPLACE_METHODS, LIKE_FACTORIES, TENSOR_FACTORIES
from ._torch import enclosing_function, kwarg, method_call, positional, torch_function, walk_own
from .base import Invalid, Rule

_LOOPS, _SCOPES = (cst.For, cst.While), (cst.FunctionDef, cst.ClassDef, cst.Lambda)
_FRESH_METHODS = frozenset({"new_zeros", "new_ones", "new_empty", "new_full", "clone", "zeros_like", "copy"})


def _bound(t) -> set:
    """Names an assignment target rebinds (not ``x[i] = ...`` or ``x.a = ...``, which modify ``x``)."""
    if isinstance(t, (cst.Tuple, cst.List)):
        return {n for e in t.elements for n in _bound(e.value)}
    if isinstance(t, cst.StarredElement):
        return _bound(t.value)
    return {t.value} if isinstance(t, cst.Name) else set()


class AppendedThenModifiedInPlace(Rule):
    """A tensor is appended to a list in a loop and modified in place in the same loop.

    What it does:
        Flags the in-place update (``h.mul_(a)``, ``h += u``, ``h[...] = v``, ``torch.add(.., out=h)``) of a
        tensor that the same loop appends to a list (``states.append(h)``) without rebinding it: every
        iteration stores the same object.

    Why is this bad:
        ``list.append`` stores a reference, not a copy. All entries are one tensor, so after the loop
        every stored state equals the final one: ``torch.stack(states)`` repeats the last state T times and
        the model silently computes the wrong recurrence (and autograd sees one version-bumped tensor).

    Example:
        h = torch.zeros(B, D)
        for t in range(T):
            h.mul_(a).add_(u[:, t])
            states.append(h)

    Use instead:
        for t in range(T):
            h = h * a + u[:, t]      # a new tensor each step
            states.append(h)         # (or states.append(h.clone()))
    """

    code = "TR158"
    title = "One tensor appended many times and modified in place"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    VALID = [
        "import torch\ndef f(a, u, T):\n    h = torch.zeros(4)\n    out = []\n    for t in range(T):\n"
        "        h = h * a + u[t]\n        out.append(h)\n    return torch.stack(out)\n",
        "import torch\ndef f(a, u, T):\n    h = torch.zeros(4)\n    out = []\n    for t in range(T):\n"
        "        h.mul_(a).add_(u[t])\n        out.append(h.clone())\n    return torch.stack(out)\n",
        "def f(xs):\n    n = 0\n    out = []\n    for x in xs:\n        n += 1\n        out.append(n)\n    return out\n",
        "import torch\ndef f(a, T):\n    h = torch.zeros(4)\n    out = []\n    for t in range(T):\n"
        "        h.add_(a)\n        if t == T - 1:\n            out.append(h)\n            break\n    return out\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(a, u, T):\n    h = torch.zeros(4)\n    out = []\n    for t in range(T):\n"
                "        h.mul_(a).add_(u[t])\n        out.append(h)\n    return torch.stack(out)\n", line=6),
        Invalid("import numpy as np\ndef f(a, T):\n    buf = np.zeros(3)\n    hist = []\n    for t in range(T):\n"
                "        hist.append(buf)\n        buf[t % 3] = a[t]\n    return hist\n", line=7),
        Invalid("import torch\ndef f(x, w, T):\n    s = torch.zeros_like(x)\n    outs = []\n    while T:\n"
                "        s += x @ w\n        outs.append(s)\n        T -= 1\n    return outs\n", line=6),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if not mc or mc[1] not in ("append", "insert") or not node.args:
            return
        item = positional(node)[-1].value if positional(node) else None
        loop = next((a for a in self.ancestors(node) if isinstance(a, _LOOPS + _SCOPES)), None)
        if not isinstance(item, cst.Name) or not isinstance(loop, _LOOPS) or self._leaves_after(node) \
                or self._rebinds(loop, item.value):
            return
        change = self._in_place(loop, item.value, enclosing_function(self, node))
        if change is None:
            return
        name, store = item.value, self.code_for(node)
        self.report(
            change,
            problem=(f"`{self.code_for(change).strip()}` modifies `{name}` in place inside the loop that runs "
                     f"`{store}` ({self.where(node)}), and `{name}` is never rebound in the loop: the list holds "
                     "the same tensor once per iteration."),
            impact=("Every entry aliases one tensor, so after the loop all stored values equal the final one; the "
                    "stacked result is silently wrong."),
            fix=Fix(before=self.code_for(change).strip(),
                    after=f"{name} = <out-of-place update of {name}>   # or {store.replace(name + ')', name + '.clone())')}"),
        )

    def _leaves_after(self, node) -> bool:
        """The append is followed by ``break``/``return`` in its block: it runs once."""
        stmt = next((a for a in self.ancestors(node) if isinstance(a, (cst.SimpleStatementLine, cst.SimpleStatementSuite))), None)
        block = self.parent(stmt) if isinstance(stmt, cst.SimpleStatementLine) else None
        rest = list(getattr(block, "body", []))
        rest = list(stmt.body if stmt is not None else []) + rest[rest.index(stmt) + 1 if stmt in rest else 0:]
        return any(isinstance(s, (cst.Break, cst.Return)) or isinstance(s, cst.SimpleStatementLine) and isinstance(
            s.body[0], (cst.Break, cst.Return)) for s in rest)

    @staticmethod
    def _rebinds(loop, name: str) -> bool:
        targets = [loop.target] if isinstance(loop, cst.For) else []
        for n in walk_own(loop.body, (cst.Assign, cst.AnnAssign, cst.For, cst.WithItem, cst.NamedExpr)):
            if isinstance(n, cst.Assign):
                targets += [t.target for t in n.targets]
            elif isinstance(n, cst.WithItem):
                targets += [n.asname.name] if n.asname else []
            else:
                targets.append(n.target)
        return any(name in _bound(t) for t in targets)

    def _in_place(self, loop, name: str, fn) -> Optional[cst.CSTNode]:
        array = self._array(fn, name)
        for n in walk_own(loop.body, (cst.Call, cst.AugAssign, cst.Assign)):
            if isinstance(n, cst.Call):
                mc, out = method_call(n), kwarg(n, "out")
                while mc and mc[1] in INPLACE_METHODS and isinstance(mc[0], cst.Call):
                    mc = method_call(mc[0])  # h.mul_(a).add_(u): the chain returns h itself
                if mc and mc[1] in INPLACE_METHODS and isinstance(mc[0], cst.Name) and mc[0].value == name or \
                        out is not None and isinstance(out.value, cst.Name) and out.value.value == name:
                    return next((a for a in self.ancestors(n) if isinstance(a, cst.SimpleStatementLine)), n)
            elif isinstance(n, cst.AugAssign) and array and isinstance(n.target, cst.Name) and n.target.value == name:
                return n
            elif isinstance(n, cst.Assign) and array and any(
                    isinstance(t.target, cst.Subscript) and isinstance(t.target.value, cst.Name)
                    and t.target.value.value == name for t in n.targets):
                return n
        return None

    def _array(self, fn, name: str) -> bool:
        """``name`` is only ever bound to a fresh tensor or numpy array (so ``+=``/``[...] =`` change it)."""
        vals = [a.value for a in walk_own(fn.body if fn else self.ctx.module, cst.Assign) if any(
            name in _bound(t.target) for t in a.targets)]  # not ``+=``: that is the change itself
        return bool(vals) and all(self._fresh(v) for v in vals)

    def _fresh(self, v) -> bool:
        if not isinstance(v, cst.Call):
            return False
        tf = torch_function(self, v)
        if tf is not None:
            return tf in TENSOR_FACTORIES | LIKE_FACTORIES and not (tf == "tensor" and positional(v) and isinstance(
                positional(v)[0].value, (cst.Integer, cst.Float)))
        mc = method_call(v)
        return bool(mc and mc[1] in _FRESH_METHODS) or any(q.startswith("numpy.") and q[6:] in (
            "zeros", "ones", "empty", "full", "zeros_like", "array", "copy") for q in self.qnames(v.func))
