from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import public_function
from ._torch import enclosing_function, function_facts, names_in
from .base import Invalid, Rule


class AssertValidatesInput(Rule):
    """``assert`` used to validate the arguments of a public function.

    What it does:
        Flags the first ``assert`` in a public function or method (not ``_private``, not nested,
        not a test) whose condition reads one of the function's parameters. Reported once per
        function.

    Why is this bad:
        ``python -O`` (and many deployment images) strip ``assert`` statements, so the check
        disappears exactly where bad input arrives; when it does fire, callers get an
        ``AssertionError`` instead of a ``ValueError``/``TypeError`` they can handle.

    Example:
        def forward_checked(x, weight):
            assert x.shape[-1] == weight.shape[0], "shape mismatch"

    Use instead:
        if x.shape[-1] != weight.shape[0]:
            raise ValueError(f"x has {x.shape[-1]} features, weight expects {weight.shape[0]}")
    """

    code = "TR702"
    title = "assert used to validate input"
    category = "error-handling"
    severity = {"research": None, "production": "low"}
    VALID = [
        "def f(x, w):\n    if x.shape[-1] != w.shape[0]:\n        raise ValueError('shape')\n    return x @ w\n",
        "def _helper(x):\n    assert x > 0\n    return x\n",
        "def test_thing(x):\n    assert x == 1\n",
        "def f(x):\n    y = x + 1\n    assert isinstance(CONFIG, dict)\n    return y\n",
    ]
    INVALID = [
        Invalid("def forward_checked(x, weight):\n    assert x.shape[-1] == weight.shape[0], 'shape mismatch'\n    return x @ weight\n", line=2),
        Invalid("class Model:\n    def forward(self, x):\n        assert x.dim() == 3\n        assert x.shape[0] > 0\n        return x\n", line=3),
    ]

    def visit_Assert(self, node: cst.Assert) -> None:
        fn = enclosing_function(self, node)
        if fn is None or not public_function(self, fn):
            return
        params = set(function_facts(self, fn).params) - {"self", "cls"}
        used = names_in(node.test) & params
        if not used:
            return
        key = ("TR702-reported", id(fn))
        if key in self.ctx.cache:
            return
        self.ctx.cache[key] = True
        test = self.code_for(node.test)
        self.report(
            node,
            problem=(f"`{fn.name.value}` validates its argument{'s' if len(used) > 1 else ''} "
                     f"{', '.join(f'`{u}`' for u in sorted(used))} with `assert {test}`."),
            impact=("`python -O` strips asserts, so the check vanishes in optimised deployments; when it fires, "
                    "callers get an AssertionError instead of a ValueError/TypeError they can handle."),
            fix=Fix(before=f"assert {test}", after=f"if not ({test}):\n    raise ValueError(\"...explain the expected input...\")"),
        )
