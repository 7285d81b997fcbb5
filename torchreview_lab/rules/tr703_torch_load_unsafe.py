from __future__ import annotations

import libcst as cst

from ._torch import kwarg, torch_function, with_keyword
from .base import Invalid, Rule


class TorchLoadWithoutWeightsOnly(Rule):
    """``torch.load`` without ``weights_only=True``.

    What it does:
        Flags ``torch.load(...)`` calls that do not pass ``weights_only=True`` (missing, or
        explicitly ``False``). The autofix adds ``weights_only=True``.

    Why is this bad:
        With ``weights_only=False`` ``torch.load`` unpickles arbitrary Python objects: a crafted
        checkpoint runs arbitrary code on the machine that loads it. The default changed to
        ``True`` only in torch 2.6, so code without the argument is unsafe on older installs and
        changes behaviour between versions.

    Example:
        state = torch.load(path)

    Use instead:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # for trusted files with custom classes: torch.serialization.add_safe_globals([...])
    """

    code = "TR703"
    title = "torch.load without weights_only=True"
    category = "robustness"
    severity = {"research": "low", "production": "medium"}
    autofix = True
    VALID = [
        "import torch\nsd = torch.load('m.pt', weights_only=True)\n",
        "import pickle\nobj = pickle.load(open('x', 'rb'))\n",
        "def load(m, p):\n    return m.load(p)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef safe_load(path):\n    return torch.load(path)\n", line=3,
                expected_fix="import torch\ndef safe_load(path):\n    return torch.load(path, weights_only=True)\n"),
        Invalid("from torch import load\nsd = load('ckpt.pt', map_location='cpu')\n", line=2),
        Invalid("import torch as th\nsd = th.load('ckpt.pt', weights_only=False)\n", line=2),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if torch_function(self, node) not in ("load", "serialization.load"):
            return
        if any(a.star == "**" for a in node.args):
            return
        wo = kwarg(node, "weights_only")
        if wo is not None and not (isinstance(wo.value, cst.Name) and wo.value.value == "False"):
            return
        if wo is None:
            replacement = with_keyword(node, "weights_only", cst.Name("True"))
            problem = f"`{self.code_for(node)}` does not pass `weights_only=True`."
        else:
            replacement = None
            problem = f"`{self.code_for(node)}` explicitly allows arbitrary pickled objects."
        self.report(
            node,
            problem=problem,
            impact=("Unpickling a crafted checkpoint runs arbitrary code; before torch 2.6 this is the default, so "
                    "behaviour and safety depend on the installed version."),
            replacement=replacement,
            fix=None if replacement is not None else None,
        )
