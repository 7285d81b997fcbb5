from __future__ import annotations

from typing import Iterator

import libcst as cst

from .base import Invalid, Rule


def _top_divisions(expr) -> Iterator[cst.BinaryOperation]:
    """``/`` operations that decide the value of ``expr`` (through + - * and parentheses, not calls)."""
    if isinstance(expr, cst.BinaryOperation):
        if isinstance(expr.operator, cst.Divide):
            yield expr
        if isinstance(expr.operator, (cst.Add, cst.Subtract, cst.Multiply, cst.Divide)):
            yield from _top_divisions(expr.left)
            yield from _top_divisions(expr.right)
    elif isinstance(expr, cst.UnaryOperation):
        yield from _top_divisions(expr.expression)


class TrueDivisionIndex(Rule):
    """True division ``/`` used where an integer index or size is needed.

    What it does:
        Flags ``/`` at the top of an index or slice bound (``x[n / 2]``, ``x[: T / 2]``) and in the
        arguments of ``range(...)``; the fix is floor division ``//``.

    Why is this bad:
        In Python 3 ``/`` always returns a float, even for ``4 / 2``. ``range(T / 2)`` raises
        TypeError, and indexing a list or tensor with a float raises (``IndexError: only
        integers, slices ... are valid indices``) on the path that reaches it, often only for
        some inputs.

    Example:
        mid = x[:, x.shape[1] / 2]

    Use instead:
        mid = x[:, x.shape[1] // 2]
    """

    code = "TR602"
    title = "True division in an index or range"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    autofix = True
    VALID = [
        "def f(x, n):\n    return x[n // 2]\n",
        "def f(x, n):\n    return x[int(n / 2)]\n",
        "def f(d, k):\n    return {k / 2: 1}\n",
        "def f(n):\n    return [i / 2 for i in range(n // 2)]\n",
    ]
    INVALID = [
        Invalid("def f(x, n):\n    return x[n / 2]\n", line=2, expected_fix="def f(x, n):\n    return x[n // 2]\n"),
        Invalid("def f(T):\n    for i in range(T / 2):\n        print(i)\n", line=2),
        Invalid("def f(x):\n    return x[:, : x.shape[1] / 2]\n", line=2),
    ]

    def visit_Subscript(self, node: cst.Subscript) -> None:
        # pandas ``.loc``/``.at`` accept float labels; type annotations never hold a division
        if isinstance(node.value, cst.Attribute) and node.value.attr.value in ("loc", "at"):
            return
        for e in node.slice:
            s = e.slice
            parts = [s.value] if isinstance(s, cst.Index) else [p for p in (s.lower, s.upper, s.step) if p is not None]
            for p in parts:
                for d in _top_divisions(p):
                    self._report(d, "an index")

    def visit_Call(self, node: cst.Call) -> None:
        if isinstance(node.func, cst.Name) and node.func.value == "range" and self.qnames(node.func) <= {"builtins.range"}:
            for a in node.args:
                for d in _top_divisions(a.value):
                    self._report(d, "a `range()` argument")

    def _report(self, div: cst.BinaryOperation, where: str) -> None:
        repl = div.with_changes(operator=cst.FloorDivide(whitespace_before=div.operator.whitespace_before,
                                                         whitespace_after=div.operator.whitespace_after))
        self.report(
            div,
            problem=f"`{self.code_for(div)}` is used as {where}, but `/` always returns a float in Python 3.",
            impact="Indexing or range() with a float raises TypeError/IndexError when this line runs.",
            replacement=repl,
        )
