from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._flow import canonical_size, const_int
from ._knowledge import SHAPE_FACTORIES, SIZE_ARG_POSITION
from ._pairs import filled_from_edge_list
from ._torch import (assigned_name, assigned_values, enclosing_function, is_method_call, kwarg, method_call, shape_dims,
                     torch_function, walk, walk_own)
from .base import Invalid, Rule


def _none_positions(e) -> Optional[tuple]:
    """``("x", (2,))`` for ``x[:, :, None]``; ``("x", (1,))`` for ``x.unsqueeze(1)``."""
    if isinstance(e, cst.Subscript) and isinstance(e.value, cst.Name):
        pos = tuple(i for i, s in enumerate(e.slice) if isinstance(s.slice, cst.Index)
                    and isinstance(s.slice.value, cst.Name) and s.slice.value.value == "None")
        other = [s for s in e.slice if not (isinstance(s.slice, cst.Index) and isinstance(s.slice.value, cst.Name)
                                            and s.slice.value.value == "None")]
        if pos and all(isinstance(s.slice, cst.Slice) and s.slice.lower is None and s.slice.upper is None
                       or isinstance(s.slice, cst.Index) and isinstance(s.slice.value, cst.Ellipsis) for s in other):
            return e.value.value, pos
    mc = method_call(e) if isinstance(e, cst.Call) else None
    if mc and mc[1] == "unsqueeze" and isinstance(mc[0], cst.Name) and len(e.args) == 1 \
            and isinstance(e.args[0].value, (cst.Integer, cst.UnaryOperation)):
        return mc[0].value, (cst.Module(body=[]).code_for_node(e.args[0].value),)
    return None


_LABEL_NAMES = frozenset({"C", "D", "H", "V", "num_classes", "n_classes", "labels", "n_labels", "hidden", "d_model",
                          "dim", "features", "channels", "vocab_size"})


class PairwiseSequenceTensor(Rule):
    """A tensor with two sequence-sized dimensions (T x T) is materialized.

    What it does:
        Flags shape factories whose shape repeats a size read from a tensor's shape
        (``T = x.shape[1]; torch.zeros(B, T, T)``) and broadcast outer operations of a tensor with
        itself (``x[:, :, None] - x[:, None, :]``, ``x.unsqueeze(1) * x.unsqueeze(2)``).

    Why is this bad:
        Memory grows as O(T^2): a float32 (T, T) tensor is 40 MB at T = 3,200 but 640 GB at
        T = 400,000. Code tested on short sequences fails with out-of-memory on real lengths.

    Example:
        T = x.shape[1]
        dist = x[:, :, None] - x[:, None, :]      # (B, T, T)

    Use instead:
        Work on blocks or windows (only |i - j| <= K is needed in a semi-Markov model), stream
        over one of the two axes, or use fused kernels (``torch.cdist``, scaled_dot_product_attention)
        that avoid the full intermediate.
    """

    code = "TR102"
    title = "T x T tensor materialized (quadratic memory)"
    category = "memory-complexity"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef f(n):\n    return torch.zeros(n, n)\n",
        "import torch\ndef f(x):\n    B, T, C = x.shape\n    return torch.zeros(B, T, C)\n",
        "def f(x, y):\n    return x[:, None] - y[None, :]\n",
        "import torch\ndef f(group):\n    size = len(group)\n    return torch.ones([size, size])\n",
        "import torch\ndef f(em, K):\n    B, T, C = em.shape\n    return torch.zeros(B, T, K, C, C)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    T = x.shape[1]\n    return torch.zeros(x.shape[0], T, T)\n", line=4),
        Invalid("def f(x):\n    return x[:, :, None] - x[:, None, :]\n", line=2),
        Invalid("def f(h):\n    return h.unsqueeze(1) * h.unsqueeze(2)\n", line=2),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        fname = torch_function(self, node)
        if fname not in SHAPE_FACTORIES and fname not in SIZE_ARG_POSITION:
            return
        dims, fn = shape_dims(self, node, fname), enclosing_function(self, node)
        if not dims or len(dims) < 2:
            return
        canon = [canonical_size(self, fn, d) if isinstance(d, (cst.Name, cst.Subscript, cst.Call)) else None for d in dims]
        seen = {}
        for d, c in zip(dims, canon):
            if c and ".shape[" in c and not self._from_len(d, fn) and not self._label_axis(d, c, fn):
                seen[c] = seen.get(c, 0) + 1
        rep = [c for c, n in seen.items() if n >= 2]
        if not rep or filled_from_edge_list(self, fn, assigned_name(self, node) or ""):
            return  # a dense adjacency from an edge list: TR106 reports it
        mask = kwarg(node, "dtype") is not None and "bool" in self.code_for(kwarg(node, "dtype").value)
        p = self.parent(node)
        while isinstance(p, (cst.Attribute, cst.Call, cst.Arg)) and not mask:
            mask = (isinstance(p, cst.Call) and (torch_function(self, p) in ("triu", "tril")
                                                 or bool(is_method_call(self, p, {"triu", "tril"}))))
            p = self.parent(p)
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` materializes two dimensions of size `{rep[0]}`, a size read from the data."),
            impact="Memory grows quadratically with the sequence length: 640 GB in float32 at T = 400,000.",
            fix=Fix(before=self.code_for(node), after="# keep only the band |i - j| <= K, or stream over one axis"),
            evidence={"repeated_dim": rep[0]},
            severity="low" if mask or self._size_asserted(node) else None,
        )

    def _label_axis(self, d, canon: str, fn) -> bool:
        """C x C (labels, features) is not a sequence axis: the last axis of an unpacked shape, ``shape[-1]``,
        or a size named for classes/features."""
        if canon.endswith("[-1]") or (isinstance(d, cst.Name) and d.value in _LABEL_NAMES):
            return True
        if isinstance(d, cst.Name):
            for n in walk_own(fn.body if fn is not None else self.ctx.module, cst.Assign):
                for t in n.targets:
                    if isinstance(t.target, (cst.Tuple, cst.List)) and isinstance(n.value, cst.Attribute) \
                            and n.value.attr.value == "shape":
                        names = [e.value.value if isinstance(e.value, cst.Name) else None for e in t.target.elements]
                        if d.value in names and names.index(d.value) == len(names) - 1 and len(names) > 1:
                            return True
        return False

    def _from_len(self, d, fn) -> bool:
        """``len(group)`` is the length of a container, not a sequence axis of the data."""
        vals = [d] + (list(assigned_values(self, fn, d.value)) if isinstance(d, cst.Name) else [])
        return any("len(" in self.code_for(v) for v in vals)

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        if not isinstance(node.operator, (cst.Subtract, cst.Add, cst.Multiply, cst.Divide)):
            return
        lp, rp = _none_positions(node.left), _none_positions(node.right)
        if not lp or not rp or lp[0] != rp[0] or lp[1] == rp[1]:
            return
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` broadcasts `{lp[0]}` against itself, materializing every pair of "
                     f"positions (an O(T^2) tensor)."),
            impact="Memory and time grow quadratically with the length of that axis: out-of-memory on long sequences.",
            fix=Fix(before=self.code_for(node),
                    after="# restrict to the pairs needed (a band of width K, torch.cdist, chunking over one axis)"),
            severity="low" if self._size_asserted(node) else None,
        )

    def _size_asserted(self, node) -> bool:
        """The function asserts an upper bound (``assert T <= 4096``): a capped test or reference path."""
        fn = enclosing_function(self, node)
        for a in walk_own(fn.body, cst.Assert) if fn is not None else ():
            for c in walk(a.test, cst.Comparison):
                if any(isinstance(t.operator, (cst.LessThan, cst.LessThanEqual)) and const_int(t.comparator) is not None
                       and const_int(t.comparator) <= 100_000 for t in c.comparisons):
                    return True
        return False
