from __future__ import annotations

from typing import Set

import libcst as cst

from ..findings import Fix
from ._knowledge import SHAPE_FACTORIES, SIZE_ARG_POSITION
from ._pairs import expand_dims
from ._torch import (
    assigned_name,
    enclosing_function,
    enclosing_loops,
    function_facts,
    loop_targets,
    names_in,
    shape_dims,
    torch_function,
    walk_own,
)
from .base import Invalid, Rule


class MaterializedLoopTensor(Rule):
    """A large tensor is materialized over sizes that Python loops range over.

    What it does:
        Flags a tensor factory (``zeros``, ``empty``, ``full``, ``rand`` ...) or a sum with an
        ``expand(...)`` whose shape has four or more dimensions including a size that a loop in the
        same function ranges over (the ``(batch, T, K, C, C)`` edge tensor of a semi-Markov CRF), or
        a preallocated tensor that is filled block by block inside nested Python loops.

    Why is this bad:
        Memory grows with the product of the loop sizes: a ``(2, 400_000, 1000, 24, 24)`` float32
        tensor needs 921 GB. Filling it from nested Python loops also costs O(T*K) interpreter
        steps, each launching small kernels; at 100x the test length this neither fits nor
        finishes.

    Example:
        edge = torch.zeros(batch, T, K, C, C)
        for t in range(T):
            for k in range(K):
                edge[:, t, k] = score(t, k)

    Use instead:
        Stream over T and keep only the O(K*C) state a recurrence needs (compute the edge
        potentials for position t inside the loop), or build the tensor from broadcast operations
        on the GPU without Python loops, for the sizes that must be materialized.
    """

    code = "TR101"
    title = "Large tensor materialized over loop-ranged sizes"
    category = "memory-complexity"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef f(x, K):\n    out = torch.zeros(x.shape[0], K)\n    for k in range(K):\n        out[:, k] = x[:, k]\n    return out\n",
        "import torch\ndef g(n):\n    return torch.zeros(n, n)\n",
        "import torch\ndef h(x, C):\n    buf = torch.empty(2, 3, 4, C)\n    return buf\n",
        "def g(x, m, H):\n    B, T, D = x.shape\n    y = x[:, None] * m.expand(B, H, T, D)\n    return y\n",
    ]
    INVALID = [
        Invalid("import torch\ndef edges(em, K):\n    B, T, C = em.shape\n    e = torch.zeros(B, T, K, C, C)\n    for t in range(T):\n        e[:, t] = 1\n    return e\n", line=4),
        Invalid("from torch import empty\ndef table(x, K):\n    T = x.shape[1]\n    tab = empty(x.shape[0], T, K)\n    for t in range(T):\n        for k in range(K):\n            tab[:, t, k] = x[:, t].sum(-1)\n    return tab\n", line=4),
        Invalid("def edges(seg, trans, K):\n    B, T, C = seg.shape[0], seg.shape[1], trans.shape[0]\n"
                "    e = seg[..., None, :] + trans.expand(B, T, K, C, C)\n    for t in range(T):\n        s = e[:, t]\n    return s\n", line=3),
        Invalid("import torch as th\ndef pair(x):\n    T = x.shape[0]\n    d = th.zeros((T, T, 8, 8))\n    for i in range(T):\n        d[i] = i\n    return d\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        fname = torch_function(self, node)
        if fname not in SHAPE_FACTORIES and fname not in SIZE_ARG_POSITION:
            return
        dims, fn = shape_dims(self, node, fname), enclosing_function(self, node)
        scope = fn if fn is not None else self.ctx.module
        if not dims or scope is None:
            return
        ranged = self._loop_ranged(fn)
        dim_codes = [self.code_for(d).replace(" ", "") for d in dims]
        looped = [c for c, d in zip(dim_codes, dims) if c in ranged or (isinstance(d, cst.Name) and d.value in ranged)]
        shape_txt = ", ".join(self.code_for(d) for d in dims)
        if len(dims) >= 4 and looped:
            self.report(
                node,
                problem=(f"`torch.{fname}({shape_txt})` materializes a {len(dims)}-D tensor over "
                         f"{', '.join(sorted(set(looped)))}, which Python loops in this function range over."),
                impact=("Memory grows as the product of all these sizes (O(" + "*".join(dim_codes) + ")); "
                        "at 10-1000x the test length it exceeds device memory."),
                fix=Fix(before=self.code_for(node),
                        after="# stream over the loop dimension: keep only the state the recurrence needs\n"
                              "# e.g. compute the (batch, K, C, C) slice for position t inside the loop"),
                evidence={"dims": len(dims), "loop_ranged": sorted(set(looped))},
            )
            return
        target = assigned_name(self, node)
        if target and len(dims) >= 2 and self._filled_in_nested_loops(scope, target):
            self.report(
                node,
                problem=(f"`{target} = torch.{fname}({shape_txt})` is preallocated and then filled "
                         f"element-block-wise inside nested Python loops."),
                impact=("Memory is O(" + "*".join(dim_codes) + ") and the fill costs one interpreter step and "
                        "small kernel launches per (loop, loop) pair: quadratic Python time at long sequences."),
                fix=Fix(before=self.code_for(node),
                        after="# vectorize the fill (broadcasting, cumsum/unfold windows) or stream over T "
                              "without materializing the table"),
                evidence={"dims": len(dims)},
            )

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> None:
        for side in (node.left, node.right):
            dims = expand_dims(side) if isinstance(node.operator, (cst.Add, cst.Subtract, cst.Multiply)) else ()
            codes = [self.code_for(d).replace(" ", "") for d in dims or ()]
            looped = sorted({c for c in codes if c in self._loop_ranged(enclosing_function(self, node))})
            if len(codes) >= 4 and looped:
                return self.report(node, problem=f"`{self.code_for(node)}` materializes the full {len(codes)}-D expanded "
                                   f"shape ({', '.join(codes)}), including {', '.join(looped)} that loops below range over.",
                                   impact="Memory grows as O(" + "*".join(codes) + "): the whole edge tensor exists at once "
                                   "although the recursion reads one step at a time.", evidence={"loop_ranged": looped},
                                   fix=Fix(before=self.code_for(node), after="# build the step-t edges inside the loop"))

    def _loop_ranged(self, fn) -> Set[str]:
        if fn is not None:
            return function_facts(self, fn).loop_ranged
        key = ("module-loop-ranged",)
        if key not in self.ctx.cache:
            out: Set[str] = set()
            from ._torch import range_args

            for n in walk_own(self.ctx.module, cst.For):
                for a in range_args(n) or []:
                    out.add(self.code_for(a).replace(" ", ""))
                    out |= names_in(a)
            self.ctx.cache[key] = out
        return self.ctx.cache[key]

    def _filled_in_nested_loops(self, scope, name: str) -> bool:
        for n in walk_own(scope if not isinstance(scope, cst.FunctionDef) else scope.body, cst.Assign):
            for t in n.targets:
                sub = t.target
                if not (isinstance(sub, cst.Subscript) and isinstance(sub.value, cst.Name) and sub.value.value == name):
                    continue
                loops = [lp for lp in enclosing_loops(self, n) if isinstance(lp, cst.For)]
                idx_names = set()
                for e in sub.slice:
                    idx_names |= names_in(e.slice)
                used = [lp for lp in loops if loop_targets(lp) & idx_names]
                if len(used) >= 2:
                    return True
        return False
