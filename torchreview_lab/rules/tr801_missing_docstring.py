from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import DOCUMENTED_OVERRIDES, doc_assigned_names, docstring_of, is_overload_or_setter, public_defs
from .base import Invalid, Rule


class MissingDocstring(Rule):
    """A public function or class has no docstring.

    What it does:
        Under the production standard, flags public top-level functions and classes without a
        docstring, and once per public class its undocumented public methods (listed in one
        finding). Dunders, ``_private`` names, nested functions, tests, property setters and
        well-known overrides (``forward``, ``extra_repr`` ...) of a documented class are skipped.

    Why is this bad:
        Users of a tensor API need to know what it computes, the expected shapes and dtypes and
        what it raises; without a docstring they must read the implementation, and IDEs and the
        generated reference show nothing.

    Example:
        def segment_scores(emissions, lengths):
            ...

    Use instead:
        def segment_scores(emissions, lengths):
            \"\"\"Score every segment: (batch, T, C) emissions, (batch,) lengths -> (batch, T, K, C).\"\"\"
    """

    code = "TR801"
    title = "Public API without a docstring"
    category = "documentation"
    severity = {"research": None, "production": "low"}
    VALID = [
        "def f(x):\n    \"\"\"Doubles x.\"\"\"\n    return 2 * x\n",
        "def _f(x):\n    return x\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    \"\"\"A model.\"\"\"\n    def __init__(self):\n        super().__init__()\n    def forward(self, x):\n        return x\n",
        "class Conv:\n    def __init__(self):\n        pass\nConv.__doc__ = 'A convolution.'\n",
    ]
    INVALID = [
        Invalid("def fit(model, data):\n    return model\n", line=1),
        Invalid("class Head:\n    \"\"\"A head.\"\"\"\n    def score(self, x):\n        return x\n    def decode(self, x):\n        return x\n", line=3),
        Invalid("class Head:\n    pass\n", line=1),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        undocumented = {}
        assigned = doc_assigned_names(node)
        for fn, cls in public_defs(node):
            qual = fn.name.value if cls is None else f"{cls.name.value}.{fn.name.value}"
            if docstring_of(fn) or is_overload_or_setter(self, fn) or qual in assigned:
                continue
            if cls is None:
                self._report(fn, f"Public function `{fn.name.value}` has no docstring.")
                continue
            if fn.name.value in DOCUMENTED_OVERRIDES and docstring_of(cls):
                continue
            undocumented.setdefault(cls, []).append(fn)
        for stmt in node.body:
            if isinstance(stmt, cst.ClassDef) and not stmt.name.value.startswith(("_", "Test")) and not docstring_of(stmt) \
                    and stmt.name.value not in assigned:
                self._report(stmt, f"Public class `{stmt.name.value}` has no docstring.")
        for cls, fns in undocumented.items():
            names = ", ".join(f"`{f.name.value}`" for f in fns[:6]) + (" ..." if len(fns) > 6 else "")
            self._report(fns[0], f"Public method{'s' if len(fns) > 1 else ''} of `{cls.name.value}` without a "
                                 f"docstring: {names}.")

    def _report(self, node, problem: str) -> None:
        self.report(
            node.name,
            problem=problem,
            impact=("Callers must read the implementation to learn what it computes, the expected shapes and "
                    "dtypes and what it raises; IDEs and the generated reference show nothing."),
            fix=Fix(before=f"def {node.name.value}(...):" if isinstance(node, cst.FunctionDef) else f"class {node.name.value}:",
                    after='    """One line on what it does.\n\n    Args: shapes and dtypes of tensor arguments.\n'
                          '    Returns: shape of the result.  Raises: ValueError when ..."""'),
        )
