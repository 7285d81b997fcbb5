from __future__ import annotations

from typing import List, Optional

import libcst as cst

from ..findings import Fix
from ._torch import assigned_values, is_constant, is_method_call, walk_own
from .base import Invalid, Rule

_DETACHING = {"detach", "item", "tolist", "numpy"}


class DetachOnOneBranch(Rule):
    """``.detach()`` returned on one branch while other branches return graph-carrying tensors.

    What it does:
        Flags a function in which one ``return`` hands back ``x.detach()`` (directly or through a
        name assigned from ``.detach()``) while another ``return`` hands back an ordinary tensor
        expression that still carries the autograd graph.

    Why is this bad:
        Whether gradients flow now depends on a runtime condition. On the detached branch the
        caller's loss silently stops training everything upstream, with no error and no warning;
        the bug shows only as a model that learns less.

    Example:
        def normalized(t, frozen):
            if frozen:
                return t.detach()
            return t / t.norm()

    Use instead:
        Make the stop-gradient explicit and uniform (detach at the caller, or in every branch), or
        use ``torch.no_grad()`` around the computation that must not be trained, and document it.
    """

    code = "TR301"
    title = ".detach() on one return branch stops gradients silently"
    category = "gradient-flow"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "def f(x):\n    return x.detach()\n",
        "def f(x, c):\n    if c:\n        return x.detach()\n    return None\n",
        "def f(x, c):\n    if c:\n        return x.detach()\n    return x.detach() * 2\n",
        "def f(x, c):\n    if c:\n        y = x.detach()\n        return y\n    return 0.0\n",
    ]
    INVALID = [
        Invalid("def normalized(t, c):\n    if c:\n        return t.detach()\n    return t / t.norm()\n", line=3),
        Invalid("def g(t, c):\n    if c:\n        out = t.detach()\n    else:\n        return t * 2\n    return out\n", line=6),
    ]

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        returns: List[cst.Return] = [r for r in walk_own(node.body, cst.Return) if r.value is not None]
        if len(returns) < 2:
            return
        detached = [r for r in returns if self._is_detached(r.value, node, 0)]
        if not detached:
            return
        live = [r for r in returns if r not in detached and self._carries_graph(r.value, node)]
        if not live:
            return
        for r in detached:
            others = ", ".join(self.where(o) for o in live)
            self.report(
                r,
                problem=(f"`{node.name.value}` returns a detached tensor here but a graph-carrying tensor "
                         f"on another branch ({others})."),
                impact=("Whether gradients reach the inputs depends on a runtime condition: on this branch every "
                        "parameter upstream silently stops learning."),
                fix=Fix(before=self.code_for(r).strip(),
                        after="# keep gradients uniform: return the same kind of value on every branch;\n"
                              "# detach explicitly at the caller where a stop-gradient is intended"),
            )

    def _is_detached(self, expr: cst.BaseExpression, fn, depth: int) -> bool:
        if isinstance(expr, cst.Call) and is_method_call(self, expr, {"detach"}):
            return True
        if isinstance(expr, cst.Name) and depth < 3:
            vals = assigned_values(self, fn, expr.value)
            return bool(vals) and all(self._is_detached(v, fn, depth + 1) for v in vals)
        return False

    def _carries_graph(self, expr: cst.BaseExpression, fn) -> bool:
        if is_constant(expr) or isinstance(expr, (cst.Tuple, cst.List, cst.Dict, cst.Set, cst.Lambda)):
            return False
        if isinstance(expr, cst.Call):
            if is_method_call(self, expr, _DETACHING | {"size", "dim", "numel", "__len__"}):
                return False
            func = expr.func
            if isinstance(func, cst.Name) and func.value in {"len", "int", "float", "bool", "str", "tuple", "list", "dict"}:
                return False
        for call in walk_own(cst.Expr(expr) if not isinstance(expr, cst.CSTNode) else expr, cst.Call):
            if is_method_call(self, call, {"detach"}):
                return False
        # a tensor expression built from the function's parameters
        params = {p.name.value for p in fn.params.params}
        from ._torch import names_in

        return bool(names_in(expr) & (params | set(self._derived(fn))))

    def _derived(self, fn):
        from ._torch import function_facts

        facts = function_facts(self, fn)
        return facts.derived | set(facts.params)
