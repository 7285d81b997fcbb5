from __future__ import annotations

from typing import Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._context import self_attribute_values
from ._torch import (assigned_values, dotted_name, enclosing_class, enclosing_function, function_facts, kwarg,
                     method_call, positional, source_text, torch_function)
from .base import Invalid, Rule

# What each loss expects as its input (first argument), by the last part of its torch name.
_EXPECTS = {"cross_entropy": "logits", "CrossEntropyLoss": "logits", "binary_cross_entropy_with_logits": "binary logits",
            "BCEWithLogitsLoss": "binary logits", "nll_loss": "log-probabilities", "NLLLoss": "log-probabilities",
            "kl_div": "log-probabilities", "KLDivLoss": "log-probabilities", "ctc_loss": "log-probabilities",
            "CTCLoss": "log-probabilities"}
_PRODUCERS = {"softmax": "softmax", "sigmoid": "sigmoid", "expit": "sigmoid", "log_softmax": "log_softmax",
              "Softmax": "softmax", "Sigmoid": "sigmoid", "LogSoftmax": "log_softmax"}
# log_softmax is right for the log-prob losses and harmless for cross_entropy (log_softmax is idempotent).
_WRONG = {"logits": ("softmax", "sigmoid"), "log-probabilities": ("softmax", "sigmoid"),
          "binary logits": ("softmax", "sigmoid", "log_softmax")}
# Ops that keep probabilities probabilities (shape changes, copies, dtype, clamping).
_TRANSPARENT = frozenset({"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute", "transpose",
                          "float", "double", "to", "clone", "cpu", "cuda", "view_as", "reshape_as", "t", "clamp",
                          "clamp_min", "clip"})


def _last(tf: Optional[str]) -> str:
    return tf.rsplit(".", 1)[-1] if tf else ""


class ProbabilitiesIntoLogitLoss(Rule):
    """Probabilities fed to a loss that applies its own softmax/log (a "double softmax").

    What it does:
        Flags ``F.cross_entropy``/``nn.CrossEntropyLoss``/``BCEWithLogitsLoss`` whose input is
        ``softmax``/``sigmoid`` output, and ``F.nll_loss``/``F.kl_div``/``F.ctc_loss`` (and their modules)
        whose input is probabilities instead of log-probabilities. The input is followed through
        assignments in the same function (or notebook), reshapes, criteria built as ``crit = ...`` or
        ``self.crit = ...``, ``nn.Softmax`` modules and an ``nn.Sequential`` ending in one.

    Why is this bad:
        ``cross_entropy`` applies ``log_softmax`` itself, so the loss optimised is not cross-entropy: it
        is bounded and its gradient vanishes as the softmax saturates. ``nll_loss``/``kl_div`` read their
        input as log-probabilities. Nothing fails: the model trains slowly or to a worse optimum.

    Example:
        loss = F.cross_entropy(F.softmax(logits, dim=-1), target)
        loss = F.nll_loss(F.softmax(logits, dim=-1), target)

    Use instead:
        loss = F.cross_entropy(logits, target)
        loss = F.nll_loss(F.log_softmax(logits, dim=-1), target)
    """

    code = "TR607"
    title = "Probabilities passed to a loss that expects logits or log-probabilities"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    autofix = True
    _H = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
    VALID = [
        _H + "def f(z, y):\n    return F.cross_entropy(z, y) + F.nll_loss(F.log_softmax(z, dim=-1), y)\n",
        _H + "def f(s, t):\n    return F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction='batchmean')\n",
        _H + "def f(z, y):\n    p = torch.sigmoid(z)\n    return F.binary_cross_entropy(p, y)\n",
        _H + "def f(z, t):\n    return F.cross_entropy(z, F.softmax(t, dim=-1))\n",
        _H + "def f(z, y, flag):\n    p = z\n    if flag:\n        p = z.softmax(-1)\n    return F.cross_entropy(p, y)\n",
    ]
    INVALID = [
        Invalid(_H + "def f(z, y):\n    return F.cross_entropy(F.softmax(z, dim=-1), y)\n", line=5,
                expected_fix=_H + "def f(z, y):\n    return F.cross_entropy(z, y)\n"),
        Invalid(_H + "def f(z, y):\n    return F.nll_loss(F.softmax(z, dim=-1), y)\n", line=5,
                expected_fix=_H + "def f(z, y):\n    return F.nll_loss(F.log_softmax(z, dim=-1), y)\n"),
        Invalid("import torch as th\nfrom torch.nn import CrossEntropyLoss\ndef f(z, y):\n    probs = th.softmax(z, 1)\n"
                "    crit = CrossEntropyLoss()\n    return crit(probs.view(-1, 3), y)\n", line=6),
        Invalid(_H + "def f(z, y):\n    return nn.CrossEntropyLoss()(torch.softmax(z, -1), y)\n", line=5),
        Invalid(_H + "def f(s, t):\n    return F.kl_div(input=s.softmax(-1), target=t.softmax(-1))\n", line=5,
                expected_fix=_H + "def f(s, t):\n    return F.kl_div(input=s.log_softmax(-1), target=t.softmax(-1))\n"),
        Invalid(_H + "class M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))\n        self.loss = nn.CrossEntropyLoss()\n"
                "    def step(self, x, y):\n        out = self.net(x)\n        return self.loss(out, y)\n", line=11),
        Invalid(_H + "def f(z, y):\n    return F.binary_cross_entropy_with_logits(torch.sigmoid(z), y)\n", line=5,
                expected_fix=_H + "def f(z, y):\n    return F.binary_cross_entropy_with_logits(z, y)\n"),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        loss = self._loss_of(node)
        arg = kwarg(node, "input") or kwarg(node, "log_probs") or next(iter(positional(node)), None)
        if loss is None or arg is None:
            return
        expects = _EXPECTS[loss]
        found = self._produced(arg.value, enclosing_function(self, node), self.line_of(node), 0)
        if found is None or found[0] not in _WRONG[expects]:
            return
        kind, producer = found
        fix, safe = self._fix(node, arg, producer, kind, expects)
        what = {"softmax": "softmax probabilities", "sigmoid": "sigmoid probabilities", "log_softmax": "log-probabilities"}
        does = {"logits": "applies log_softmax to it", "binary logits": "applies a sigmoid to it"}
        self.report(
            producer if safe else node,
            problem=(f"`{self.code_for(node)}` receives {what[kind]} (`{self.code_for(producer)}`), but `{loss}` "
                     f"expects {expects} and {does.get(expects, 'reads it as log-probabilities')}."),
            impact=("The loss optimised is not the intended objective: its gradient vanishes as the probabilities "
                    "saturate, so the model trains slowly or to a worse optimum, without any error."),
            fix=fix, replacement=producer if safe else None,
        )

    def _loss_of(self, call: cst.Call) -> Optional[str]:
        tf = torch_function(self, call)
        if tf is not None:
            name = _last(tf)
            return name if name in _EXPECTS and name[0].islower() and (tf.startswith("nn.") or tf == name) else None
        built = self._construction(call.func, enclosing_function(self, call))
        name = _last(torch_function(self, built)) if built is not None else ""
        return name if name in _EXPECTS and name[0].isupper() else None

    def _construction(self, expr, fn) -> Optional[cst.Call]:
        """The one ``Cls(...)`` call that built ``expr`` (a call, a name or ``self.attr``)."""
        if isinstance(expr, cst.Call):
            return expr
        vals = []
        if isinstance(expr, cst.Name):
            vals = assigned_values(self, fn, expr.value) if fn is not None else []
            if not vals and (fn is None or expr.value not in function_facts(self, fn).params):
                vals = assigned_values(self, None, expr.value)
        elif isinstance(expr, cst.Attribute) and dotted_name(expr.value) == "self" and enclosing_class(self, expr):
            vals = self_attribute_values(self, enclosing_class(self, expr)).get(expr.attr.value, [])
        return vals[0] if len(vals) == 1 and isinstance(vals[0], cst.Call) else None

    def _produced(self, expr, fn, use_line: int, depth: int) -> Optional[Tuple[str, cst.Call]]:
        """``(kind, producing call)`` when ``expr`` is softmax/sigmoid/log_softmax output."""
        if depth > 4:
            return None
        if isinstance(expr, cst.Name):
            vals = assigned_values(self, fn, expr.value) if fn is not None else assigned_values(self, None, expr.value)
            if not vals or not any(self.line_of(v) < use_line for v in vals) or fn is None and len(vals) > 1:
                return None
            if fn is not None and expr.value in function_facts(self, fn).params and not all(
                    self.parent(self.parent(self.parent(v))) is fn.body for v in vals):
                return None  # a parameter replaced conditionally: it may still hold logits
            got = [self._produced(v, fn, use_line, depth + 1) for v in vals]
            return got[0] if None not in got and len({g[0] for g in got}) == 1 else None
        if isinstance(expr, cst.Subscript):
            return self._produced(expr.value, fn, use_line, depth + 1)
        if not isinstance(expr, cst.Call):
            return None
        tf = torch_function(self, expr)
        if tf is not None:
            kind = _PRODUCERS.get(_last(tf)) if _last(tf)[:1].islower() else None
            return (kind, expr) if kind else None
        mc = method_call(expr)
        head = (dotted_name(mc[0]) or "").split(".")[0] if mc else ""
        if mc and head != "self" and head not in self.ctx.names.aliases:  # not scipy.special.softmax, self.softmax
            if mc[1] in ("softmax", "sigmoid", "log_softmax"):
                return (mc[1], expr)
            if mc[1] in _TRANSPARENT:
                return self._produced(mc[0], fn, use_line, depth + 1)
        module = self._construction(expr.func, fn)  # nn.Softmax(1)(x); self.net(x), an nn.Sequential ending in one
        last = self._last_layer(module) if module is not None else None
        kind = _PRODUCERS.get(_last(torch_function(self, last))) if last is not None else None
        return (kind, expr) if kind else None

    def _last_layer(self, module: cst.Call) -> Optional[cst.Call]:
        if _last(torch_function(self, module)) == "Sequential":
            a = module.args[-1] if module.args else None
            return a.value if a is not None and not a.star and isinstance(a.value, cst.Call) else None
        return module if _last(torch_function(self, module))[:1].isupper() else None

    def _fix(self, node, arg, producer, kind: str, expects: str) -> Tuple[Fix, bool]:
        """The fix, and whether it is a safe autofix (an inline softmax/sigmoid call rewritten in place)."""
        module = self._construction(producer.func, enclosing_function(self, node))
        if module is not None and torch_function(self, producer) is None:  # a module does it: change the module
            last = self._last_layer(module)
            if expects == "log-probabilities" and kind == "softmax" and isinstance(last.func, cst.Attribute):
                after = source_text(self, module, [(last.func.attr, "LogSoftmax")])
            elif last is not module and expects != "log-probabilities":
                after = f"{self.code_for(module.func)}({', '.join(self.code_for(a.value) for a in module.args[:-1])})"
            else:
                after = f"{self.code_for(node.func)}(...)  # pass the {expects}, not {kind} output"
            return Fix(before=source_text(self, module), after=after), False
        mc = method_call(producer)
        inner = (mc[0] if torch_function(self, producer) is None else
                 (kwarg(producer, "input") or next(iter(positional(producer)), arg)).value)
        if expects == "log-probabilities":
            rename = kind == "softmax" and isinstance(producer.func, cst.Attribute)
            fixed = source_text(self, producer, [(producer.func.attr, "log_softmax")]) if rename else None
            advice = fixed or f"torch.log_softmax({self.code_for(inner)}, dim=-1)"
        else:  # drop a softmax before cross_entropy, a sigmoid before BCE-with-logits (a sigmoid before CE: say so)
            fixed = source_text(self, inner) if kind == "softmax" or expects == "binary logits" else None
            advice = self.code_for(inner)
        if producer is arg.value and fixed is not None:
            return Fix(before=source_text(self, producer), after=fixed), True
        return Fix(before=self.code_for(node), after=self.code_for(node.with_changes(args=[
            a.with_changes(value=cst.parse_expression(advice)) if a is arg else a for a in node.args]))), False
