from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._context import public_function
from ._torch import function_facts, walk_own
from .base import Invalid, Rule

_SHAPE_SUFFIXES = (".shape", ".size()")


class UnvalidatedShapeUnpack(Rule):
    """A public entry point unpacks an argument's shape without validating it.

    What it does:
        Under the production standard, flags ``B, T, C = x.shape`` (or ``x.size()``) on a
        parameter of a public function or method when nothing before it checks the input
        (no ``raise``, ``assert`` or ``if x.dim() ...`` earlier in the function). Once per function.

    Why is this bad:
        A caller passing a 2-D tensor gets "not enough values to unpack (expected 3, got 2)" from
        inside the library, with no hint of which argument or which layout was expected; a
        tensor with the right rank but the wrong layout (``(T, B, C)`` for ``(B, T, C)``) passes
        silently and produces wrong results further on.

    Example:
        def forward(self, x):
            B, T, C = x.shape

    Use instead:
        if x.dim() != 3:
            raise ValueError(f"x must be (batch, T, channels), got shape {tuple(x.shape)}")
        B, T, C = x.shape
    """

    code = "TR706"
    title = "Input shape unpacked without validation"
    category = "robustness"
    severity = {"research": None, "production": "low"}
    VALID = [
        "def f(x):\n    if x.dim() != 3:\n        raise ValueError('x must be 3-D')\n    B, T, C = x.shape\n    return B\n",
        "def _f(x):\n    B, T, C = x.shape\n    return B\n",
        "def f(x):\n    y = x.flatten(1)\n    B, D = y.shape\n    return B\n",
    ]
    INVALID = [
        Invalid("def f(x):\n    B, T, C = x.shape\n    return x.view(B * T, C)\n", line=2),
        Invalid("class Attn:\n    def forward(self, q, k):\n        b, h, t, d = q.size()\n        return q\n", line=3),
    ]

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        if not public_function(self, node):
            return
        params = set(function_facts(self, node).params) - {"self", "cls"}
        for n in walk_own(node.body):
            if isinstance(n, (cst.Raise, cst.Assert)):
                return
            if isinstance(n, cst.If) and any(s in self.code_for(n.test) for s in (".dim()", ".ndim", ".shape", ".size(", "len(")):
                return
            if isinstance(n, cst.Assign) and len(n.targets) == 1 and isinstance(n.targets[0].target, (cst.Tuple, cst.List)):
                name = self._shape_of(n.value)
                if name in params and len(n.targets[0].target.elements) >= 2:
                    self._report(node, n, name)
                    return

    def _shape_of(self, v: cst.BaseExpression) -> Optional[str]:
        if not (isinstance(v, cst.Attribute) and v.attr.value == "shape") and not (
                isinstance(v, cst.Call) and isinstance(v.func, cst.Attribute) and v.func.attr.value == "size"):
            return None
        text = self.code_for(v).replace(" ", "")
        for s in _SHAPE_SUFFIXES:
            if text.endswith(s) and text[: -len(s)].isidentifier():
                return text[: -len(s)]
        return None

    def _report(self, fn: cst.FunctionDef, stmt: cst.Assign, name: str) -> None:
        k = len(stmt.targets[0].target.elements)
        self.report(
            stmt,
            problem=(f"`{fn.name.value}` unpacks `{self.code_for(stmt.value)}` into {k} sizes without checking "
                     f"that `{name}` has {k} dimensions."),
            impact=(f"Callers passing the wrong rank get 'not enough values to unpack' from inside the library, "
                    "with no hint of the expected layout; a wrong layout of the right rank passes silently."),
            fix=Fix(before=self.code_for(stmt).strip(),
                    after=f"if {name}.dim() != {k}:\n    raise ValueError(f\"{name} must be {k}-D, got {{tuple({name}.shape)}}\")\n"
                          + self.code_for(stmt).strip()),
        )
