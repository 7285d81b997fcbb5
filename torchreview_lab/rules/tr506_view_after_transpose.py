from __future__ import annotations

from typing import Optional

import libcst as cst

from ._torch import enclosing_function, function_facts, method_call, positional
from .base import Invalid, Rule

_PERMUTERS = frozenset({"transpose", "permute", "t", "swapaxes", "swapdims", "movedim"})
_PERMUTE_ATTRS = frozenset({"T", "mT", "H", "mH"})


class ViewAfterTranspose(Rule):
    """``.view`` on the result of ``.transpose``/``.permute``/``.T`` without ``.contiguous()``.

    What it does:
        Flags ``x.transpose(1, 2).view(...)``, ``x.permute(...).view(...)``, ``x.T.view(...)``
        and ``y.view(...)`` where ``y`` was assigned from such a permutation in the same function.

    Why is this bad:
        A transposed tensor is a non-contiguous view. ``.view`` needs compatible strides and raises
        "view size is not compatible with input tensor's size and stride" whenever the new shape
        merges dimensions that the permutation separated: the code works for some shapes and
        crashes for others.

    Example:
        out = attn.transpose(1, 2).view(B, T, H * D)

    Use instead:
        out = attn.transpose(1, 2).reshape(B, T, H * D)   # copies only when it must
    """

    code = "TR506"
    title = ".view after transpose/permute without .contiguous()"
    category = "robustness"
    severity = {"research": "high", "production": "high"}  # raises at run time for most shapes
    autofix = True
    VALID = [
        "def f(x, B, T):\n    return x.transpose(1, 2).contiguous().view(B, T, -1)\n",
        "def f(x, B, T):\n    return x.transpose(1, 2).reshape(B, T, -1)\n",
        "import torch\ndef f(x):\n    return x.t().view(torch.float16)\n",
    ]
    INVALID = [
        Invalid("def f(a, B, T):\n    return a.transpose(1, 2).view(B, T, -1)\n", line=2,
                expected_fix="def f(a, B, T):\n    return a.transpose(1, 2).reshape(B, T, -1)\n"),
        Invalid("def f(x):\n    y = x.permute(0, 2, 1)\n    return y.view(-1)\n", line=3),
        Invalid("def f(w):\n    return w.T.view(-1)\n", line=2),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if mc is None or mc[1] != "view":
            return
        pos = positional(node)
        if len(node.args) == 1 and pos and self._is_dtype(pos[0].value):
            return
        how = self._permuted(node, mc[0])
        if how is None:
            return
        fixed = node.with_changes(func=node.func.with_changes(attr=cst.Name("reshape")))
        self.report(
            node,
            problem=f"`{self.code_for(node)}` calls `.view` on a tensor made non-contiguous by `{how}`.",
            impact=("`.view` raises 'view size is not compatible with input tensor's size and stride' when the "
                    "new shape merges dimensions the permutation separated: it works for some shapes only."),
            replacement=fixed,
        )

    def _is_dtype(self, e: cst.BaseExpression) -> bool:
        return any(q.startswith("torch.") for q in self.qnames(e)) or (
            isinstance(e, cst.Attribute) and self.code_for(e).startswith("torch."))

    def _permuted(self, node: cst.Call, recv: cst.BaseExpression, depth: int = 0) -> Optional[str]:
        if isinstance(recv, cst.Attribute) and recv.attr.value in _PERMUTE_ATTRS:
            return f".{recv.attr.value}"
        mc = method_call(recv)
        if mc is not None:
            if mc[1] in _PERMUTERS:
                return f".{mc[1]}(...)"
            return None
        if isinstance(recv, cst.Name) and depth == 0:
            fn = enclosing_function(self, node)
            if fn is None:
                return None
            values = function_facts(self, fn).assignments.get(recv.value, [])
            if len(values) == 1:
                return self._permuted(node, values[0], depth + 1)
        return None
