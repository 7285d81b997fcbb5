from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import enclosing_function, function_facts, loop_targets, names_in, range_args, walk
from .base import Invalid, Rule


def batch_size_expr(rule, fn: Optional[cst.FunctionDef], expr: cst.BaseExpression) -> Optional[str]:
    """The tensor whose batch dimension ``expr`` is: ``x.shape[0]``, ``x.size(0)``, or a name
    assigned from one of them (``B = x.shape[0]``, ``B, T = x.shape[:2]``, ``B, T, C = x.shape``)."""
    text = rule.code_for(expr).replace(" ", "")
    for suffix in (".shape[0]", ".size(0)", ".size()[0]"):
        if text.endswith(suffix):
            return text[: -len(suffix)]
    if fn is None or not isinstance(expr, cst.Name):
        return None
    for stmt in walk(fn.body, cst.Assign):
        for t in stmt.targets:
            tgt = t.target
            if isinstance(tgt, cst.Name) and tgt.value == expr.value:
                return batch_size_expr(rule, None, stmt.value)
            if isinstance(tgt, (cst.Tuple, cst.List)) and tgt.elements:
                first = tgt.elements[0].value
                if isinstance(first, cst.Name) and first.value == expr.value:
                    v = rule.code_for(stmt.value).replace(" ", "")
                    for suffix in (".shape", ".size()", ".shape[:2]", ".shape[:3]", ".size()[:2]"):
                        if v.endswith(suffix) and not v[: -len(suffix)].endswith(")"):
                            return v[: -len(suffix)]
    return None


class PerSampleBatchLoop(Rule):
    """A Python loop over the batch dimension.

    What it does:
        Flags ``for b in range(x.shape[0])`` (or ``range(B)`` with ``B`` read from ``x.shape``)
        whose body indexes tensors with the loop variable: one sample at a time.

    Why is this bad:
        Every iteration launches its own small kernels and pays Python overhead; the GPU works on
        one sample while it could process the whole batch in one kernel. Time grows linearly with
        the batch size instead of staying near-constant.

    Example:
        for b in range(x.shape[0]):
            mask[b, : lengths[b]] = 1

    Use instead:
        mask = torch.arange(T, device=x.device)[None, :] < lengths[:, None]   # whole batch at once
    """

    code = "TR505"
    title = "Per-sample Python loop over the batch dimension"
    category = "performance-patterns"
    severity = {"research": "low", "production": "low"}
    VALID = [
        "def f(x, K):\n    for k in range(K):\n        x[:, k] = 0\n    return x\n",
        "def f(x):\n    for i in range(x.shape[1]):\n        x[:, i] += 1\n    return x\n",
        "def f(x):\n    n = 0\n    for b in range(x.shape[0]):\n        n += 1\n    return n\n",
    ]
    INVALID = [
        Invalid("def masked(data, lengths):\n    batch, T = data.shape[:2]\n    mask = data.new_zeros(batch, T)\n    for b in range(batch):\n        mask[b, : lengths[b]] = 1\n    return mask\n", line=4),
        Invalid("import torch\ndef g(x):\n    outs = []\n    for i in range(x.size(0)):\n        outs.append(torch.relu(x[i]))\n    return torch.stack(outs)\n", line=4),
    ]

    def visit_For(self, node: cst.For) -> None:
        args = range_args(node)
        if not args or len(args) != 1:
            return
        fn = enclosing_function(self, node)
        tensor = batch_size_expr(self, fn, args[0])
        if tensor is None:
            return
        var = loop_targets(node)
        if not var or not self._indexes_with(node, var):
            return
        self.report(
            node,
            problem=(f"`for {self.code_for(node.target)} in range({self.code_for(args[0])})` processes the batch "
                     f"of `{tensor}` one sample at a time."),
            impact=("Small kernel launches and Python overhead per sample: time grows linearly with the batch "
                    "size and the GPU stays mostly idle."),
            fix=Fix(before=f"for b in range({self.code_for(args[0])}):\n    out[b] = f({tensor}[b])",
                    after=f"out = f({tensor})  # one batched op over dim 0 (broadcasting, masks, torch.vmap)"),
        )

    def _indexes_with(self, loop: cst.For, var) -> bool:
        for sub in walk(loop.body, cst.Subscript):
            if sub.slice and names_in(sub.slice[0].slice) & var:
                return True
        return False
