from __future__ import annotations

from .base import Invalid, Rule


class SyntaxErrorRule(Rule):
    """A cell or file that does not parse.

    What it does:
        Reports a cell (or file) that Python cannot parse, once per cell, at the error's line.
        IPython magics and shell escapes are masked before parsing, so only real syntax errors
        count.

    Why is this bad:
        The cell raises ``SyntaxError`` when run; nothing in it can be reviewed. The other cells
        are still analysed.

    Example:
        def f(x:
            return x

    Use instead:
        def f(x):
            return x
    """

    code = "TR001"
    title = "Code does not parse"
    category = "robustness"
    severity = {"research": "high", "production": "high"}
    VALID = ["def f(x):\n    return x\n", "async def g():\n    await h()\n"]
    INVALID = [Invalid("def f(x:\n    return x\n", line=1), Invalid("x = 1\ny = (\n", line=2)]
