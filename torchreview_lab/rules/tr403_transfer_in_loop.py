from __future__ import annotations

from typing import Optional, Set

import libcst as cst

from ..findings import Fix
from ._loops import loop_level
from ._torch import (
    _target_names,
    enclosing_loops,
    in_loop_body,
    is_method_call,
    loop_targets,
    method_call,
    walk,
)
from .base import Invalid, Rule

_MOVES = frozenset({"to", "cuda", "cpu"})


def _assigned_in(loop: cst.CSTNode) -> Set[str]:
    out: Set[str] = set(loop_targets(loop))
    for n in walk(loop):
        if isinstance(n, cst.Assign):
            for t in n.targets:
                out |= set(_target_names(t.target))
        elif isinstance(n, (cst.AugAssign, cst.AnnAssign)) and isinstance(n.target, cst.Name):
            out.add(n.target.value)
        elif isinstance(n, (cst.For,)):
            out |= set(_target_names(n.target))
        elif isinstance(n, cst.NamedExpr) and isinstance(n.target, cst.Name):
            out.add(n.target.value)
        elif isinstance(n, cst.WithItem) and n.asname is not None:
            out |= set(_target_names(n.asname.name))
    return out


def loop_invariant_name(rule, node: cst.CSTNode, receiver: cst.BaseExpression) -> Optional[str]:
    """The receiver's name when it is a plain name that no enclosing loop (re)binds."""
    if not isinstance(receiver, cst.Name) or receiver.value in ("self", "cls"):
        return None
    name = receiver.value
    nearest = enclosing_loops(rule, node)
    loops = [lp for lp in nearest if isinstance(lp, (cst.For, cst.While))]
    if not loops or any(name in loop_targets(lp) for lp in nearest):
        return None  # no loop, or ``[t.to(device) for t in batch]``: a comprehension variable, new every time
    for lp in loops:
        if name in _assigned_in(lp):
            return None
    return name


class TransferInLoop(Rule):
    """The same tensor is copied between devices on every loop step.

    What it does:
        Flags ``x.to(device)``, ``x.cuda()`` and ``x.cpu()`` inside a loop body when ``x`` is not
        rebound by the loop: the same data is transferred again on every iteration. A copy in the
        body of an epoch loop but outside the loop over batches it contains (``val_x.to(device)``
        once per epoch, next to ``for xb in loader:``) runs once per pass over the data and is not
        reported.

    Why is this bad:
        Each call is a full copy across PCIe (and a host sync for ``.cpu()``), repeated for data
        that has not changed. It costs bandwidth and latency proportional to the number of steps
        for no benefit.

    Example:
        for step in range(steps):
            loss = criterion(model(x.to(device)), y.to(device))

    Use instead:
        x, y = x.to(device), y.to(device)   # once, before the loop
        for step in range(steps):
            loss = criterion(model(x), y)
    """

    code = "TR403"
    title = "Loop-invariant tensor transferred every step"
    category = "device-handling"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "def f(xs, device):\n    for x in xs:\n        x = x.to(device)\n    return x\n",
        "def f(x, device, steps):\n    x = x.to(device)\n    for _ in range(steps):\n        x = x * 2\n    return x\n",
        "def f(ctx, a, n):\n    for i in range(n):\n        t = ctx.to(ctx.mul(a, i), dtype=a.dtype)\n    return t\n",
        "def f(scale, groups):\n    for device, ts in groups.items():\n        s = scale.to(device)\n    return s\n",
        "def f(x, steps):\n    for i in range(steps):\n        x = x + 1\n        y = x.cpu()\n    return y\n",
        "def fit(net, loader, opt, xv, dev):\n    for ep in range(3):\n        for x in loader:\n"
        "            net(x).sum().backward()\n            opt.step()\n        print(net(xv.to(dev)))\n",
        # the comprehension variable is this iteration's batch, not a loop-invariant tensor
        "def fit(net, loader, opt, dev):\n    for batch in loader:\n        batch = [t.to(dev) for t in batch]\n"
        "        net(*batch).sum().backward()\n        opt.step()\n",
    ]
    INVALID = [
        Invalid("def train(model, x, y, device, steps):\n    for _ in range(steps):\n        out = model(x.to(device))\n    return out\n", line=3),
        Invalid("def f(model, batches, w, dev):\n    for b in batches:\n        ws = [w.to(dev) for _ in b]\n"
                "        model(b, ws)\n", line=3),
        Invalid("def ev(model, w, n):\n    r = []\n    for i in range(n):\n        r.append(model(i) * w.cpu())\n    return r\n", line=4),
    ]

    def _target_varies(self, node: cst.Call) -> bool:
        """``x.to(device)`` where the loop rebinds ``device``: a copy per device, not a repeat."""
        from ._torch import names_in

        used = set()
        for a in node.args:
            used |= names_in(a.value)
        for lp in enclosing_loops(self, node):
            if isinstance(lp, (cst.For, cst.While)) and used & _assigned_in(lp):
                return True
        return False

    def _device_target(self, node: cst.Call) -> bool:
        dev = [a for a in node.args if a.keyword is not None and a.keyword.value == "device"]
        if dev:
            return True
        pos = [a for a in node.args if a.keyword is None]
        if not pos:
            return False
        first = pos[0].value
        if isinstance(first, cst.SimpleString):
            return True
        if isinstance(first, (cst.Name, cst.Attribute)):
            text = self.code_for(first)
            return "dtype" not in text and not text.startswith(("torch.float", "torch.int", "torch.bool",
                                                                  "torch.half", "torch.double", "torch.long"))
        return False

    def visit_Call(self, node: cst.Call) -> None:
        meth = is_method_call(self, node, _MOVES)
        if meth is None or not in_loop_body(self, node):
            return
        if meth == "to" and not node.args:
            return
        if meth == "to" and not self._device_target(node):
            return  # a dtype cast or an unrelated ``.to`` method, not a transfer
        mc = method_call(node)
        name = loop_invariant_name(self, node, mc[0]) if mc else None
        if name is None or self._target_varies(node) or loop_level(self, node)[0] == "epoch":
            return
        call = self.code_for(node)
        self.report(
            node,
            problem=f"`{call}` copies `{name}`, which the loop never changes, on every iteration.",
            impact=("One full device copy per step for the same data (and a host sync for `.cpu()`): bandwidth "
                    "and latency grow with the number of steps for no benefit."),
            fix=Fix(before=call, after=f"{name}_dev = {call}  # once, before the loop\n# use {name}_dev inside the loop"),
        )
