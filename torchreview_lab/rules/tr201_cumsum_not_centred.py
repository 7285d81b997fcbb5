from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._flow import document_differences_subscripts, is_centred, returned_from
from ._numerics import centred, prefix_holder
from ._knowledge import EXACT_METHODS, EXACT_SOURCES, INTEGER_DTYPES, INTEGER_METHODS
from ._torch import (assigned_name, assigned_values, enclosing_function, is_method_call, kwarg, method_call, positional,
                     torch_function, walk)
from .base import Invalid, Rule

_INTEGERISH_NAMES = ("mask", "length", "lens", "idx", "index", "count", "offset", "ids", "position")


class CumsumNotCentred(Rule):
    """``cumsum`` over a long dimension of values that are not zero-centred.

    What it does:
        Flags ``torch.cumsum(x, dim)`` / ``x.cumsum(dim)`` on floating-point values that were not
        centred first (no ``x - x.mean(...)`` on the way in). Medium when the prefix sums are
        differenced to get window sums (in the same function, or returned to code that subtracts
        two entries of them); Low for a running sum that is never differenced.

    Why is this bad:
        The running sum grows as O(T * mean). float32 keeps ~7 significant digits, so a
        difference of two large prefix sums loses the small window sum: with 400,000 values of
        mean 10 the worst window error is 0.2 raw, versus 7e-6 after zero-centring. Results drift
        silently with sequence length.

    Example:
        c = torch.cumsum(scores, dim=1)
        window = c[:, t + k] - c[:, t]

    Use instead:
        centred = scores - scores.mean(dim=1, keepdim=True)
        c = torch.cumsum(centred, dim=1)   # add k * mean back where the absolute sum is needed
        # or accumulate in float64: torch.cumsum(scores, dim=1, dtype=torch.float64)
    """

    code = "TR201"
    title = "cumsum over a long dimension without zero-centring"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef f(x):\n    xc = x - x.mean(dim=1, keepdim=True)\n    return torch.cumsum(xc, dim=1)\n",
        "import torch\ndef f(x):\n    return torch.cumsum(x, dim=1, dtype=torch.float64)\n",
        "import torch\ndef f(mask):\n    return mask.long().cumsum(-1)\n",
        "import torch\ndef f(lengths):\n    return torch.cumsum(lengths, 0)\n",
        "import torch\ndef f(x):\n    return (x - x.mean(1, keepdim=True)).cumsum(1)\n",
        "def offsets(x):\n    return x.shape[-1] + 1 - x.new_ones(x.shape[-1]).cumsum(-1)\n",
        # centred by a per-sequence mean broadcast back over the summed axis
        "import torch\ndef f(x):\n    off = x.mean(dim=(1, 2))\n    return torch.cumsum(x - off[:, None, None], dim=1)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef seg(x, s, e):\n    c = torch.cumsum(x, dim=1)\n    return c.gather(1, e) - c.gather(1, s)\n", line=3),
        Invalid("def energy(x):\n    c = x.cumsum(dim=1)\n    return c[:, -1] - c[:, 0]\n", line=2),
        Invalid("from torch import cumsum\ndef f(scores):\n    return cumsum(scores.float(), 1)\n", line=3),
        # prefix sums padded with a leading zero, then differenced
        Invalid("import torch.nn.functional as F\ndef seg(x, s, e):\n    c = F.pad(x.cumsum(dim=1), (1, 0))\n"
                "    return c.gather(1, e) - c.gather(1, s)\n", line=3),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        if tf == "cumsum":
            pos = positional(node)
            arg = pos[0].value if pos else (kwarg(node, "input").value if kwarg(node, "input") else None)
        elif is_method_call(self, node, {"cumsum"}):
            arg = method_call(node)[0]
        else:
            return
        if arg is None or self._exact_dtype(node):
            return
        fn = enclosing_function(self, node)
        if self._centred_or_exact(arg, fn, depth=0):
            if is_centred(self, fn, arg) or centred(self, fn, arg):
                self.observe("centred-cumsum", "Prefix sums are taken over zero-centred values (cumsum keeps float32 precision over long sequences).")
            return
        arg_code = self.code_for(arg)
        differenced = self._differenced(node, fn)
        problem = f"`{self.code_for(node)}` accumulates `{arg_code}` without zero-centring it first"
        problem += "; the prefix sums are then differenced, which cancels the large running total." if differenced else "."
        self.report(
            node,
            problem=problem,
            impact=("In float32 the running sum grows as O(T * mean) and a difference of two prefix sums loses "
                    "the small window value (error ~0.2 at T=400,000 with mean 10, vs 7e-6 centred)."),
            fix=Fix(before=self.code_for(node),
                    after=f"centred = {arg_code} - {arg_code}.mean(dim=<seq dim>, keepdim=True)\n"
                          f"torch.cumsum(centred, dim=<seq dim>)  # or dtype=torch.float64"),
            evidence={"differenced": differenced},
            # the precision loss bites when prefix sums are differenced; a plain running sum is minor
            severity=None if differenced else "low",
        )

    def _exact_dtype(self, call: cst.Call) -> bool:
        dt = kwarg(call, "dtype")
        return dt is not None and self.code_for(dt.value).replace(" ", "") in INTEGER_DTYPES

    def _centred_or_exact(self, expr, fn, depth: int) -> bool:
        if is_centred(self, fn, expr, depth) or centred(self, fn, expr, depth):
            return True
        if isinstance(expr, cst.Comparison) or isinstance(expr, (cst.Integer,)):
            return True
        if isinstance(expr, cst.Call):
            mc = method_call(expr)
            if mc and mc[1] in INTEGER_METHODS:
                return True
            if mc and mc[1] == "to" and any(self.code_for(a.value).replace(" ", "") in INTEGER_DTYPES for a in expr.args):
                return True
            if mc and (mc[1] == "double" or mc[1] in EXACT_METHODS):
                return True
            if torch_function(self, expr) in EXACT_SOURCES:
                return True
        if isinstance(expr, cst.Name):
            if any(h in expr.value.lower() for h in _INTEGERISH_NAMES):
                return True
            if depth < 3:
                vals = assigned_values(self, fn, expr.value)
                return bool(vals) and all(self._centred_or_exact(v, fn, depth + 1) for v in vals)
        return False

    def _differenced(self, node: cst.Call, fn) -> bool:
        """The prefix sums are differenced: here (``c[..] - c[..]``), or they are returned and the
        document subtracts two subscripts of one tensor (``cum[:, e] - cum[:, s]`` in a helper). The
        sums may be kept padded with a leading zero (``F.pad(x.cumsum(1), (1, 0))``, ``torch.cat``)."""
        node = prefix_holder(self, node)
        name = assigned_name(self, node)
        scope = fn if fn is not None else self.ctx.module
        if name is not None:
            for b in walk(scope, cst.BinaryOperation):
                if isinstance(b.operator, cst.Subtract):
                    left = {n.value for n in walk(b.left, cst.Name)}
                    right = {n.value for n in walk(b.right, cst.Name)}
                    if name in left and name in right:
                        return True
        return fn is not None and returned_from(self, node, name, fn) and document_differences_subscripts(self)
