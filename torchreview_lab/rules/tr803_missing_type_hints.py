from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import is_overload_or_setter, public_defs
from .base import Invalid, Rule


class MissingTypeHints(Rule):
    """A public function has no type hints on its parameters or return value.

    What it does:
        Under the production standard, flags public functions and methods with unannotated
        parameters (``self``/``cls``/``*args``/``**kwargs`` aside) or no return annotation
        (``__init__`` aside). Once per function, naming what is missing.

    Why is this bad:
        Type checkers and IDEs cannot catch a ``list`` passed where a ``Tensor`` is expected or an
        ``Optional`` result used without a check, and readers cannot tell a tensor argument from a
        size or a module.

    Example:
        def segment_scores(emissions, lengths, K):

    Use instead:
        def segment_scores(emissions: Tensor, lengths: Tensor, K: int) -> Tensor:
    """

    code = "TR803"
    title = "Public function without type hints"
    category = "type-safety"
    severity = {"research": None, "production": "low"}
    VALID = [
        "from torch import Tensor\ndef f(x: Tensor, k: int = 2) -> Tensor:\n    return x * k\n",
        "def _f(x):\n    return x\n",
        "class A:\n    def __init__(self, n: int):\n        self.n = n\n",
    ]
    INVALID = [
        Invalid("def fit(model, data, steps: int) -> None:\n    pass\n", line=1),
        Invalid("class A:\n    def run(self, x: int):\n        return x\n", line=2),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        for fn, cls in public_defs(node):
            if is_overload_or_setter(self, fn):
                continue
            p = fn.params
            params = list(p.posonly_params) + list(p.params) + list(p.kwonly_params)
            if cls is not None and params and params[0].name.value in ("self", "cls"):
                params = params[1:]
            missing = [x.name.value for x in params if x.annotation is None]
            no_return = fn.returns is None and fn.name.value != "__init__"
            if not missing and not no_return:
                continue
            parts = []
            if missing:
                parts.append("parameters " + ", ".join(f"`{m}`" for m in missing[:6]) + (" ..." if len(missing) > 6 else ""))
            if no_return:
                parts.append("the return value")
            self.report(
                fn.name,
                problem=f"`{fn.name.value}` has no type hints for {' and '.join(parts)}.",
                impact=("Type checkers and IDEs cannot catch a wrong argument (a list for a Tensor, an int for a "
                        "module), and readers cannot tell tensors from sizes."),
                fix=Fix(before=f"def {fn.name.value}({', '.join(x.name.value for x in params)}):",
                        after=f"def {fn.name.value}({', '.join(x.name.value + ': ...' for x in params)}) -> ...:"),
            )
