from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value
from ._context import document_compiles, graph_function, graph_where, is_compiled_function
from ._torch import in_raise, method_call, torch_function
from .base import Invalid, Rule

# Ops whose output size depends on the values of their input (torch.where with one argument too).
_FUNCTIONS = frozenset({"nonzero", "argwhere", "masked_select"})
_METHODS = frozenset({"nonzero", "argwhere", "masked_select"})
# What makes a boolean tensor.
_BOOL_FUNCTIONS = frozenset({"isnan", "isinf", "isfinite", "isneginf", "isposinf", "logical_and", "logical_or",
                             "logical_not", "logical_xor", "eq", "ne", "gt", "lt", "ge", "le", "greater", "less",
                             "isin", "isclose", "signbit"})
_BOOL_METHODS = _BOOL_FUNCTIONS | {"bool", "greater_equal", "less_equal", "not_equal"}
_COMPARISONS = (cst.LessThan, cst.GreaterThan, cst.LessThanEqual, cst.GreaterThanEqual, cst.Equal, cst.NotEqual)


class DynamicShapeInGraph(Rule):
    """An op whose output size depends on tensor values, inside ``forward`` or a compiled function.

    What it does:
        Flags ``nonzero``/``argwhere``/``masked_select``, ``torch.where(cond)`` with one argument,
        and indexing with a boolean mask (``h[h.norm(dim=-1) > 0.5]``, ``x[mask]`` where ``mask``
        is made by a comparison or ``isnan``-like call) in ``forward`` or a ``torch.compile`` /
        ``torch.jit.script`` function. Assigning through a mask (``x[mask] = 0``) keeps the shape and
        is not flagged. Without ``torch.compile``/``jit`` anywhere in the document it is low.

    Why is this bad:
        The size of the result is only known once the mask has been counted: on CUDA the host waits
        for the device on every call, and by default ``torch.compile`` breaks the graph at the op
        ("dynamic shape operator"; ``fullgraph=True`` or ``capture_dynamic_output_shape_ops`` trace
        it with an unbacked size), so the model runs as several graphs with Python in between.
        Every later op sees a new shape each batch.

    Example:
        keep = h.norm(dim=-1) > 0.5
        pooled = self.proj(h[keep]).sum(0)

    Use instead:
        keep = (h.norm(dim=-1) > 0.5).unsqueeze(-1)
        pooled = (self.proj(h) * keep).sum(0)      # fixed shapes: mask by multiplication or where
    """

    code = "TR508"
    title = "Data-dependent output shape in forward: graph break and host sync"
    category = "performance-patterns"
    severity = {"research": "low", "production": "medium"}
    VALID = [
        "import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n        x[x < 0] = 0\n        return x\n",
        "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def forward(self, h, idx):\n"
        "        keep = h.norm(dim=-1) > 0.5\n        return torch.where(keep.unsqueeze(-1), h, 0.0)[idx]\n",
        "import torch\ndef select(h):\n    return h[h > 0]\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, h):\n        keep = h.norm(dim=-1) > 0.5\n"
                "        return self.proj(h[keep]).sum(0)\n", line=5),
        Invalid("import torch\n@torch.compile\ndef f(x):\n    idx = torch.nonzero(x > 0)\n    return idx.sum()\n", line=4),
        Invalid("import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x):\n"
                "        rows, cols = torch.where(x.isnan())\n        return rows\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        if tf in _FUNCTIONS or (tf == "where" and len(node.args) == 1):
            self._flag(node, f"`torch.{tf}" + ("(cond)`" if tf == "where" else "`"))
            return
        mc = method_call(node) if tf is None else None
        if mc is not None and mc[1] in _METHODS:
            recv = self.code_for(mc[0])
            if not recv.startswith(("np.", "numpy.")):
                self._flag(node, f"`.{mc[1]}()`")

    def visit_Subscript(self, node: cst.Subscript) -> None:
        if len(node.slice) != 1 or not isinstance(node.slice[0].slice, cst.Index):
            return
        parent = self.parent(node)
        if isinstance(parent, (cst.AssignTarget, cst.AugAssign)) or isinstance(parent, cst.Del):
            return  # x[mask] = v keeps the shape
        fn = graph_function(self, node)
        if fn is None:
            return
        index = node.slice[0].slice.value
        if self._boolean(fn, index, node):
            self._flag(node, f"Indexing with the boolean mask `{self.code_for(index)}`", fn)

    def _boolean(self, fn, expr: cst.BaseExpression, at: cst.CSTNode, depth: int = 0) -> bool:
        """``expr`` is provably a boolean tensor: a comparison involving a tensor op, ``isnan``-like calls,
        ``.bool()``, ``~``/``&``/``|`` of those, or a name whose one reaching binding is one."""
        if depth > 4:
            return False
        if isinstance(expr, cst.Name):
            v = reaching_value(self, fn, expr.value, at)
            return v is not None and self._boolean(fn, v, at, depth + 1)
        if isinstance(expr, cst.Comparison):
            return all(isinstance(c.operator, _COMPARISONS) for c in expr.comparisons) and self._tensorish(expr)
        if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.BitInvert):
            return self._boolean(fn, expr.expression, at, depth + 1)
        if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.BitAnd, cst.BitOr, cst.BitXor)):
            return self._boolean(fn, expr.left, at, depth + 1) or self._boolean(fn, expr.right, at, depth + 1)
        if isinstance(expr, cst.Call):
            tf = torch_function(self, expr)
            if tf is not None:
                return tf in _BOOL_FUNCTIONS
            mc = method_call(expr)
            return mc is not None and mc[1] in _BOOL_METHODS and not self.code_for(mc[0]).startswith(("np.", "numpy."))
        return False

    def _tensorish(self, cmp: cst.Comparison) -> bool:
        """A comparison whose left side is a tensor expression, not a size or a Python number."""
        left = cmp.left
        code = self.code_for(left)
        if ".shape" in code or ".size(" in code or "len(" in code or isinstance(left, (cst.Integer, cst.Float)):
            return False
        return isinstance(left, (cst.Name, cst.Call, cst.Subscript, cst.Attribute, cst.BinaryOperation))

    def _flag(self, node: cst.CSTNode, what: str, fn: Optional[cst.FunctionDef] = None) -> None:
        fn = fn or graph_function(self, node)
        if fn is None or in_raise(self, node):
            return
        compiled = document_compiles(self) or is_compiled_function(self, fn)
        self.report(
            node, severity=None if compiled else "low",
            problem=(f"{what} in {graph_where(self, fn)} makes a tensor whose size depends on "
                     "the values of its input."),
            impact=("The host must wait for the count (a sync per call on CUDA), torch.compile breaks the graph "
                    "here by default (dynamic shape operator), and every later op sees a new shape each batch."),
            fix=Fix(before=self.code_for(node),
                    after="torch.where(mask, x, 0.0)  # or multiply by the mask: fixed shapes, no sync"),
        )
