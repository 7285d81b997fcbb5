from __future__ import annotations

import re
from typing import Optional

import libcst as cst

from ..findings import Fix
from ._torch import walk
from .base import Invalid, Rule

_CHECK_CALL = re.compile(r"(^|\.)(assert_close|assert_allclose|allclose|isclose|equal|assert_equal|"
                         r"assert_array_equal|assert_array_almost_equal|testmod|gradcheck|gradgradcheck|main)$")
_PERCENT_CELL = re.compile(r"^# %%", re.M)


class NotebookWithoutTests(Rule):
    """A notebook defines functions but never checks them.

    What it does:
        Under the production standard, flags a notebook (or a jupytext ``# %%`` percent script)
        that defines functions or classes while no cell contains an ``assert``, a
        ``torch.testing.assert_close``/``allclose`` comparison, a ``gradcheck``, or a call to a
        ``test_*``/``check_*`` function. Reported once, at the first definition.

    Why is this bad:
        Notebook code is re-run out of order and edited in place; without a cell that checks the
        functions against known answers (a brute-force reference, a tiny hand-computed case,
        shapes, gradients), a regression goes unnoticed until results are wrong.

    Example:
        # %%
        def viterbi(scores): ...
        # %%
        path = viterbi(scores)

    Use instead:
        # %%
        ref = brute_force(scores_small)
        torch.testing.assert_close(viterbi(scores_small), ref)
    """

    code = "TR806"
    title = "Notebook functions without a test cell"
    category = "testing"
    severity = {"research": None, "production": "low"}
    VALID = [
        "# %%\ndef double(x):\n    return 2 * x\n# %%\nassert double(2) == 4\n",
        "def double(x):\n    return 2 * x\n",
        "# %%\nimport torch\ndef f(x):\n    return x\n# %%\ntorch.testing.assert_close(f(torch.ones(2)), torch.ones(2))\n",
    ]
    INVALID = [
        Invalid("# %%\nimport torch\n# %%\ndef double(x):\n    return 2 * x\n# %%\ny = double(torch.ones(3))\n", line=4),
        Invalid("# %%\nclass Model:\n    pass\n# %%\nm = Model()\n", line=2),
    ]

    def _is_notebook(self, module: cst.Module) -> bool:
        if self.ctx.options.get("kind") == "notebook":
            return True
        return len(_PERCENT_CELL.findall(self.ctx.source or module.code)) >= 2  # a jupytext percent script

    def visit_Module(self, node: cst.Module) -> None:
        if not self._is_notebook(node):
            return
        first = self._first_definition(node)
        if first is None or self._has_check(node):
            return
        self.report(
            first.name,
            problem=("The notebook defines functions/classes (first: "
                     f"`{first.name.value}`) but no cell checks them (no assert, assert_close/allclose, "
                     "gradcheck or test_* call)."),
            impact=("Out-of-order re-runs and in-place edits break functions silently; without a check cell a "
                    "regression is found only when results are already wrong."),
            fix=Fix(before="# (no test cell)",
                    after="# %% a check cell\ntorch.testing.assert_close(fn(small_input), reference(small_input))"),
        )

    def _first_definition(self, module: cst.Module) -> Optional[cst.CSTNode]:
        for stmt in module.body:
            if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
                return stmt
        return None

    def _has_check(self, module: cst.Module) -> bool:
        for n in walk(module):
            if isinstance(n, cst.Assert):
                return True
            if isinstance(n, cst.FunctionDef) and n.name.value.startswith(("test", "check")):
                return True
            if isinstance(n, cst.Call):
                name = self.code_for(n.func)
                if _CHECK_CALL.search(name) or name.split(".")[-1].startswith(("test_", "check_")):
                    return True
        return False
