from __future__ import annotations

import re
from typing import List, Optional

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_values
from ._context import bound_values
from ._torch import enclosing_function, method_call, torch_function, walk, walk_own
from .base import Invalid, Rule

_WRAPPERS = frozenset({"DistributedDataParallel", "DataParallel"})
# The document strips or handles the wrapper's prefix somewhere: its checkpoints are not assumed to be raw.
_STRIPS = re.compile(r"consume_prefix_in_state_dict_if_present|[\"']module\.[\"']|[\"']module[\"']")


class DDPWrapperStateDictSaved(Rule):
    """The state_dict of the ``DistributedDataParallel``/``DataParallel`` wrapper is saved, not the model's.

    What it does:
        Flags ``model.state_dict()`` saved by ``torch.save`` (directly, inside a dict or list, or through a name
        assigned such a dict or item-assigned into a saved one) when ``model`` holds a ``DistributedDataParallel``
        or ``DataParallel`` (any import form; ``model = DDP(model)`` included, also on only one branch) at that
        point. High when the document itself loads that checkpoint (the same key, or a ``torch.load`` result) into
        a model that is not wrapped. Quiet when the document strips or handles the ``module.`` prefix anywhere
        (``consume_prefix_in_state_dict_if_present``, a ``"module."`` string, ``getattr(model, "module", model)``).

    Why is this bad:
        The wrapper keeps the network as ``self.module``: every key of its state_dict starts with ``module.``.
        Loading the checkpoint into the plain model (for evaluation, export or serving, on one GPU or CPU) fails
        with missing/unexpected keys, or with ``strict=False`` silently loads nothing.

    Example:
        model = DDP(model, device_ids=[rank])
        ...
        torch.save({"model": model.state_dict()}, path)

    Use instead:
        torch.save({"model": model.module.state_dict()}, path)
    """

    code = "TR632"
    title = "Checkpoint saves the DDP wrapper's state_dict ('module.' keys)"
    category = "robustness"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\nfrom torch.nn.parallel import DistributedDataParallel as DDP\ndef main(net, rank):\n"
        "    model = DDP(net, device_ids=[rank])\n    torch.save(model.module.state_dict(), 'm.pt')\n",
        "import torch\nfrom torch.nn.parallel import DistributedDataParallel as DDP\ndef main(net, rank):\n"
        "    model = DDP(net, device_ids=[rank])\n    torch.save(net.state_dict(), 'm.pt')\n",
        "import torch\nfrom torch.nn.parallel import DistributedDataParallel as DDP\ndef main(net, rank):\n"
        "    model = DDP(net, device_ids=[rank])\n    torch.save(model.state_dict(), 'm.pt')\n"
        "def load(net, path):\n    sd = {k.replace('module.', ''): v for k, v in torch.load(path).items()}\n"
        "    net.load_state_dict(sd)\n",
        "import torch\ndef main(model, path):\n    torch.save(model.state_dict(), path)\n",
    ]
    INVALID = [
        Invalid("import torch\nfrom torch.nn.parallel import DistributedDataParallel as DDP\ndef main(model, rank, opt):\n"
                "    model = DDP(model.cuda(rank), device_ids=[rank])\n    for epoch in range(10):\n        train(model, opt)\n"
                "        if rank == 0:\n            torch.save({'model': model.state_dict(), 'epoch': epoch}, 'ckpt.pt')\n",
                line=8),
        Invalid("import torch\nimport torch.nn as nn\nclass Runner:\n    def __init__(self, net):\n"
                "        self.net = nn.DataParallel(net)\n    def save(self, path):\n        state = {}\n"
                "        state['net'] = self.net.state_dict()\n        torch.save(state, path)\n", line=8),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if mc is None or mc[1] != "state_dict" or node.args or not isinstance(mc[0], (cst.Name, cst.Attribute)):
            return
        save = self._saved_by(node)
        if save is None or not self._wrapped(mc[0], node) or _STRIPS.search(self.ctx.source or self.ctx.module.code):
            return
        recv, load = self.code_for(mc[0]), self._plain_load(node)
        self.report(
            node,
            problem=(f"`{recv}` holds a `DistributedDataParallel`/`DataParallel` wrapper here, so the state_dict that "
                     f"`{self.code_for(save.func)}` writes ({self.where(save)}) has every key prefixed with `module.`"
                     + (f"; `{self.code_for(load)}` ({self.where(load)}) loads it into an unwrapped model." if load else ".")),
            severity="high" if load is not None else None,
            impact=("Loading the checkpoint into the unwrapped model (evaluation, export, serving, single-GPU or CPU "
                    "runs) fails with missing/unexpected keys, or loads nothing with strict=False."),
            fix=Fix(before=self.code_for(node), after=f"{recv}.module.state_dict()"),
        )

    def _plain_load(self, node: cst.Call) -> Optional[cst.Call]:
        """A ``net.load_state_dict(...)`` of the document into a model that is not wrapped, reading the key the
        state_dict is saved under (``ckpt["model"]``) or, when it is saved bare, a ``torch.load`` result."""
        p = self.parent(node)
        key = self.code_for(p.key) if isinstance(p, cst.DictElement) else None
        a = p if isinstance(p, cst.Assign) else None
        t = a.targets[0].target if a is not None else None
        key = self.code_for(t.slice[0].slice.value) if isinstance(t, cst.Subscript) and isinstance(
            t.slice[0].slice, cst.Index) else key
        for c in walk(self.ctx.module, cst.Call):
            mc = method_call(c)
            if not (mc and mc[1] == "load_state_dict" and c.args) or self._wrapped(mc[0], c):
                continue
            arg = c.args[0].value
            reads = [self.code_for(x.slice[0].slice.value) for x in walk(arg, cst.Subscript)
                     if isinstance(x.slice[0].slice, cst.Index)]
            if key is not None and key.strip("'\"") in {r.strip("'\"") for r in reads} or key is None and any(
                    torch_function(self, x) == "load" for x in walk(arg, cst.Call)):
                return c
        return None

    def _wrapped(self, recv: cst.BaseExpression, at: cst.CSTNode) -> bool:
        """``recv`` may hold a DDP/DataParallel construction at ``at``."""
        fn = enclosing_function(self, at)
        vals: Optional[List[cst.BaseExpression]] = None
        if isinstance(recv, cst.Name):
            vals = reaching_values(self, fn, recv.value, at)
        if vals is None:
            vals = bound_values(self, fn, recv)
        return any(isinstance(v, cst.Call) and (torch_function(self, v) or "").rsplit(".", 1)[-1] in _WRAPPERS
                   for v in vals)

    def _saved_by(self, node: cst.Call) -> Optional[cst.Call]:
        """The ``torch.save`` call that writes ``node``'s value: as its argument, inside a dict/list/tuple
        literal argument, or through a name holding it (assigned it or item-assigned it) in this function."""
        child, holder = node, None
        for a in self.ancestors(node):
            if isinstance(a, cst.Call) and torch_function(self, a) == "save" and a.args and a.args[0].value is child:
                return a
            if isinstance(a, (cst.Arg, cst.DictElement, cst.Element, cst.Dict, cst.List, cst.Tuple)):
                child = a if isinstance(a, (cst.Dict, cst.List, cst.Tuple)) else child
                continue
            if isinstance(a, cst.Assign) and len(a.targets) == 1:
                t = a.targets[0].target
                holder = t.value if isinstance(t, cst.Subscript) else t
            break
        if not isinstance(holder, cst.Name):
            return None
        scope = enclosing_function(self, node) or self.ctx.module
        return next((c for c in walk_own(scope, cst.Call) if torch_function(self, c) == "save" and c.args
                     and isinstance(c.args[0].value, cst.Name) and c.args[0].value.value == holder.value
                     and self.line_of(c) >= self.line_of(node)), None)
