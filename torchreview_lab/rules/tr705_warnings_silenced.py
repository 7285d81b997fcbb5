from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._torch import kwarg, positional
from .base import Invalid, Rule

_FILTERS = frozenset({"warnings.filterwarnings", "warnings.simplefilter"})
_NARROWING = ("category", "message", "module", "lineno")


class WarningsSilenced(Rule):
    """All warnings are silenced globally.

    What it does:
        Flags ``warnings.filterwarnings("ignore")`` and ``warnings.simplefilter("ignore")`` with
        no ``category``/``message``/``module`` restriction, outside a
        ``with warnings.catch_warnings():`` block.

    Why is this bad:
        It hides every warning in the process, including PyTorch's deprecation, numerical and
        device warnings (``UserWarning: ... will be removed``, non-deterministic ops, broadcasting
        surprises) and those of every library imported later. Problems that would have been
        announced are discovered only as wrong results.

    Example:
        warnings.filterwarnings("ignore")

    Use instead:
        warnings.filterwarnings("ignore", category=FutureWarning, module="some_library")
        # or, around one call: with warnings.catch_warnings(): warnings.simplefilter("ignore")
    """

    code = "TR705"
    title = "All warnings silenced"
    category = "observability"
    severity = {"research": "low", "production": "medium"}
    VALID = [
        "import warnings\nwarnings.filterwarnings('ignore', category=DeprecationWarning)\n",
        "import warnings\nwith warnings.catch_warnings():\n    warnings.simplefilter('ignore')\n    x = 1\n",
        "import warnings\nwarnings.simplefilter('error')\n",
    ]
    INVALID = [
        Invalid("import warnings\nwarnings.filterwarnings('ignore')\n", line=2),
        Invalid("from warnings import simplefilter\ndef setup():\n    simplefilter(action='ignore')\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        q = self.qnames(node.func) & _FILTERS
        if not q:
            return
        pos = positional(node)
        action = kwarg(node, "action")
        act = action.value if action is not None else (pos[0].value if pos else None)
        if not (isinstance(act, cst.SimpleString) and act.evaluated_value == "ignore"):
            return
        if any(kwarg(node, k) is not None for k in _NARROWING) or len(pos) > 1:
            return
        for a in self.ancestors(node):
            if isinstance(a, cst.With) and "catch_warnings" in self.code_for(a.items[0].item):
                return
        self.report(
            node,
            problem=f"`{self.code_for(node)}` silences every warning in the process.",
            impact=("PyTorch deprecation, numerical and device warnings (and those of every library) are hidden: "
                    "problems that would have been announced surface only as wrong results."),
            fix=Fix(before=self.code_for(node),
                    after="warnings.filterwarnings(\"ignore\", category=<SpecificWarning>, module=\"<library>\")"),
        )
