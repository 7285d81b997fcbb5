from __future__ import annotations

from typing import Set

import libcst as cst

from ..findings import Fix
from ._flow import NO_GRAD_CONTEXTS
from ._torch import torch_function, walk_own
from .base import Invalid, Rule

_EVAL_HINTS = ("eval", "predict", "infer", "generate", "sample", "decode", "test", "valid", "score", "metric",
               "frozen", "feature", "embed", "extract", "encode_frozen", "visual", "plot", "log")


class NoGradResultReturned(Rule):
    """A value computed under ``torch.no_grad()`` is returned to the caller.

    What it does:
        Flags functions that compute a result inside ``with torch.no_grad():`` (or
        ``inference_mode``) and return it, when the function's name does not say it is for
        evaluation or frozen features. Low severity: returning frozen features is often deliberate.

    Why is this bad:
        The result has no graph. If a caller trains through it, no gradient reaches the code
        inside the block and nothing raises: the affected parameters simply stop learning.

    Example:
        def project(self, x):
            with torch.no_grad():
                z = self.proj(x)
            return z

    Use instead:
        Compute outside ``no_grad`` when callers may train through the result; keep ``no_grad``
        in functions named and documented as evaluation / frozen-feature helpers (or return
        ``z.detach()`` to make the intent explicit).
    """

    code = "TR303"
    title = "Result computed under no_grad is returned"
    category = "gradient-flow"
    severity = {"research": "low", "production": "low"}
    VALID = [
        "import torch\ndef frozen_features(encoder, x):\n    with torch.no_grad():\n        feats = encoder(x)\n    return feats\n",
        "import torch\ndef evaluate(model, x):\n    with torch.no_grad():\n        out = model(x)\n    return out\n",
        "import torch\ndef project(layer, x):\n    with torch.no_grad():\n        z = layer(x)\n    return z.detach()\n",
    ]
    INVALID = [
        Invalid("import torch\ndef project(layer, x):\n    with torch.no_grad():\n        z = layer(x)\n    return z\n", line=5),
        Invalid("import torch\ndef forward(self, x):\n    with torch.no_grad():\n        return self.net(x)\n", line=4),
    ]

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        name = node.name.value.lower()
        if any(h in name for h in _EVAL_HINTS):
            return
        computed: Set[str] = set()
        for w in walk_own(node.body, cst.With):
            if not any(isinstance(i.item, cst.Call) and torch_function(self, i.item) in NO_GRAD_CONTEXTS for i in w.items):
                continue
            for n in walk_own(w.body):
                if isinstance(n, cst.Assign):
                    for t in n.targets:
                        if isinstance(t.target, cst.Name) and isinstance(n.value, cst.Call):
                            computed.add(t.target.value)
                elif isinstance(n, cst.Return) and isinstance(n.value, cst.Call):
                    self._report(n, self.code_for(n.value))
        if not computed:
            return
        for r in walk_own(node.body, cst.Return):
            if isinstance(r.value, cst.Name) and r.value.value in computed and not self._inside_with(r):
                self._report(r, r.value.value)

    def _inside_with(self, node) -> bool:
        return any(isinstance(a, cst.With) for a in self.ancestors(node))

    def _report(self, node, what: str) -> None:
        self.report(
            node,
            problem=f"`{what}` is computed under `torch.no_grad()` and returned to the caller without a graph.",
            impact="If a caller trains through this value, no gradient reaches the computation and nothing raises.",
            fix=Fix(before=self.code_for(node).strip(),
                    after="# compute outside no_grad if callers train through it, or return .detach() to make "
                          "frozen features explicit"),
        )
