from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import graph_function
from ._knowledge import TENSOR_FACTORIES
from ._syncs import SYNC_EXPLANATIONS, chain_methods, outer_of_chain, sync_cost, sync_method
from ._numerics import few_literal_trips, index_grown_in_loop
from ._torch import in_loop_body, in_raise, kwarg, method_call, torch_function
from .base import Invalid, Rule


_HOW_OFTEN = {"train": "on every training step", "eval": "once per evaluation batch", "loop": "on every loop step",
              "periodic": "on the loop steps its `if` selects",
              "copies": "on every loop step, on a value computed before it",
              "chase": "on every loop step, at an index read back by the previous step's sync",
              "few": "on each of the loop's few (literal) iterations"}


class SyncInLoop(Rule):
    """A host-device synchronisation runs on every loop step.

    What it does:
        Flags ``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()`` and ``.nonzero()`` inside a loop
        body (``.cpu().numpy()`` chains are reported once) when it runs once per step. A sync in the
        body of an epoch loop but outside the loop over batches it contains (directly or through a
        function of the document) runs once per epoch and is not reported. Severity: medium once per
        training step, or per iteration of another loop that computes what it syncs; low under a
        rarely-true guard (``if step % 50 == 0:``, periodic logging) and in a loop that reads values
        computed before it (``for v in metrics.values(): v.item()``: small copies, not stalls); once
        per evaluation batch (``correct += (pred == y).sum().item()``, the standard way to accumulate
        metrics) low in research and medium in production, where the stalls add up in eval jobs; low in
        loops of at most 100 literal iterations (``for step in range(50):`` in a demo); medium when the
        index comes from the previous step's sync (``path.append(bp[path[-1]].item())``, a backtrace).

    Why is this bad:
        On CUDA each of these blocks the host until every queued kernel has finished and then
        copies data back. Once per step, the GPU idles between steps while Python waits, and the
        loop runs at the speed of the round trip instead of the speed of the kernels.

    Example:
        for x in loader:
            y = model(x).cpu().numpy()
            total += loss.item()

    Use instead:
        outs = []
        for x in loader:
            outs.append(model(x).detach())   # stays on the device
            total += loss.detach()           # accumulate on the device
        y = torch.cat(outs).cpu().numpy()    # one sync after the loop
    """

    code = "TR404"
    title = "Host-device sync inside a loop"
    category = "performance-patterns"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef run(model, xs):\n    outs = [model(x).detach() for x in xs]\n    return torch.cat(outs).cpu().numpy()\n",
        "def total(losses):\n    s = 0\n    for l in losses:\n        s = s + l.detach()\n    return s.item()\n",
        "import torch\ndef seeds(rng, n):\n    for _ in range(n):\n        yield torch.empty((), dtype=torch.int64).random_(generator=rng).item()\n",
        "import torch\ndef order(n, g, epochs):\n    for _ in range(epochs):\n        yield from torch.randperm(n, generator=g).tolist()\n",
        "import torch\nclass M(torch.nn.Module):\n    def forward(self, xs):\n        for x in xs:\n            v = x.item()\n        return v\n",
        # once per epoch, outside the loop over batches
        "def fit(model, loader, opt, x_val):\n    for epoch in range(3):\n        for x in loader:\n"
        "            model(x).sum().backward()\n            opt.step()\n        print(model(x_val).mean().item())\n",
    ]
    INVALID = [
        Invalid("def step(model, batch):\n    for x in batch:\n        y = model(x).cpu().numpy()\n    return y\n", line=3),
        Invalid("def fit(losses):\n    t = 0.0\n    for loss in losses:\n        t += loss.item()\n    return t\n", line=4),
        Invalid("def fit(model, loader, opt):\n    for epoch in range(3):\n        for x in loader:\n"
                "            loss = model(x).sum()\n            loss.backward()\n            opt.step()\n"
                "            print(loss.item())\n", line=7),
        Invalid("import torch\ndef f(xs):\n    i = 0\n    while i < 3:\n        idx = torch.nonzero(xs[i])\n        i += 1\n    return idx\n", line=5),
        # a Viterbi backtrace: each index is the previous step's synced value, T round trips in a row
        Invalid("def backtrace(score, backptrs):\n    path = [score.argmax().item()]\n    for bp in reversed(backptrs):\n"
                "        path.append(bp[path[-1]].item())\n    return path[::-1]\n", line=4),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        meth = sync_method(self, node)
        if meth is None or not outer_of_chain(self, node) or not in_loop_body(self, node):
            return
        if in_raise(self, node):
            return  # only evaluated to build an error message
        if graph_function(self, node) is not None and meth in ("item", "tolist", "numpy", "nonzero"):
            return  # the TR5xx graph-break rules report these with the loop noted
        if self._fresh_cpu_tensor(node):
            return  # a tensor just created on the host: no device round trip
        if meth == "cpu" and self._loop_invariant_receiver(node):
            return  # TR403 reports the copy of a loop-invariant tensor
        where, severity = sync_cost(self, node)
        if where == "epoch":
            return  # once per pass over the data, outside the loop over batches
        if where == "copies" and index_grown_in_loop(self, node):
            where, severity = "chase", "medium"
        elif severity != "low" and few_literal_trips(self, node):
            where, severity = "few", "low"
        chain = chain_methods(self, node)
        calls = "".join(f".{c}()" for c in chain)
        why = "; ".join(SYNC_EXPLANATIONS[c] for c in dict.fromkeys(chain))
        self.report(
            node,
            problem=f"`{self.code_for(node)}` runs {_HOW_OFTEN[where]}: `{calls}` {why}.",
            impact=("Each step blocks the host until the GPU queue drains and copies data back: the GPU idles "
                    "between steps and throughput drops to the speed of the round trip."),
            fix=Fix(before=self.code_for(node),
                    after="# keep per-step values on the device (detach(), torch.stack/cat),\n"
                          "# convert once after the loop: torch.stack(vals).cpu().numpy()"),
            severity=severity,
            evidence={"chain": chain, "periodic": where == "periodic", "loop": where},
        )

    def _fresh_cpu_tensor(self, node: cst.Call) -> bool:
        cur = node
        while True:
            mc = method_call(cur)
            if mc is None or not isinstance(mc[0], cst.Call):
                break
            cur = mc[0]
            if isinstance(cur.func, cst.Attribute) and isinstance(cur.func.value, cst.Call):
                continue  # an in-place/method call on a tensor expression: keep walking to its root
            fname = torch_function(self, cur)
            if fname is not None:
                if fname in TENSOR_FACTORIES | {"from_numpy", "as_tensor", "randperm", "randint", "multinomial"}:
                    dev = kwarg(cur, "device")
                    return dev is None or (isinstance(dev.value, cst.SimpleString) and "cpu" in dev.value.value)
                return False
        return False

    def _loop_invariant_receiver(self, node: cst.Call) -> bool:
        from .tr403_transfer_in_loop import loop_invariant_name

        mc = method_call(node)
        return mc is not None and loop_invariant_name(self, node, mc[0]) is not None
