from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._loops import bindings_in, bounded_iterable, loops_until
from ._realcode import forward_reading
from ._torch import assigned_values, enclosing_function, is_none, join_kind, method_call, positional, walk, walk_own
from .base import Invalid, Rule

_CHAIN_METHODS = frozenset({"detach", "to", "contiguous", "float", "double", "half", "cpu", "cuda"})
_PIECE_KWARGS = ("tensors", "tup", "arrays", "arr")


class TensorGrownByConcatInLoop(Rule):
    """A tensor grown by concatenating onto itself inside a loop.

    What it does:
        Flags ``out = torch.cat([out, x])`` (also ``torch.cat((out, x), dim=1)``, ``torch.vstack``,
        ``torch.hstack``, ``torch.stack([*out, x])``, ``np.concatenate``, ``np.append(out, x)``)
        inside a ``for``/``while`` loop, where the accumulator on the left is also one of the joined
        pieces, so the result feeds the next iteration. Loops over a few constant items
        (``range(3)``, a literal tuple), over the parts of a model or the dimensions of a tensor
        (``self.layers``, ``range(n_heads)``, ``range(x.dim())``), pure doubling (``x = cat([x, x])``) and
        accumulators reset or truncated in the loop are not flagged. Low in autoregressive decoding, where a
        model forward reads the accumulator on every step first (``idx = cat((idx, model(idx)[:, -1:]
        .argmax(-1)), 1)``): that forward costs more than the copy.

    Why is this bad:
        Each join allocates a new buffer and copies everything accumulated so far: n steps cost
        1 + 2 + ... + n = O(n²) element copies plus n allocations of growing size (allocator churn,
        fragmentation). At T = 400,000 steps of one element that is ~8·10¹⁰ copies: minutes of pure
        memcpy for what should take milliseconds.

    Example:
        out = torch.empty(0, d)
        for x in stream:
            out = torch.cat([out, f(x)], dim=0)

    Use instead:
        parts = []
        for x in stream:
            parts.append(f(x))
        out = torch.cat(parts, dim=0)      # one copy, O(n); or preallocate and write out[i] = f(x)
    """

    code = "TR105"
    title = "Tensor grown by concatenation inside a loop (quadratic copying)"
    category = "compute-complexity"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef f(xs):\n    parts = []\n    for x in xs:\n        parts.append(x * 2)\n    return torch.cat(parts)\n",
        "import torch\ndef f(x):\n    for i in range(3):\n        x = torch.cat([x, x[-1:]], 0)\n    return x\n",
        "import torch\ndef f(xs, y):\n    outs = []\n    for h in xs:\n        h = torch.cat([h, y], 1)\n        outs.append(h)\n    return outs\n",
        "import torch\ndef f(xs, y):\n    for x in xs:\n        h = g(x)\n        h = torch.cat([h, y], -1)\n        print(h)\n",
        "import torch\nclass Dense(torch.nn.Module):\n    def forward(self, x):\n        for layer in self.layers:\n"
        "            x = torch.cat([x, layer(x)], 1)\n        return x\n",
        "import torch\ndef f(buf, xs, k):\n    for x in xs:\n        buf = torch.cat([buf, x])\n        buf = buf[-k:]\n    return buf\n",
        "import torch\ndef lstm(xs, hx, cx, h0):\n    for x in xs:\n        hx = torch.cat((hx, h0), 0)\n        hx, cx = cell(x, hx, cx)\n    return hx\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(stream, d):\n    out = torch.empty(0, d)\n    for x in stream:\n"
                "        out = torch.cat([out, x[None]], dim=0)\n    return out\n", line=5),
        Invalid("from torch import cat\ndef generate(model, idx, n):\n    for _ in range(n):\n        nxt = model(idx)[:, -1:].argmax(-1)\n"
                "        idx = cat((idx, nxt), dim=1)\n    return idx\n", line=5),
        Invalid("import numpy as np\nacc = np.zeros((0, 3))\nwhile True:\n    row = read()\n    if row is None:\n        break\n"
                "    acc = np.concatenate([acc, row[None]])\n", line=7),
        Invalid("import torch\ndef predict(model, loader):\n    outs = None\n    for x, _ in loader:\n"
                "        op = model(x)\n        outs = torch.cat((outs, op)) if outs is not None else op\n    return outs\n", line=6),
        Invalid("import torch as th\nclass Buf:\n    def add_all(self, xs):\n        for x in xs:\n"
                "            self.data = th.vstack([self.data, x])\n", line=5),
    ]

    def visit_Assign(self, node: cst.Assign) -> None:
        target = node.targets[0].target
        call = self._join_call(node.value)
        if len(node.targets) != 1 or not isinstance(target, (cst.Name, cst.Attribute)) or call is None:
            return
        acc = self.code_for(target)
        if not self._fed_back(call, acc):
            return
        loops = [lp for lp in loops_until(self, node, lambda lp: self._reset_in(lp, node, acc))  # ``acc`` grows across
                 if not (isinstance(lp, cst.For) and bounded_iterable(lp.iter))]  # not small/architectural loops
        if not loops:
            return
        loop = loops[0]
        head = f"while {self.code_for(loop.test)}" if isinstance(loop, cst.While) else f"for ... in {self.code_for(loop.iter)}"
        forward = forward_reading(self, loop, node, acc) if isinstance(target, cst.Name) else None
        after = f"# `{forward}(...)` reads all of `{acc}` each step: it costs more than the copy" if forward else \
            self._fix(node, target, call, acc, loop, head)
        self.report(
            node,
            problem=(f"`{self.code_for(node).strip()}` copies all of `{acc}` into a new buffer on every iteration of "
                     f"`{head}`: `{acc}` grows by concatenating onto itself."),
            impact=("n iterations copy 1 + 2 + ... + n pieces: O(n²) element copies and n ever larger allocations. "
                    "At T = 400,000 steps that is ~8e10 copies; the loop's time goes to memcpy and allocator churn."),
            fix=Fix(before=f"{head}:\n    {self.code_for(node).strip()}", after=after),
            severity="low" if forward else None, evidence={"loop": head, "forward": forward} if forward else {"loop": head},
        )

    def _fix(self, node, target, call, acc: str, loop, head: str) -> str:
        rest = "".join(", " + self.code_for(a).strip().rstrip(",") for a in call.args[1:])
        pieces = [e.value for e in getattr(call.args[0].value, "elements", ())] or [a.value for a in call.args[1:2]]
        new = next((self.code_for(p) for p in pieces if self.code_for(p) != acc), "<new piece>")
        join = self.code_for(call.func)
        if (join_kind(self, call) or "").endswith("append"):  # np.append(acc, x) -> np.concatenate(parts)
            join, rest = join.rsplit(".", 1)[0] + ".concatenate" if "." in join else "concatenate", ""
        read = [s for s in walk_own(loop.body, cst.SimpleStatementLine) if node not in s.body] + \
            ([loop.test] if isinstance(loop, cst.While) else [])
        if any(acc == self.code_for(n) for s in read for n in walk(s, (cst.Name, cst.Attribute))):  # the loop reads it
            return (f"buf = <empty tensor of the final size>; buf[:k] = {acc}  # k: filled so far\n{head}:\n"
                    f"    ... buf[:k] ...  # read the filled part: a view, no copy\n    buf[k:k + m] = {new}; k += m")
        empty = isinstance(target, cst.Name) and any(
            is_none(v) for v in assigned_values(self, enclosing_function(self, node), target.value))
        return f"parts = [{'' if empty else acc}]\n{head}:\n    parts.append({new})\n{acc} = {join}(parts{rest})"

    def _join_call(self, value) -> Optional[cst.Call]:
        """The join at the root of ``value`` (``torch.cat(...).to(dev)``, ``cat(...) if acc is not None else x``)."""
        if isinstance(value, cst.IfExp):
            return self._join_call(value.body) or self._join_call(value.orelse)
        while isinstance(value, cst.Call) and not join_kind(self, value):
            mc = method_call(value)
            value = mc[0] if mc is not None and mc[1] in _CHAIN_METHODS else None
        return value if isinstance(value, cst.Call) else None

    def _fed_back(self, call: cst.Call, acc: str) -> bool:
        """``acc`` is one of the joined pieces but not all of them (``[x, x]`` doubles: O(n) copies in
        total); ``stack`` only grows through ``[*acc, x]``."""
        kind, pos = join_kind(self, call) or "", positional(call)
        first = pos[0].value if pos else next((a.value for a in call.args if a.keyword and a.keyword.value in _PIECE_KWARGS), None)
        if kind == "numpy.append":  # np.append(acc, values)
            pieces = [self.code_for(a.value) for a in pos[:2]]
        elif isinstance(first, (cst.List, cst.Tuple)):
            pieces = [("*" if isinstance(e, cst.StarredElement) else "") + self.code_for(e.value) for e in first.elements]
        else:
            return False
        grows = ("*" + acc,) if kind.split(".")[-1] == "stack" else (acc, "*" + acc)
        return any(p in grows for p in pieces) and not all(p == acc for p in pieces)

    def _reset_in(self, loop, node, acc: str) -> bool:
        """Something other than a growing join binds ``acc`` in the loop: a loop target, a tuple
        target (``hx, cx = cell(...)``), ``with ... as acc``, a plain or a truncating assignment
        (re-created, or truncated to a window, inside this loop)."""
        for n in bindings_in(self, loop, acc):
            join = self._join_call(n.value) if isinstance(n, cst.Assign) and len(n.targets) == 1 else None
            if n is not node and (join is None or not self._fed_back(join, acc)):
                return True
        return False
