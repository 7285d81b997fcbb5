from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._flow import doc_shapes
from ._knowledge import SHAPE_FACTORIES
from ._torch import assigned_values, enclosing_function, is_method_call, method_call, positional, torch_function
from .base import Invalid, Rule

_ELEMENTWISE_PRED = frozenset({"isnan", "isinf", "isfinite", "isposinf", "isneginf", "eq", "ne", "gt", "ge", "lt", "le",
                               "logical_and", "logical_or", "logical_not", "logical_xor", "isclose", "signbit"})


class TensorTruthiness(Rule):
    """``if``/``while`` on a tensor that has more than one element.

    What it does:
        Flags ``if mask:``, ``if x > 0:``, ``while torch.isnan(x):`` (also under ``not``/``and``/``or``)
        when the tensor is clearly multi-element: an element-wise comparison or predicate of a
        tensor created with a shape, sliced with ``:``, or documented with a shape.

    Why is this bad:
        ``bool()`` of a tensor with more than one element raises ``RuntimeError: Boolean value of
        Tensor with more than one value is ambiguous``. Code tested with batch size 1 passes and
        crashes on the first real batch.

    Example:
        mask = x > 0          # x: (batch, T)
        if mask:
            ...

    Use instead:
        if mask.any():        # or mask.all(), whichever is meant
    """

    code = "TR603"
    title = "Truth value of a multi-element tensor"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef aug(x):\n    if torch.rand(()) < 0.5:\n        x = x.flip(-1)\n    return x\n",
        "import torch\ndef f(x):\n    # x: (batch, T)\n    if (x > 0).any():\n        return x\n",
        "import torch\ndef f(x):\n    if x.sum() > 0:\n        return x\n",
        "import torch\ndef f(flag, x):\n    if flag:\n        return x\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    # x: (batch, T)\n    mask = x > 0\n    if mask:\n        return x\n", line=5),
        Invalid("import torch\ndef f(n):\n    x = torch.randn(n, 3)\n    if torch.isnan(x):\n        return None\n    return x\n", line=4),
        Invalid("def f(x):\n    while not x[:, 0] > 0:\n        x = x + 1\n    return x\n", line=2),
    ]

    def visit_If(self, node: cst.If) -> None:
        self._check(node.test)

    def visit_While(self, node: cst.While) -> None:
        self._check(node.test)

    def _check(self, test) -> None:
        if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
            return self._check(test.expression)
        if isinstance(test, cst.BooleanOperation):
            self._check(test.left)
            return self._check(test.right)
        fn = enclosing_function(self, test)
        why = self._multi(test, fn, 0, predicate=True)
        if not why:
            return
        t = self.code_for(test)
        self.report(
            test,
            problem=f"`{t}` is used as a truth value, but it is a multi-element tensor ({why}).",
            impact="bool() of a tensor with more than one element raises RuntimeError on the first real batch.",
            fix=Fix(before=t, after=f"({t}).any()  # or .all(), whichever is meant"),
        )

    def _non_tensor_param(self, fn, name: str) -> bool:
        """A parameter annotated with a non-tensor type (``Tuple[int, int]``, ``int``): its documented
        "(height, width)" is a tuple, not a shape."""
        params = list(fn.params.params) + list(fn.params.kwonly_params) if fn is not None else []
        ann = next((p.annotation for p in params if p.name.value == name), None)
        return ann is not None and "Tensor" not in self.code_for(ann.annotation)

    def _multi(self, e, fn, depth, predicate=False) -> Optional[str]:
        """Why ``e`` is a multi-element tensor (boolean when ``predicate``), or None."""
        if depth > 3:
            return None
        if isinstance(e, cst.Comparison):
            if any(isinstance(c.operator, (cst.Is, cst.IsNot, cst.In, cst.NotIn)) for c in e.comparisons):
                return None
            for side in [e.left] + [c.comparator for c in e.comparisons]:
                r = self._multi(side, fn, depth + 1)
                if r:
                    return f"an element-wise comparison of {r}"
            return None
        if isinstance(e, cst.Call):
            tf = torch_function(self, e)
            if tf in _ELEMENTWISE_PRED and positional(e):
                r = self._multi(positional(e)[0].value, fn, depth + 1)
                return f"`torch.{tf}` of {r}" if r else None
            mc = method_call(e)
            if mc and is_method_call(self, e, _ELEMENTWISE_PRED):
                r = self._multi(mc[0], fn, depth + 1)
                return f"`.{mc[1]}()` of {r}" if r else None
            if not predicate and tf in SHAPE_FACTORIES:
                dims = [a.value for a in positional(e)]
                if len(dims) == 1 and isinstance(dims[0], (cst.Tuple, cst.List)):  # torch.rand(()) is 0-dim
                    dims = [el.value for el in dims[0].elements] or [cst.Integer("1")]
                if dims and not all(isinstance(d, cst.Integer) and d.value == "1" for d in dims):
                    return f"a `torch.{tf}` tensor"
            return None
        if isinstance(e, cst.Subscript) and not predicate:
            if any(isinstance(s.slice, cst.Slice) for s in e.slice) and self._multi(e.value, fn, depth + 1, False) is not None \
                    or any(isinstance(s.slice, cst.Slice) for s in e.slice) and len(e.slice) >= 2:
                return f"the slice `{self.code_for(e)}`"
            return None
        if isinstance(e, cst.Name):
            if not predicate and e.value in doc_shapes(self, fn) and len(doc_shapes(self, fn)[e.value]) >= 1 \
                    and not assigned_values(self, fn, e.value) and not self._non_tensor_param(fn, e.value):
                return f"`{e.value}`, documented as ({', '.join(doc_shapes(self, fn)[e.value])})"
            vals = assigned_values(self, fn, e.value)
            if len(vals) == 1:
                return self._multi(vals[0], fn, depth + 1, predicate)
        return None
