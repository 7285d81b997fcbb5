from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value, value_count
from ._torch import walk_own
from .base import Invalid, Rule

_FUNCTION_BASES = {"torch.autograd.Function", "torch.autograd.function.Function"}


def _method(cls: cst.ClassDef, name: str) -> Optional[cst.FunctionDef]:
    for s in cls.body.body:
        if isinstance(s, cst.FunctionDef) and s.name.value == name:
            return s
    return None


class AutogradFunctionGradCount(Rule):
    """A custom ``autograd.Function.backward`` returns the wrong number of gradients.

    What it does:
        Counts the inputs of ``forward`` (after ``ctx``; all of them when the class uses
        ``setup_context``) and the values each ``return`` of ``backward`` gives back, and reports
        a mismatch.

    Why is this bad:
        ``backward`` must return one gradient (or ``None``) per ``forward`` input. Too few raises
        ``RuntimeError: function ... returned an incorrect number of gradients`` at the first
        backward pass; extra values that are not ``None`` raise the same. Code that "works" in a
        forward-only test crashes in training.

    Example:
        class Scale(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, alpha):
                ctx.alpha = alpha
                return x * alpha
            @staticmethod
            def backward(ctx, g):
                return g * ctx.alpha

    Use instead:
            @staticmethod
            def backward(ctx, g):
                return g * ctx.alpha, None     # one entry per forward input
    """

    code = "TR306"
    title = "autograd.Function backward returns the wrong number of gradients"
    category = "gradient-flow"
    severity = {"research": "critical", "production": "critical"}
    _F2 = ("import torch\nclass G(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x, y):\n"
           "        return x + y\n    @staticmethod\n")
    VALID = [
        "import torch\nclass Scale(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x, alpha):\n        ctx.alpha = alpha\n        return x * alpha\n    @staticmethod\n    def backward(ctx, g):\n        return g * ctx.alpha, None\n",
        "from torch.autograd import Function\nclass Id(Function):\n    @staticmethod\n    def forward(ctx, x):\n        return x\n    @staticmethod\n    def backward(ctx, g):\n        return g\n",
        "import torch\nclass F2(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, *args):\n        return args[0]\n    @staticmethod\n    def backward(ctx, g):\n        return g\n",
        "import torch\nclass F3(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n        return x\n    @staticmethod\n    def backward(ctx, g):\n        return g, None\n",
        _F2 + "    def backward(ctx, *grads):\n        return grads\n",
        _F2 + "    def backward(ctx, g):\n        out = helper(g)\n        return out\n",
        _F2 + "    def backward(ctx, g):\n        out = (g, None)\n        return out\n",
    ]
    INVALID = [
        Invalid("import torch\nclass Scale(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x, alpha):\n        ctx.alpha = alpha\n        return x * alpha\n    @staticmethod\n    def backward(ctx, g):\n        return g * ctx.alpha\n", line=9),
        Invalid("from torch.autograd import Function\nclass Mul(Function):\n    @staticmethod\n    def forward(ctx, a, b, c):\n        ctx.save_for_backward(a, b)\n        return a * b\n    @staticmethod\n    def backward(ctx, g):\n        a, b = ctx.saved_tensors\n        return g * b, g * a\n", line=10),
        Invalid("import torch\nclass New(torch.autograd.Function):\n    @staticmethod\n    def forward(x, y):\n        return x + y\n    @staticmethod\n    def setup_context(ctx, inputs, output):\n        pass\n    @staticmethod\n    def backward(ctx, g):\n        return g, g, g\n", line=11),
        Invalid(_F2 + "    def backward(ctx, *grads):\n        all_grads = torch.stack(grads)\n"
                "        return all_grads[0]\n", line=9),
        Invalid(_F2 + "    def backward(ctx, g):\n        gx = g.clone()\n        return gx\n", line=9),
    ]

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if not any(self._is_function_base(b.value) for b in node.bases):
            return
        fwd, bwd = _method(node, "forward"), _method(node, "backward")
        if fwd is None or bwd is None:
            return
        p = fwd.params
        if isinstance(p.star_arg, cst.Param) or p.star_kwarg is not None:
            return
        params = list(p.posonly_params) + list(p.params) + list(p.kwonly_params)
        n_in = len(params) - (0 if _method(node, "setup_context") is not None else 1)
        bp = bwd.params
        grads = {p.name.value for p in list(bp.posonly_params) + list(bp.params)[1:]}
        if isinstance(bp.star_arg, cst.Param):
            grads.add("*" + bp.star_arg.name.value)
        for ret in walk_own(bwd.body, cst.Return):
            n_out = value_count(self, bwd, ret.value, grads)
            if n_out is None or n_out == n_in:
                continue
            lit = reaching_value(self, bwd, ret.value.value, ret.value) if isinstance(ret.value, cst.Name) else ret.value
            extra_none = n_out > n_in and isinstance(lit, (cst.Tuple, cst.List)) and all(
                isinstance(e.value, cst.Name) and e.value.value == "None" for e in lit.elements[n_in:])
            if extra_none:
                continue
            self.report(
                ret,
                problem=(f"`{node.name.value}.backward` returns {n_out} value(s) here, but `forward` takes {n_in} "
                         f"input(s): backward must return one gradient (or None) per forward input."),
                impact="The first backward pass raises RuntimeError (incorrect number of gradients); training crashes.",
                fix=Fix(before=self.code_for(ret).strip(),
                        after=f"return <{n_in} values: one gradient or None per forward input>"),
                evidence={"forward_inputs": n_in, "returned": n_out},
            )

    def _is_function_base(self, base) -> bool:
        return bool(self.qnames(base) & _FUNCTION_BASES) or self.code_for(base).replace(" ", "") in (
            "torch.autograd.Function", "autograd.Function")
