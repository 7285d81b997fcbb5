from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._context import attribute_values
from ._torch import (assigned_values, dotted_name, enclosing_function, is_method_call, method_call, positional,
                     torch_function, walk, walk_own)
from .base import Invalid, Rule

_NORMALISERS = {"softmax", "log_softmax", "logsumexp", "nn.functional.softmax", "nn.functional.log_softmax",
                "special.logsumexp"}
_NAN_GUARDS = {"nan_to_num", "nan_to_num_", "isnan", "isfinite", "isinf", "any", "all"}


def _is_neg_inf(rule, e) -> bool:
    code = rule.code_for(e).replace(" ", "").replace("'", '"')
    return code in ('float("-inf")', '-float("inf")', "-math.inf", "-torch.inf", "-np.inf", "-numpy.inf",
                    "float(\"-Inf\")", "-float(\"Inf\")")


_DIAGONAL_KEEPERS = frozenset({"triu", "tril", "eye"})


class NegInfMaskSoftmax(Rule):
    """``-inf`` masking feeds a softmax/logsumexp whose row may be fully masked.

    What it does:
        Flags ``softmax``/``log_softmax``/``logsumexp`` of a tensor filled with ``-inf`` by
        ``masked_fill`` (or ``torch.where``) when nothing in the function guards against a row
        that is masked everywhere (``nan_to_num``, an ``isnan``/``any`` check) and the mask is not
        built from a causal ``triu``/``tril`` mask or an ``eye`` (a query that always sees itself), which
        keep the diagonal.

    Why is this bad:
        A fully masked row is all ``-inf``: ``softmax`` returns NaN (0/0), ``logsumexp`` returns
        ``-inf`` and its gradient is NaN. Padding-only sequences, empty spans or a length of 0
        make this happen on real data, and the NaN then spreads to every parameter.

    Example:
        s = scores.masked_fill(~mask, float("-inf"))
        p = s.softmax(-1)

    Use instead:
        s = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)   # finite: rows stay defined
        # or p = torch.softmax(s, -1).nan_to_num(0.0) after checking mask.any(-1)
    """

    code = "TR208"
    title = "-inf mask meets softmax/logsumexp (NaN on fully masked rows)"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef attend(scores, pad, T):\n    allowed = pad[:, None, :] | torch.eye(T, dtype=torch.bool)\n"
        "    return scores.masked_fill(~allowed, float('-inf')).float().softmax(-1)\n",
        "import torch\ndef f(scores, mask):\n    s = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)\n    return s.softmax(-1)\n",
        "import torch\ndef f(scores, mask):\n    s = scores.masked_fill(~mask, float('-inf'))\n    return torch.softmax(s, -1).nan_to_num(0.0)\n",
        "import torch\ndef f(scores, T):\n    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)\n    s = scores.masked_fill(causal, float('-inf'))\n    return s.softmax(-1)\n",
        "import torch\nimport torch.nn as nn\nclass A(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
        "        self.register_buffer('bias', torch.tril(torch.ones(n, n)).view(1, 1, n, n))\n"
        "    def forward(self, att):\n        T = att.size(-1)\n"
        "        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))\n        return att.softmax(-1)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(scores, mask):\n    s = scores.masked_fill(~mask, float('-inf'))\n    return s.softmax(-1)\n", line=4),
        Invalid("import math, torch\ndef f(x, m):\n    x = torch.where(m, x, -math.inf)\n    return torch.logsumexp(x, dim=-1)\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        if tf in _NORMALISERS and positional(node):
            src = positional(node)[0].value
        elif is_method_call(self, node, {"softmax", "log_softmax", "logsumexp"}):
            src = method_call(node)[0]
        else:
            return
        fn = enclosing_function(self, node)
        mask = self._neg_inf_fill(src, fn)
        if mask is None:
            return
        scope = fn.body if fn is not None else self.ctx.module
        if any(is_method_call(self, c, _NAN_GUARDS) or torch_function(self, c) in _NAN_GUARDS
               for c in walk_own(scope, cst.Call)):
            return
        if self._causal(mask, fn):
            return
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` normalises `{self.code_for(src)}`, which was filled with -inf where "
                     f"`{self.code_for(mask)}` masks; nothing handles a row that is masked everywhere."),
            impact="A fully masked row gives NaN from softmax (0/0) and a NaN gradient from logsumexp, which spreads.",
            fix=Fix(before=self.code_for(node),
                    after="fill with torch.finfo(x.dtype).min instead of -inf, or .nan_to_num(0.0) the result"),
        )

    def _neg_inf_fill(self, e, fn, depth: int = 0) -> Optional[cst.BaseExpression]:
        """The mask when ``e`` is (assigned from) a -inf fill, else None."""
        if isinstance(e, cst.Name) and depth < 3:
            for v in assigned_values(self, fn, e.value):
                m = self._neg_inf_fill(v, fn, depth + 1)
                if m is not None:
                    return m
            return None
        if not isinstance(e, cst.Call):
            return None
        if is_method_call(self, e, {"float", "double", "to", "type_as", "contiguous"}):  # a dtype cast keeps the -inf
            return self._neg_inf_fill(method_call(e)[0], fn, depth + 1)
        tf = torch_function(self, e)
        pos = positional(e)
        if is_method_call(self, e, {"masked_fill"}) and len(e.args) == 2 and _is_neg_inf(self, e.args[1].value):
            return e.args[0].value
        if tf == "masked_fill" and len(pos) == 3 and _is_neg_inf(self, pos[2].value):
            return pos[1].value
        if tf == "where" and len(pos) == 3 and (_is_neg_inf(self, pos[2].value) or _is_neg_inf(self, pos[1].value)):
            return pos[0].value
        return None

    def _causal(self, mask, fn, depth: int = 0) -> bool:
        """The mask keeps the diagonal: built from ``triu``/``tril`` (causal) or ``eye`` (a query always sees
        itself: ``allowed & (padding | torch.eye(T))``), through the names it is made of (three steps)."""
        for c in walk(mask, cst.Call):
            if torch_function(self, c) in _DIAGONAL_KEEPERS or is_method_call(self, c, {"triu", "tril"}):
                return True
        if depth >= 3:
            return False
        attrs = {a.attr.value for a in walk(mask, cst.Attribute) if dotted_name(a.value) == "self"}
        if any(self._causal(v, fn, depth + 1) for a in attrs for v in attribute_values(self, mask, a)):
            return True  # self.mask = torch.tril(...), register_buffer("bias", torch.tril(...))
        return any(self._causal(v, fn, depth + 1) for n in {x.value for x in walk(mask, cst.Name)}
                   for v in assigned_values(self, fn, n) if v is not mask)
