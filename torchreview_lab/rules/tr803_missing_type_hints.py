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
        (``__init__`` aside). Once per top-level function, and once per class for its methods,
        naming what is missing.

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
        per_class = {}
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
            if cls is not None:
                per_class.setdefault(cls, []).append(fn)
                continue
            parts = []
            if missing:
                parts.append("parameters " + ", ".join(f"`{m}`" for m in missing[:6]) + (" ..." if len(missing) > 6 else ""))
            if no_return:
                parts.append("the return value")
            self._report(fn, f"`{fn.name.value}` has no type hints for {' and '.join(parts)}.",
                         f"def {fn.name.value}({', '.join(x.name.value for x in params)}):",
                         f"def {fn.name.value}({', '.join(x.name.value + ': ...' for x in params)}) -> ...:")
        for cls, fns in per_class.items():
            names = ", ".join(f"`{f.name.value}`" for f in fns[:6]) + (" ..." if len(fns) > 6 else "")
            self._report(fns[0], f"Public method{'s' if len(fns) > 1 else ''} of `{cls.name.value}` without complete "
                                 f"type hints: {names}.",
                         f"def {fns[0].name.value}(self, x):", f"def {fns[0].name.value}(self, x: Tensor) -> Tensor:")

    def _report(self, fn: cst.FunctionDef, problem: str, before: str, after: str) -> None:
        self.report(
            fn.name,
            problem=problem,
            impact=("Type checkers and IDEs cannot catch a wrong argument (a list for a Tensor, an int for a "
                    "module), and readers cannot tell tensors from sizes."),
            fix=Fix(before=before, after=after),
        )
