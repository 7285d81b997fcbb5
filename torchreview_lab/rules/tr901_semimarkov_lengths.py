from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._flow import canonical_size
from ._knowledge import SHAPE_FACTORIES
from ._torch import (assigned_values, dotted_name, enclosing_function, kwarg, method_call, positional, shape_dims,
                     torch_function, walk)
from .base import Invalid, Rule

_STRUCT_METHODS = {"marginals", "logpartition", "sum", "partition", "argmax", "entropy"}


class SemiMarkovLengths(Rule):
    """An exact ``SemiMarkov`` backend gets ``lengths`` for an edge tensor with T positions.

    What it does:
        Flags ``SemiMarkov(...).marginals/logpartition/sum(edge, lengths=lengths)`` (torch-struct)
        when ``edge`` was built as ``(batch, T, K, C, C)`` with T read from the data, and
        ``lengths`` is not shifted by one.

    Why is this bad:
        torch-struct's ``SemiMarkov`` takes edges of shape ``(batch, N - 1, K, C, C)`` and lengths
        up to N (it counts boundaries, not positions). With T edge positions the sequence length
        it expects is ``T + 1``; passing ``lengths`` silently drops the last position from every
        sequence, so the partition function and the marginals are those of a shorter sequence.

    Example:
        edge = torch.zeros(B, T, K, C, C)
        logZ = SemiMarkov(LogSemiring).logpartition(edge, lengths=lengths)

    Use instead:
        logZ = SemiMarkov(LogSemiring).logpartition(edge, lengths=lengths + 1)
        # or build the edge tensor with T - 1 positions
    """

    code = "TR901"
    title = "SemiMarkov called with lengths of a T-position edge tensor"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\nfrom torch_struct import SemiMarkov\ndef f(x, K, C, lengths):\n    B, T, _ = x.shape\n    edge = torch.zeros(B, T, K, C, C)\n    return SemiMarkov().logpartition(edge, lengths=lengths + 1)\n",
        "import torch\nfrom torch_struct import SemiMarkov\ndef f(x, K, C, lengths):\n    B, T, _ = x.shape\n    edge = torch.zeros(B, T - 1, K, C, C)\n    return SemiMarkov().marginals(edge, lengths=lengths)\n",
    ]
    INVALID = [
        Invalid("import torch\nfrom torch_struct import SemiMarkov\ndef f(x, K, C, lengths):\n    B, T, _ = x.shape\n    edge = torch.zeros(B, T, K, C, C)\n    return SemiMarkov().logpartition(edge, lengths=lengths)\n", line=6),
        Invalid("import torch\nimport torch_struct\ndef f(x, K, C, lengths):\n    T = x.size(1)\n    edge = torch.randn(x.shape[0], T, K, C, C)\n    sm = torch_struct.SemiMarkov()\n    return sm.marginals(edge, lengths)\n", line=7),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if not mc or mc[1] not in _STRUCT_METHODS:
            return
        fn = enclosing_function(self, node)
        if not self._is_semimarkov(mc[0], fn):
            return
        pos = positional(node)
        lengths = kwarg(node, "lengths")
        lengths = lengths.value if lengths is not None else (pos[1].value if len(pos) > 1 else None)
        if lengths is None or not pos or self._shifted(lengths):
            return
        t_dim = self._edge_positions(pos[0].value, fn)
        if t_dim is None:
            return
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` passes `{self.code_for(lengths)}` for an edge tensor built with "
                     f"`{t_dim}` positions; SemiMarkov expects edges of shape (batch, N - 1, K, C, C) with lengths up to N."),
            impact="The last position of every sequence is silently dropped: wrong partition function and marginals.",
            fix=Fix(before=self.code_for(lengths), after=f"{self.code_for(lengths)} + 1"),
        )

    def _is_semimarkov(self, recv, fn, depth: int = 0) -> bool:
        if isinstance(recv, cst.Name):  # through names (``x = x.to(d)`` refers to itself: bounded)
            vals = assigned_values(self, fn, recv.value) or assigned_values(self, None, recv.value)
            return depth < 4 and any(self._is_semimarkov(v, fn, depth + 1) for v in vals)
        if isinstance(recv, cst.Call):
            name = dotted_name(recv.func) or ""
            return name.split(".")[-1] == "SemiMarkov" or any(q.endswith("SemiMarkov") for q in self.qnames(recv.func))
        return False

    def _shifted(self, lengths) -> bool:
        return any(isinstance(b.operator, cst.Add) for b in walk(lengths, cst.BinaryOperation))

    def _edge_positions(self, edge, fn) -> Optional[str]:
        vals = assigned_values(self, fn, edge.value) if isinstance(edge, cst.Name) else [edge]
        for v in vals:
            if not isinstance(v, cst.Call):
                continue
            tf = torch_function(self, v)
            dims = shape_dims(self, v, tf) if tf in SHAPE_FACTORIES else None
            if dims is None and method_call(v) and method_call(v)[1] in ("view", "reshape", "expand", "new_zeros"):
                dims = [a.value for a in v.args]
            if not dims or len(dims) != 5:
                continue
            d = dims[1]
            canon = canonical_size(self, fn, d) if isinstance(d, (cst.Name, cst.Subscript, cst.Call)) else None
            if canon and ".shape[" in canon:
                return self.code_for(d)
        return None
