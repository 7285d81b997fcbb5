from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import graph_function
from ._torch import enclosing_function, kwarg
from .base import Invalid, Rule

_CLI_NAMES = frozenset({"main", "cli", "run_cli", "__repr__", "__str__", "print_summary", "summary", "show",
                        "display", "pretty_print", "pprint", "report", "dump"})


# functions whose job is output: ``print_table``, ``show``, ``_dump_env``, ``log_metrics``
_OUTPUT_PREFIXES = ("print", "show", "dump", "display", "report", "log", "main", "summar", "pretty", "describe",
                    "debug", "verbose", "cli", "demo", "example")


class PrintInLibrary(Rule):
    """``print`` used for logging inside library functions.

    What it does:
        Under the production standard, flags the first ``print(...)`` in a function or method
        (once per function). Module-level prints (notebook cells, ``__main__`` blocks), prints
        with ``file=``, and functions whose job is output (``main``, ``__repr__``, ``summary``)
        are not flagged. Prints in ``forward`` are TR503.

    Why is this bad:
        ``print`` cannot be filtered by level, routed to a file or a tracker, or silenced by the
        caller; in multi-process training every rank prints. Metrics printed as text are lost to
        dashboards and cannot be compared across runs.

    Example:
        def train_epoch(model, loader):
            ...
            print("loss", loss.item())

    Use instead:
        logger = logging.getLogger(__name__)
        logger.info("loss %.4f", loss.item())   # or a metrics tracker (TensorBoard, W&B)
    """

    code = "TR704"
    title = "print used for logging in library code"
    category = "observability"
    severity = {"research": None, "production": "low"}
    VALID = [
        "print('hello')\n",
        "import sys\ndef f(x):\n    print(x, file=sys.stderr)\n",
        "def main():\n    print('done')\n",
        "def _dump_env_vars():\n    print('A=1')\n",
        "def f(x):\n    return x\nif __name__ == '__main__':\n    print(f(1))\n",
    ]
    INVALID = [
        Invalid("def train(model, xs):\n    for x in xs:\n        loss = model(x)\n        print('loss', loss)\n        print('again')\n", line=4),
        Invalid("class T:\n    def step(self):\n        print('step')\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if not (isinstance(node.func, cst.Name) and node.func.value == "print"):
            return
        if self.qnames(node.func) - {"builtins.print", "print"} or kwarg(node, "file") is not None:
            return
        fn = enclosing_function(self, node)
        if fn is None or graph_function(self, node) is not None:
            return
        name = fn.name.value.strip("_").lower()
        if fn.name.value in _CLI_NAMES or name.startswith(_OUTPUT_PREFIXES):
            return
        key = ("TR704", id(fn))
        if key in self.ctx.cache:
            return
        self.ctx.cache[key] = True
        self.report(
            node,
            problem=f"`{fn.name.value}` reports through `print(...)` instead of a logger or metrics tracker.",
            impact=("Output cannot be filtered by level, routed, or silenced by callers; every rank prints in "
                    "distributed runs, and printed metrics never reach dashboards."),
            fix=Fix(before=self.code_for(node),
                    after="logger = logging.getLogger(__name__)  # module level\nlogger.info(...)"),
        )
