from __future__ import annotations

import re
from typing import Dict, List, Optional

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value
from ._context import is_evaluation_name
from ._flow import DETACHING_METHODS, called_only_under_no_grad, in_no_grad
from ._graph_terms import linear_terms, no_grad_with
from ._torch import function_facts, method_call, walk_own
from .base import Invalid, Rule

_LOSS_NAME = re.compile(r"loss|nll|objective|elbo|likelihood|criterion|cost|(^|_)obj(_|$)")


class NoGradLossTerm(Rule):
    """A term of a training loss is computed under ``torch.no_grad()``.

    What it does:
        Flags a ``with torch.no_grad():`` block whose result is an additive term of a loss that the function
        returns or calls ``.backward()`` on (``(log_z - gold).mean()``, ``ce + penalty``), next to terms that do
        carry a graph. Values used as targets inside a criterion (``mse(student(x), teacher_out)``), products
        (``logp * (r - baseline)``) and evaluation-only functions are not flagged.

    Why is this bad:
        A term with no graph is a constant: it changes the printed loss but not one gradient. When it
        depends on the trained parameters (a CRF/HMM log-partition, a normaliser, a regulariser) the
        optimiser only sees the other terms: ``log Z - score`` under ``no_grad`` just pushes the gold score
        up without bound and training diverges, silently.

    Example:
        gold = path_score(emissions, tags, trans)
        with torch.no_grad():
            log_z = log_partition(emissions, trans)
        return (log_z - gold).mean()

    Use instead:
        log_z = log_partition(emissions, trans)     # keep the normaliser in the graph
        return (log_z - gold).mean()
    """

    code = "TR310"
    title = "Loss term computed under no_grad gets no gradient"
    category = "gradient-flow"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\nimport torch.nn.functional as F\ndef loss_fn(student, teacher, x):\n    with torch.no_grad():\n"
        "        t = teacher(x)\n    return F.mse_loss(student(x), t)\n",
        "import torch\ndef evaluate_nll(model, x, y):\n    with torch.no_grad():\n        log_z = model.log_z(x)\n"
        "    return (log_z - model.score(x, y)).mean()\n",
        "import torch\ndef pg_loss(logp, r, critic, s):\n    with torch.no_grad():\n        b = critic(s)\n"
        "    return -(logp * (r - b)).mean()\n",
        "import torch\ndef st(z, q):\n    with torch.no_grad():\n        d = q - z\n    return z + d\n",
    ]
    INVALID = [
        Invalid("import torch\ndef crf_nll(emissions, tags, trans):\n    gold = score(emissions, tags, trans)\n"
                "    with torch.no_grad():\n        log_z = partition(emissions, trans)\n"
                "    return (log_z - gold).mean()\n", line=4),
        Invalid("import torch\ndef step(model, x, y, opt):\n    out = model(x)\n    with torch.no_grad():\n"
                "        reg = model.penalty()\n    loss = criterion(out, y) + 0.1 * reg\n    loss.backward()\n", line=4),
    ]

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        name = node.name.value.lower()
        if is_evaluation_name(name) or in_no_grad(self, node.body) or called_only_under_no_grad(self, node):
            return
        frozen: Dict[str, cst.With] = {}  # names bound only under no_grad -> the block
        for w in walk_own(node.body, cst.Assign):
            block = no_grad_with(self, w)
            for t in w.targets:
                if isinstance(t.target, cst.Name):
                    frozen[t.target.value] = block if block is not None and frozen.get(t.target.value, block) else None
        frozen = {k: v for k, v in frozen.items() if v is not None}
        if not frozen:
            return
        for expr, why in self._losses(node, name):
            terms = self._terms(node, expr, 0)
            hit = next((t for t in terms if isinstance(t, cst.Name) and t.value in frozen), None)
            live = [t for t in terms if not (isinstance(t, cst.Name) and t.value in frozen) and self._live(t)]
            if hit is None or not live:
                continue
            block = frozen[hit.value]
            self.report(
                block,
                problem=(f"`{hit.value}` is computed under `torch.no_grad()` ({self.where(block)}) and then added as a "
                         f"term of the loss `{self.code_for(expr)}` ({why}), next to `{self.code_for(live[0])}`."),
                impact=("The term is a constant to autograd: the parameters it depends on get no gradient from it and "
                        "the optimiser sees only the other terms (for a log-partition, training diverges)."),
                fix=Fix(before="with torch.no_grad():", after=f"# compute `{hit.value}` with autograd on"),
            )
            return

    def _losses(self, fn: cst.FunctionDef, name: str):
        loss_fn = bool(_LOSS_NAME.search(name)) or name in ("forward", "training_step", "compute_loss", "step")
        backwarded = {method_call(c)[0].value for c in walk_own(fn.body, cst.Call) if method_call(c)
                      and method_call(c)[1] == "backward" and isinstance(method_call(c)[0], cst.Name)}
        for r in walk_own(fn.body, cst.Return):
            vals = [e.value for e in r.value.elements] if isinstance(r.value, cst.Tuple) else [r.value]
            for v in vals:
                if v is not None and (loss_fn or self._reduced(v)):
                    yield v, "returned"
        for a in walk_own(fn.body, cst.Assign):
            t = a.targets[0].target if len(a.targets) == 1 else None
            if isinstance(t, cst.Name) and (t.value in backwarded or _LOSS_NAME.search(t.value.lower())):
                yield a.value, "backward is called on it" if t.value in backwarded else f"assigned to `{t.value}`"

    @staticmethod
    def _reduced(v) -> bool:
        mc = method_call(v)
        return bool(mc and mc[1] in ("mean", "sum"))

    def _terms(self, fn, expr, depth: int) -> List[cst.BaseExpression]:
        out: List[cst.BaseExpression] = []
        for t in linear_terms(self, expr):
            v = reaching_value(self, fn, t.value, t) if isinstance(t, cst.Name) and depth < 3 else None
            if isinstance(v, cst.BinaryOperation) and isinstance(v.operator, (cst.Add, cst.Subtract)) \
                    and not in_no_grad(self, v):
                out += self._terms(fn, v, depth + 1)  # nll = log_z - gold; return nll.mean()
            else:
                out.append(t)
        return out

    def _live(self, t) -> Optional[bool]:
        """A term that may carry a graph: a call or a name bound (outside no_grad) to a non-detached call."""
        if isinstance(t, cst.Name):
            fn = next((a for a in self.ancestors(t) if isinstance(a, cst.FunctionDef)), None)
            v = reaching_value(self, fn, t.value, t) if fn is not None else None
            if v is None:
                return t.value in function_facts(self, fn).params if fn is not None else False
            t = v
        mc = method_call(t) if isinstance(t, cst.Call) else None
        return isinstance(t, cst.Call) and not (mc and mc[1] in DETACHING_METHODS) and not in_no_grad(self, t)
