from __future__ import annotations

from typing import List

import libcst as cst

from ..findings import Fix
from ._knowledge import SHAPE_FACTORIES
from ._torch import enclosing_function, function_facts, is_method_call, positional, torch_function
from .base import Invalid, Rule

_SHAPE_METHODS = frozenset({"view", "reshape", "expand", "repeat", "new_zeros", "new_ones", "new_empty",
                            "unflatten"})
_SMALL = 4  # 0..4 (and -1) are layout constants (pairs, RGB, quaternions), not magic sizes


def _int_value(e: cst.BaseExpression):
    if isinstance(e, cst.Integer):
        return int(e.value.replace("_", ""), 0)
    if isinstance(e, cst.UnaryOperation) and isinstance(e.operator, cst.Minus) and isinstance(e.expression, cst.Integer):
        return -int(e.expression.value.replace("_", ""), 0)
    return None


class MagicShapeNumbers(Rule):
    """Hard-coded sizes in tensor shapes inside a function that receives tensors.

    What it does:
        Under the production standard, flags integer literals larger than 4 in the shape of
        ``view``/``reshape``/``expand``/``repeat``/``new_zeros`` and of shape factories
        (``torch.zeros(32, 512)``) inside a function with tensor arguments. Once per function.

    Why is this bad:
        The literal silently encodes an assumption about the input (hidden size 512, 8 heads):
        the function breaks, or worse reshapes data into the wrong layout, as soon as a model is
        configured differently, and the reader cannot tell where the number comes from.

    Example:
        def heads(x):
            return x.view(x.shape[0], -1, 8, 64)

    Use instead:
        def heads(x, num_heads: int):
            B, T, D = x.shape
            return x.view(B, T, num_heads, D // num_heads)
    """

    code = "TR804"
    title = "Magic number in a tensor shape"
    category = "readability"
    severity = {"research": None, "production": "low"}
    VALID = [
        "def f(x, H):\n    B, T, D = x.shape\n    return x.view(B, T, H, D // H)\n",
        "def f(x):\n    return x.view(-1, 2)\n",
        "import torch\ndef table():\n    return torch.zeros(10, 10)\n",
    ]
    INVALID = [
        Invalid("def heads(x):\n    return x.view(x.shape[0], -1, 8, 64)\n", line=2),
        Invalid("import torch\ndef f(x):\n    h = torch.zeros(x.shape[0], 512)\n    return x @ h.T\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        meth = is_method_call(self, node, _SHAPE_METHODS)
        fname = None if meth else torch_function(self, node)
        if meth is None and fname not in SHAPE_FACTORIES:
            return
        fn = enclosing_function(self, node)
        if fn is None or not function_facts(self, fn).tensor_params:
            return
        magic = self._magic(node)
        if not magic:
            return
        key = ("TR804", id(fn))
        if key in self.ctx.cache:
            return
        self.ctx.cache[key] = True
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` hard-codes the size{'s' if len(magic) > 1 else ''} "
                     f"{', '.join(map(str, magic))} in a function that receives tensors."),
            impact=("The literal encodes an unstated assumption about the input or model configuration: a "
                    "different configuration breaks or silently reshapes data into the wrong layout."),
            fix=Fix(before=self.code_for(node), after="# derive sizes from the input (x.shape) or a named parameter/config"),
        )

    def _magic(self, node: cst.Call) -> List[int]:
        out = []
        for a in positional(node):
            vals = [e.value for e in a.value.elements] if isinstance(a.value, (cst.Tuple, cst.List)) else [a.value]
            for v in vals:
                i = _int_value(v)
                if i is not None and abs(i) > _SMALL:
                    out.append(i)
        return out
