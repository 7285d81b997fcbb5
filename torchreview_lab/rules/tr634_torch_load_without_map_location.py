from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._bindings import may_precede
from ._torch import (dotted_name, enclosing_function, function_facts, kwarg, method_call, names_in, positional,
                     torch_function, walk, walk_own, with_keyword)
from .base import Invalid, Rule

_MOVES = frozenset({"to", "cuda", "cpu"})


class TorchLoadWithoutMapLocation(Rule):
    """``torch.load`` of weights without ``map_location`` in code that picks its device at run time.

    What it does:
        Flags ``torch.load(...)`` without ``map_location`` (keyword or second argument) when what it loads
        goes into a network, ``model.load_state_dict(ckpt)`` / ``load_state_dict(ckpt["model"])`` or a
        ``.to(device)`` / ``.cuda()`` / ``.cpu()`` of the loaded object, and the code chooses the device at run
        time: the function takes a ``device`` argument, or it (the script, for a load at top level) asks
        ``torch.cuda.is_available()`` or moves things with ``.to(device)`` / ``.cpu()``. A ``torch.load``
        that only reads data, or code hard-wired to one device, is left alone.

    Why is this bad:
        ``torch.load`` restores every tensor on the device it was saved from. A checkpoint written by a GPU
        job fails on a CPU-only host ("Attempting to deserialize object on a CUDA device"), and on a GPU
        host every process (each DDP rank, each serving worker) first materialises the whole checkpoint on
        ``cuda:0``, which can run out of memory there, before the weights are copied where they belong.

    Example:
        def load_model(path, device):
            model = Net()
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.to(device)

    Use instead:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        # or map_location=device
    """

    code = "TR634"
    title = "torch.load without map_location in device-portable code"
    category = "device-handling"
    severity = {"research": "medium", "production": "high"}
    VALID = [
        "import torch\ndef load(model, path, device):\n    sd = torch.load(path, map_location=device, weights_only=True)\n"
        "    model.load_state_dict(sd)\n    return model.to(device)\n",
        "import torch\ndef read(path, device):\n    data = torch.load(path, weights_only=True)\n    return len(data)\n",
        "import torch\nmodel = Net().cuda()\nmodel.load_state_dict(torch.load('m.pt', weights_only=True))\n",
        "import torch\ndef load(model, path, device):\n    model.load_state_dict(torch.load(path, 'cpu'))\n    model.to(device)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef load_model(path, device):\n    ckpt = torch.load(path, weights_only=True)\n"
                "    model = Net()\n    model.load_state_dict(ckpt['model'])\n    return model.to(device)\n", line=3),
        Invalid("import torch\ndevice = 'cuda' if torch.cuda.is_available() else 'cpu'\nmodel = Net().to(device)\n"
                "model.load_state_dict(torch.load('best.pt'))\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        if torch_function(self, node) not in ("load", "serialization.load") or kwarg(node, "map_location") is not None \
                or len(positional(node)) > 1 or any(a.star == "**" for a in node.args):
            return
        fn = enclosing_function(self, node)
        use = self._into_network(node, fn)
        why = self._device_chosen(fn) if use else None
        if why is None:
            return
        first = self.code_for(node)
        self.report(
            node,
            problem=(f"`{first}` restores the tensors on the device they were saved from, and the result goes {use}, "
                     f"while this code picks its device at run time ({why})."),
            impact=("A checkpoint saved by a GPU job fails to load on a CPU-only host, and on GPU hosts every process "
                    "first puts the whole checkpoint on cuda:0 (out of memory there), before it reaches its device."),
            fix=Fix(before=first, after=self.code_for(with_keyword(node, "map_location", cst.SimpleString('"cpu"')))),
        )

    def _into_network(self, node: cst.Call, fn) -> Optional[str]:
        """How the loaded object reaches a network: ``load_state_dict`` of it (or of a name holding it, or an
        item of that) or a device move of it."""
        scope = fn.body if fn is not None else self.ctx.module
        parent = self.parent(node)
        held = {dotted_name(t.target) for t in parent.targets} if isinstance(parent, cst.Assign) and parent.value is node else set()
        for c in walk_own(scope, cst.Call):
            mc = method_call(c)
            if not mc or mc[1] not in _MOVES | {"load_state_dict"}:
                continue
            subject = [a.value for a in c.args] if mc[1] == "load_state_dict" else [mc[0]]
            if any(s is node or any(n is node for n in walk(s)) or names_in(s) & held and self.line_of(c) > self.line_of(
                    node) and may_precede(self, node, c) for s in subject):
                return f"into `{self.code_for(c.func)}(...)`"
        return None

    def _device_chosen(self, fn) -> Optional[str]:
        """Why the function (or the script, for a load at top level) chooses its device at run time, or None."""
        if fn is not None and any("device" in p.lower() for p in function_facts(self, fn).params):
            return f"`{fn.name.value}` takes a device argument"
        for c in walk_own(fn.body if fn is not None else self.ctx.module, cst.Call):
            tf, mc = torch_function(self, c) or "", method_call(c)
            if tf.endswith("is_available") and "cuda" in tf or mc and not tf and (mc[1] == "cpu" and not c.args or mc[1] == "to"
                                                                                 and "device" in self.code_for(c).lower()):
                return f"`{self.code_for(c).splitlines()[0]}`"
        return None
