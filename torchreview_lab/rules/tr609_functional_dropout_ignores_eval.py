from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._context import is_module_class, only_in_mode
from ._torch import kwarg, positional, source_text, torch_function, with_arg_value
from .base import Invalid, Rule

# torch function -> (name of the mode flag, its position, the flag may be omitted (defaults to True))
_DROPOUTS = {f"nn.functional.{n}": ("training", 2, True) for n in (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")}
_DROPOUTS.update({n: ("train", 2, False) for n in ("dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout")})
_BATCH_NORM = {"nn.functional.batch_norm": ("training", 5, False)}
# Methods/classes whose names say the randomness is wanted at inference (Monte-Carlo dropout).
_ALWAYS_ON = ("mcdropout", "mc_dropout", "montecarlo", "monte_carlo", "bayes", "always")


class FunctionalDropoutIgnoresEval(Rule):
    """Functional dropout in an nn.Module that stays on after ``model.eval()``.

    What it does:
        In a method of an ``nn.Module`` subclass, flags ``F.dropout(x, p)`` (and ``dropout1d/2d/3d``,
        ``alpha_dropout``, ``feature_alpha_dropout``) called without a ``training=`` flag or with
        ``training=True``, ``torch.dropout(x, p, True)``, and ``F.batch_norm(..., training=True)``
        with running statistics. ``training=self.training``, ``False``, any variable, and calls under
        ``if self.training:`` are left alone. The autofix passes ``training=self.training``; a flag
        spelled ``training=True`` is reported without one (it may be deliberate Monte-Carlo dropout).

    Why is this bad:
        Unlike ``nn.Dropout``, the functional form does not read the module's mode: ``F.dropout``'s
        default is ``training=True``. After ``model.eval()`` dropout still zeroes activations, so
        validation metrics and inference outputs are random and wrong. A hard-coded
        ``batch_norm(training=True)`` keeps using batch statistics (and updating the running ones) in eval.

    Example:
        def forward(self, x):
            return F.dropout(self.fc(x), p=0.1)

    Use instead:
        def forward(self, x):
            return F.dropout(self.fc(x), p=0.1, training=self.training)
        # or a self.drop = nn.Dropout(0.1) submodule; name Monte-Carlo dropout as such (mc_dropout)
    """

    code = "TR609"
    title = "Functional dropout stays on in eval mode"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    autofix = True
    VALID = [
        "import torch.nn as nn\nimport torch.nn.functional as F\nclass M(nn.Module):\n    def forward(self, x):\n"
        "        return F.dropout(x, 0.1, training=self.training)\n",
        "import torch.nn as nn\nimport torch.nn.functional as F\nclass M(nn.Module):\n    def forward(self, x, training):\n"
        "        return F.dropout(x, 0.1, training) + F.dropout2d(x, training=False)\n",
        "import torch.nn.functional as F\ndef f(x, p, training):\n    return F.dropout(x, p, training=training)\n",
        "import torch.nn as nn\nimport torch.nn.functional as F\nclass M(nn.Module):\n    def forward(self, x):\n"
        "        if self.training:\n            x = F.dropout(x, 0.1)\n        return x\n",
        "import torch.nn as nn\nimport torch.nn.functional as F\nclass M(nn.Module):\n    def forward(self, x):\n"
        "        return F.batch_norm(x, None, None, training=True)\n",
        "import torch.nn as nn\nimport torch.nn.functional as F\nclass MCDropoutNet(nn.Module):\n    def forward(self, x):\n"
        "        return F.dropout(x, 0.1, training=True)\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\nimport torch.nn.functional as F\nclass M(nn.Module):\n    def forward(self, x):\n"
                "        return F.dropout(x, 0.1)\n", line=5,
                expected_fix="import torch.nn as nn\nimport torch.nn.functional as F\nclass M(nn.Module):\n    def forward(self, x):\n"
                "        return F.dropout(x, 0.1, training=self.training)\n"),
        Invalid("import torch\nfrom torch import nn\nclass M(nn.Module):\n    def forward(self, x):\n"
                "        return torch.dropout(x, 0.2, True)\n", line=5,
                expected_fix="import torch\nfrom torch import nn\nclass M(nn.Module):\n    def forward(self, x):\n"
                "        return torch.dropout(x, 0.2, self.training)\n"),
        Invalid("import torch as th\nclass M(th.nn.Module):\n    def encode(me, x):\n        h = th.nn.functional.dropout2d(x, p=0.5, inplace=False)\n"
                "        return h\n", line=4,
                expected_fix="import torch as th\nclass M(th.nn.Module):\n    def encode(me, x):\n"
                "        h = th.nn.functional.dropout2d(x, p=0.5, inplace=False, training=me.training)\n        return h\n"),
        Invalid("import torch.nn as nn\nfrom torch.nn.functional import batch_norm\nclass M(nn.Module):\n    def forward(self, x):\n"
                "        return batch_norm(x, self.mean, self.var, training=True)\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        spec = _DROPOUTS.get(tf) or _BATCH_NORM.get(tf)
        if spec is None or any(a.star for a in node.args):  # ``*args``/``**kw`` may carry the flag
            return
        flag_name, index, may_omit = spec
        method = self._module_method(node)
        if method is None:
            return
        me = method.params.params[0].name.value
        if only_in_mode(self, node, method, f"{me}.training"):
            return
        flag = kwarg(node, flag_name)
        pos = positional(node)
        if flag is None and len(pos) > index:
            flag = pos[index]
        if flag is None and not may_omit or flag is not None and not (
                isinstance(flag.value, cst.Name) and flag.value.value == "True"):
            return
        if tf in _BATCH_NORM:
            stats = kwarg(node, "running_mean") or (pos[1] if len(pos) > 1 else None)
            if stats is None or isinstance(stats.value, cst.Name) and stats.value.value == "None":
                return  # no running statistics: batch statistics are the only option
        mode = cst.parse_expression(f"{me}.training")
        if flag is None:  # append ``training=self.training`` after the last argument
            last = node.args[-1]
            added = f"{source_text(self, last.value)}, {flag_name}={me}.training"
            after = source_text(self, node, [(last.value, added)])
            repl = node.with_changes(args=[*node.args[:-1], last.with_changes(comma=cst.MaybeSentinel.DEFAULT),
                                           cst.Arg(keyword=cst.Name(flag_name), value=mode)])
        else:
            after = source_text(self, node, [(flag.value, f"{me}.training")])
            repl = with_arg_value(node, flag, mode)
        explicit = flag is not None and flag.keyword is not None  # ``training=True`` spelled out: no autofix
        call = source_text(self, node)
        call = call if "\n" not in call else f"{self.code_for(node.func)}(...)"
        how = "without a training flag (it defaults to True)" if flag is None else "with its mode flag hard-coded True"
        op = "batch norm uses batch statistics and updates its running ones" if tf in _BATCH_NORM else "dropout stays on"
        self.report(
            node,
            problem=(f"`{call}` is called {how} in `{method.name.value}` of an nn.Module: {op} after `model.eval()`."
                     + (" If that is deliberate (Monte-Carlo dropout), suppress this line."
                        if explicit and tf not in _BATCH_NORM else "")),
            impact=("Evaluation and inference outputs are random (or computed with the wrong statistics): validation "
                    "metrics and predictions are wrong, silently."),
            fix=Fix(before=source_text(self, node), after=after),
            replacement=None if explicit else repl,
        )

    def _module_method(self, node: cst.CSTNode) -> Optional[cst.FunctionDef]:
        """The method (of an nn.Module subclass, with a ``self``) whose body holds ``node``."""
        method: Optional[cst.FunctionDef] = None
        for a in self.ancestors(node):
            if isinstance(a, cst.FunctionDef):
                method = a
            elif isinstance(a, cst.ClassDef):
                if method is None or not method.params.params or not is_module_class(self, a):
                    return None
                names = (a.name.value + method.name.value).lower()
                if any(h in names for h in _ALWAYS_ON) or any(
                        self.code_for(d.decorator).endswith(("staticmethod", "classmethod"))
                        for d in method.decorators):
                    return None
                return method
        return None
