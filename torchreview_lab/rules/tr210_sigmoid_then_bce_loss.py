from __future__ import annotations

from typing import Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._context import self_attribute_values
from ._flow import in_no_grad
from ._torch import (assigned_values, enclosing_class, enclosing_function, is_method_call, kwarg, method_call, positional,
                     torch_function, walk, walk_own)
from .base import Invalid, Rule

_SIGMOIDS = frozenset({"sigmoid", "nn.functional.sigmoid", "special.expit"})
_BCE_FUNCTIONS = frozenset({"nn.functional.binary_cross_entropy"})
_BCE_MODULES = frozenset({"nn.BCELoss", "nn.modules.loss.BCELoss", "nn.modules.BCELoss"})
_SIGMOID_MODULES = frozenset({"nn.Sigmoid", "nn.modules.activation.Sigmoid", "nn.modules.Sigmoid"})
_MOVES = frozenset({"to", "cuda", "cpu", "train", "eval", "float", "double", "half"})
_SEQUENTIAL = frozenset({"nn.Sequential", "nn.modules.container.Sequential"})
# Shape and dtype ops between the sigmoid and the loss do not change the problem.
_SHAPE_METHODS = frozenset({"squeeze", "view", "reshape", "flatten", "unsqueeze", "float", "double", "to", "view_as",
                            "reshape_as", "contiguous", "ravel"})


class SigmoidThenBCELoss(Rule):
    """``BCELoss`` applied to a ``sigmoid`` output instead of ``BCEWithLogitsLoss`` on the logits.

    What it does:
        Flags ``F.binary_cross_entropy(torch.sigmoid(z), y)``, ``nn.BCELoss()(z.sigmoid(), y)`` and
        ``crit = nn.BCELoss(); p = torch.sigmoid(model(x)); crit(p, y)`` (the probability and the
        criterion followed through assignments in the same function, class or notebook), also
        when ``p`` comes from an ``nn.Sigmoid()`` module, an ``nn.Sequential`` ending in one, or a
        model of a class in the same file whose ``forward`` returns a sigmoid on every path. Losses
        computed under ``no_grad`` (evaluation) are not flagged. The inline functional and module
        forms are rewritten to the ``_with_logits`` versions.

    Why is this bad:
        In float32 ``sigmoid(z)`` rounds to exactly 1.0 for z > ~17 (float16: ~8) and to tiny
        values or 0 far below zero; ``BCELoss`` then clamps ``log`` at -100, so a confidently wrong
        prediction contributes a capped loss and a zero or wrong gradient: learning stalls on
        the examples that matter most. ``BCEWithLogitsLoss`` computes the same loss from the
        logits with the log-sum-exp trick, exactly over the whole range, in one kernel, and also
        takes ``pos_weight`` for imbalanced labels.

    Example:
        loss = F.binary_cross_entropy(torch.sigmoid(logits), y)

    Use instead:
        loss = F.binary_cross_entropy_with_logits(logits, y)
        # or nn.BCEWithLogitsLoss(pos_weight=...)(logits, y); apply sigmoid only for predictions
    """

    code = "TR210"
    title = "sigmoid followed by BCELoss instead of BCEWithLogitsLoss"
    category = "numerical-stability"
    severity = {"research": "medium", "production": "medium"}
    autofix = True
    VALID = [
        "import torch.nn.functional as F\ndef f(z, y):\n    return F.binary_cross_entropy_with_logits(z, y)\n",
        "import torch.nn as nn\ndef f(p, y):\n    return nn.BCELoss()(p, y)\n",
        "import torch\nimport torch.nn as nn\ndef f(model, x, y):\n    crit = nn.BCELoss()\n    p = torch.sigmoid(model(x))\n"
        "    preds = (p > 0.5).float()\n    return crit(preds.clamp(1e-6, 1 - 1e-6), y)\n",
        "import torch\nimport torch.nn.functional as F\ndef f(z, y):\n    return F.mse_loss(torch.sigmoid(z), y)\n",
        "import torch\nimport torch.nn.functional as F\ndef ev(z, y):\n    with torch.no_grad():\n        return F.binary_cross_entropy(z.sigmoid(), y)\n",
    ]
    INVALID = [
        Invalid("import torch\nimport torch.nn.functional as F\ndef f(z, y):\n    return F.binary_cross_entropy(torch.sigmoid(z), y, reduction='sum')\n",
                line=4, expected_fix="import torch\nimport torch.nn.functional as F\ndef f(z, y):\n"
                                     "    return F.binary_cross_entropy_with_logits(z, y, reduction='sum')\n"),
        Invalid("import torch.nn as nn\ndef f(z, y, w):\n    return nn.BCELoss(weight=w)(z.sigmoid(), y)\n", line=3,
                expected_fix="import torch.nn as nn\ndef f(z, y, w):\n    return nn.BCEWithLogitsLoss(weight=w)(z, y)\n"),
        Invalid("import torch as th\nfrom torch import nn\ncrit = nn.BCELoss()\ndef step(model, x, y):\n"
                "    p = th.sigmoid(model(x)).squeeze(1)\n    return crit(p, y)\n", line=6),
        Invalid("import torch\nimport torch.nn.functional as F\ndef f(z, y):\n    return F.binary_cross_entropy(torch.sigmoid(z + 1).view(-1), y)\n",
                line=4, expected_fix="import torch\nimport torch.nn.functional as F\ndef f(z, y):\n"
                                     "    return F.binary_cross_entropy_with_logits((z + 1).view(-1), y)\n"),
        Invalid("import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.fc = nn.Linear(4, 1)\n        self.act = nn.Sigmoid()\n        self.crit = nn.BCELoss()\n    def loss(self, x, y):\n"
                "        return self.crit(self.act(self.fc(x)), y)\n", line=9),
        Invalid("import torch\nfrom torch import nn\nclass Net(nn.Module):\n    def forward(self, x):\n        return torch.sigmoid(self.fc(x))\n"
                "model = Net().to('cuda')\ncriterion = nn.BCELoss()\nfor x, y in loader:\n    loss = criterion(model(x), y)\n", line=9),
        Invalid("import torch.nn as nn\nnet = nn.Sequential(nn.Linear(8, 1), nn.Sigmoid())\nloss_fn = nn.BCELoss()\n"
                "loss = loss_fn(net(x), y)\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        kind = self._bce_kind(node)
        pos = positional(node)
        inp = (pos[0] if pos else kwarg(node, "input")) if kind else None
        if inp is None or in_no_grad(self, node):
            return  # evaluation: the capped loss value matters less than the training gradients flagged elsewhere
        found = self._sigmoid_input(enclosing_function(self, node), inp.value)
        if found is None:
            return
        how, logits, inline = found
        fixed = node.with_changes(args=[a.with_changes(value=logits) if a is inp else a for a in node.args]) \
            if logits is not None else node
        if kind == "function" and isinstance(node.func, cst.Attribute):
            fixed = fixed.with_changes(func=node.func.with_changes(attr=cst.Name("binary_cross_entropy_with_logits")))
        elif kind == "inline-module" and isinstance(node.func.func, cst.Attribute):
            fixed = fixed.with_changes(func=node.func.with_changes(
                func=node.func.func.with_changes(attr=cst.Name("BCEWithLogitsLoss"))))
        safe = inline and logits is not None and fixed.func is not node.func
        after = self.code_for(fixed) if fixed.func is not node.func else (
            f"{self.code_for(fixed)}  # with {self.code_for(node.func)} = nn.BCEWithLogitsLoss()" if kind == "criterion"
            else f"F.binary_cross_entropy_with_logits({self.code_for(logits) if logits is not None else 'logits'}, ...)")
        if logits is None:
            after += "  # on the logits: drop the model's final sigmoid, apply it only for predictions"
        self.report(
            node,
            problem=f"`{self.code_for(node)}` computes binary cross-entropy on {how}, not on the logits.",
            impact=("sigmoid rounds to exactly 1.0 above z ~ 17 in float32 (~8 in float16) and BCELoss clamps log at -100: "
                    "confidently wrong predictions get a capped loss and vanishing or wrong gradients."),
            fix=Fix(before=self.code_for(node), after=after),
            replacement=fixed if safe else None,
        )

    def _bce_kind(self, node: cst.Call) -> Optional[str]:
        if torch_function(self, node) in _BCE_FUNCTIONS:
            return "function"
        if isinstance(node.func, cst.Call) and torch_function(self, node.func) in _BCE_MODULES:
            return "inline-module"
        if isinstance(node.func, cst.Name) or isinstance(node.func, cst.Attribute) and \
                isinstance(node.func.value, cst.Name) and node.func.value.value == "self":
            vals = self._values(enclosing_function(self, node), node.func)
            if vals and all(isinstance(v, cst.Call) and torch_function(self, v) in _BCE_MODULES for v in vals):
                return "criterion"  # crit = nn.BCELoss(); self.criterion = nn.BCELoss()
        return None

    def _values(self, fn, ref):
        """What a name (in the function, else the module) or ``self.attr`` (in the class) was assigned."""
        if isinstance(ref, cst.Name):
            return assigned_values(self, fn, ref.value) or assigned_values(self, None, ref.value)
        cls = enclosing_class(self, ref)
        return list(self_attribute_values(self, cls).get(ref.attr.value, [])) if cls is not None else []

    def _sigmoid_input(self, fn, expr, depth: int = 0) -> Optional[Tuple[str, Optional[cst.BaseExpression], bool]]:
        """``(description, logits, inline)`` when ``expr`` is a sigmoid output, possibly reshaped;
        ``logits`` is the same expression without the sigmoid (None when it cannot be written)."""
        chain = []
        while isinstance(expr, cst.Call) and is_method_call(self, expr, _SHAPE_METHODS):
            chain.append(expr)
            expr = method_call(expr)[0]
        if isinstance(expr, cst.Name) and depth < 4:
            vals = assigned_values(self, fn, expr.value) or assigned_values(self, None, expr.value)
            inner = self._sigmoid_input(fn, vals[0], depth + 1) if len(vals) == 1 else None
            return (f"`{expr.value}` = {inner[0]}", inner[1], False) if inner else None
        if not isinstance(expr, cst.Call):
            return None
        z = None
        if torch_function(self, expr) in _SIGMOIDS and len(positional(expr)) == 1 and len(expr.args) == 1:
            z = positional(expr)[0].value
        elif is_method_call(self, expr, {"sigmoid"}) and not expr.args:
            z = method_call(expr)[0]
        elif expr.args and (isinstance(expr.func, cst.Call) and torch_function(self, expr.func) in _SIGMOID_MODULES
                            or self._module_kinds(fn, expr.func) == {"sigmoid"}):
            z = expr.args[0].value  # nn.Sigmoid()(z), self.sigmoid(z)
        elif self._module_kinds(fn, expr.func) == {"sequential-sigmoid"}:
            return f"the output of `{self.code_for(expr.func)}`, an nn.Sequential ending in nn.Sigmoid()", None, False
        elif self._module_kinds(fn, expr.func) == {"model-sigmoid"}:
            return f"the output of `{self.code_for(expr.func)}`, whose `forward` returns a sigmoid", None, False
        else:
            return None
        desc = f"`{self.code_for(expr)}`"
        if chain and not isinstance(z, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)):
            z = z.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()]) if not z.lpar else z
        for c in reversed(chain):  # re-apply the reshapes to the logits
            z = c.with_changes(func=c.func.with_changes(value=z))
        return desc, z, depth == 0

    def _module_kinds(self, fn, func) -> set:
        """``{"sigmoid"}`` when ``func`` (a name or ``self.attr``) is an ``nn.Sigmoid()``,
        ``{"sequential-sigmoid"}`` for an ``nn.Sequential(..., nn.Sigmoid())``."""
        if not (isinstance(func, cst.Name) or isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name)
                and func.value.value == "self"):
            return set()
        if isinstance(func, cst.Name) and func.value == "self":  # self(x) in a model whose forward ends in sigmoid
            cls = enclosing_class(self, func)
            return {"model-sigmoid"} if cls is not None and cls.name.value in self._sigmoid_models() else set()
        out = set()
        for v in self._values(fn, func):
            while isinstance(v, cst.Call) and is_method_call(self, v, _MOVES):
                v = method_call(v)[0]  # Net().to(device)
            if isinstance(v, cst.Call) and isinstance(v.func, cst.Name) and v.func.value in self._sigmoid_models():
                out.add("model-sigmoid")
                continue
            tf = torch_function(self, v) if isinstance(v, cst.Call) else None
            last = positional(v)[-1].value if tf in _SEQUENTIAL and positional(v) else None
            out.add("sigmoid" if tf in _SIGMOID_MODULES else "sequential-sigmoid" if isinstance(last, cst.Call)
                    and torch_function(self, last) in _SIGMOID_MODULES else "other")
        return out

    def _sigmoid_models(self) -> set:
        """Names of the document's classes whose ``forward`` returns a sigmoid on every path."""
        key = ("tr210-sigmoid-models",)
        if key not in self.ctx.cache:
            self.ctx.cache[key] = set()  # guards the recursion through _sigmoid_input
            out = set()
            for cls in walk(self.ctx.module, cst.ClassDef) if self.ctx.module is not None else ():
                fwd = next((f for f in cls.body.body if isinstance(f, cst.FunctionDef) and f.name.value == "forward"), None)
                rets = [r.value for r in walk_own(fwd.body, cst.Return)] if fwd is not None else []
                if rets and all(r is not None and self._sigmoid_input(fwd, r) for r in rets):
                    out.add(cls.name.value)
            self.ctx.cache[key] = out
        return self.ctx.cache[key]
