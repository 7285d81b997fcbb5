from __future__ import annotations

from typing import Dict, Optional, Tuple

import libcst as cst

from ..findings import Fix
from ._realcode import cpu_only_script, needed_on_host
from ._syncs import sync_cost, sync_method
from ._torch import enclosing_function, in_loop_body, module_functions, walk_own
from .base import Invalid, Rule


class SyncViaHelperInLoop(Rule):
    """A helper that forces a host-device sync is called on every loop step.

    What it does:
        Follows calls into the document's own functions (across notebook cells): when a loop body
        calls a function that, directly or through the functions it calls, runs ``.item()``,
        ``.tolist()``, ``.numpy()``, ``.cpu()`` or ``nonzero``, the call site is reported. The sync
        itself, seen inside the helper, is not in a loop, so no lexical rule can see it. A call that
        runs once per epoch is not reported: in the body of a loop that contains the loop over
        batches, or a call to a helper that itself loops over the batches (``train_one_epoch(...)``,
        ``evaluate(...)`` called once per epoch). Severity as TR404: low under a rarely-true guard,
        low (research) / medium (production) per evaluation batch, medium per training step. Not
        reported where the result must be a Python value anyway (``env.step(select_action(state))``);
        low in a script that never leaves the CPU (no ``.cuda()``, device or accelerator anywhere).

    Why is this bad:
        On CUDA each call blocks the host until the GPU queue drains and copies a value back: once
        per step, the GPU idles between steps. Moving the helper into another cell hides the cost
        but does not remove it.

    Example:
        def log_norm(h):
            return h.norm().item()

        for step in range(steps):
            norms.append(log_norm(h))

    Use instead:
        Return tensors from the helper (``h.norm().detach()``), collect them on the device, and
        convert once after the loop (``torch.stack(norms).tolist()``).
    """

    code = "TR406"
    title = "Helper that syncs with the host called once per loop step"
    category = "performance-patterns"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "def norm(h):\n    return h.norm().detach()\n\ndef run(hs):\n    return [norm(h) for h in hs]\n",
        "def norm(h):\n    return h.norm().item()\n\ndef run(h):\n    return norm(h)\n",
        "def norm(h):\n    return h.norm().item()\n\ndef norm2(h):\n    return norm(h)\n",
        "def to_host(x):\n    if isinstance(x, dict):\n        return {k: to_host(v) for k, v in x.items()}\n"
        "    return x.cpu()\n",
        # a helper that loops over the batches, called once per epoch
        "def evaluate(model, loader):\n    s = sum(model(x).sum() for x in loader)\n    return s.item()\n\n"
        "def fit(model, loader, val_loader, opt):\n    for epoch in range(3):\n        for x in loader:\n"
        "            model(x).sum().backward()\n            opt.step()\n        print(evaluate(model, val_loader))\n",
        # a gym environment takes a Python int: the sync is the point of the helper
        "def select_action(policy, s):\n    return policy(s).argmax().item()\n\ndef rollout(env, policy):\n"
        "    s = env.reset()\n    for t in range(1000):\n        s, r, done, _ = env.step(select_action(policy, s))\n",
    ]
    INVALID = [
        Invalid("def norm(h):\n    return h.norm().item()\n\ndef run(hs):\n    out = []\n    for h in hs:\n"
                "        out.append(norm(h))\n    return out\n", line=7),
        Invalid("import torch\ndef norm(h):\n    return h.norm().item()\n\nif __name__ == '__main__':\n"
                "    w = torch.randn(4, device='cuda')\n    for i in range(9):\n        print(norm(w * i))\n", line=8),
        Invalid("def inner(x):\n    return x.cpu().numpy()\n\ndef outer(x):\n    return inner(x) * 2\n\n"
                "for step in range(10):\n    v = outer(step)\n", line=8),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        self._functions = module_functions(self)
        self._memo: Dict[str, Optional[Tuple[str, str]]] = {}

    def _syncs(self, name: str, depth: int = 0) -> Optional[Tuple[str, str]]:
        """(function, call text) of a sync reached from ``name``, or None."""
        if name in self._memo:
            return self._memo[name]
        self._memo[name] = None  # recursion guard
        fn = self._functions.get(name)
        found = None
        if fn is not None and depth < 5:
            for call in walk_own(fn.body, cst.Call):
                if sync_method(self, call):
                    found = (name, self.code_for(call))
                    break
                callee = call.func.value if isinstance(call.func, cst.Name) else None
                if callee in self._functions and callee != name:
                    found = self._syncs(callee, depth + 1)
                    if found:
                        break
        self._memo[name] = found
        return found

    def _reaches(self, name: str, target: str) -> bool:
        """``target`` is ``name`` or a function that ``name`` calls, directly or not."""
        seen, todo = set(), [name]
        while todo:
            cur = todo.pop()
            if cur == target:
                return True
            if cur in seen or cur not in self._functions:
                continue
            seen.add(cur)
            todo.extend(c.func.value for c in walk_own(self._functions[cur].body, cst.Call)
                        if isinstance(c.func, cst.Name))
        return False

    def visit_Call(self, node: cst.Call) -> None:
        if not isinstance(node.func, cst.Name) or node.func.value not in self._functions:
            return
        if not in_loop_body(self, node):
            return
        caller = enclosing_function(self, node)
        if caller is not None and self._reaches(node.func.value, caller.name.value):
            return  # a recursive walk over a nested structure (``to_numpy`` of a dict): the copy is its job
        hit = self._syncs(node.func.value)
        if hit is None:
            return
        where, severity = sync_cost(self, node)
        if where == "epoch":
            return  # once per pass over the data: the helper's own per-batch syncs are TR404's
        where_fn, call = hit
        if needed_on_host(self, node):
            return  # ``env.step(select_action(s))``: the caller needs a Python value, on any device
        cpu = cpu_only_script(self)
        severity = "low" if cpu else severity
        via = "" if where_fn == node.func.value else f" (through `{where_fn}`)"
        self.report(
            node,
            problem=(f"`{node.func.value}(...)` is called on every loop step and forces a host-device sync "
                     f"inside it{via}: `{call}`."),
            impact=("This script never leaves the CPU, so today the call only reads host memory; on a GPU each step "
                    "would block until the queue drains." if cpu else
                    "Each step blocks the host until the GPU queue drains and copies a value back; the GPU idles "
                    "between steps, and the cost is invisible where the loop is written."),
            fix=Fix(before=self.code_for(node),
                    after=f"# make `{where_fn}` return a tensor (drop `.item()`/`.cpu()`), collect on the device,\n"
                          f"# and convert once after the loop"),
            severity=severity,
            evidence={"helper": where_fn, "sync": call, "loop": where},
        )
