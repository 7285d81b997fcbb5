from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._flow import size_bound
from ._torch import enclosing_function, in_loop_body, positional, range_args, torch_function, walk_own
from .base import Invalid, Rule


class StackOfPerStepList(Rule):
    """``torch.stack``/``torch.cat`` of a list appended once per time step of the data.

    What it does:
        Flags ``torch.stack(outs)`` / ``torch.cat(outs)`` where ``outs`` was filled by
        ``outs.append(...)`` inside a ``for t in range(T)`` loop whose bound is a size read from
        a tensor (``T = x.shape[1]``, ``x.size(1)``, ``len(x)``).

    Why is this bad:
        Every step keeps its own tensor (and, in training, its graph) until the final stack, which
        then copies everything once more: peak memory is twice the output plus per-step
        overhead, and the Python loop launches T sets of small kernels. Both grow linearly with
        the sequence length, and at T = 400,000 the per-step overhead alone dominates.

    Example:
        outs = []
        for t in range(x.shape[1]):
            outs.append(step(x[:, t]))
        y = torch.stack(outs, 1)

    Use instead:
        Vectorize the step over T (one batched call), preallocate ``y = x.new_empty(...)`` and
        write ``y[:, t] = ...``, or reduce on the fly when only a summary is needed.
    """

    code = "TR103"
    title = "Per-time-step list stacked at the end"
    category = "memory-complexity"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "import torch\ndef f(x, K):\n    T = x.shape[1]\n    out = []\n    for t in range(T):\n        scores = []\n"
        "        for k in range(min(K, t + 1)):\n            scores.append(x[:, t - k])\n"
        "        out.append(torch.stack(scores).sum(0))\n    return out\n",
        "import torch\ndef f(x, K):\n    out = []\n    for k in range(K):\n        out.append(x[k])\n    return torch.stack(out)\n",
        "import torch\ndef f(xs):\n    return torch.cat([a for a in xs])\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    T = x.shape[1]\n    outs = []\n    for t in range(T):\n        outs.append(x[:, t] * 2)\n    return torch.stack(outs, 1)\n", line=7),
        Invalid("import torch\ndef f(x):\n    outs = []\n    for t in range(x.size(0)):\n        outs.append(x[t].exp())\n    return torch.cat(outs)\n", line=6),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        if tf not in ("stack", "cat", "concat", "concatenate", "vstack", "hstack"):
            return
        pos = positional(node)
        if not pos or not isinstance(pos[0].value, cst.Name):
            return
        name = pos[0].value.value
        fn = enclosing_function(self, node)
        scope = fn.body if fn is not None else self.ctx.module
        # loops that re-create the list on every iteration bound its length by the inner loops only
        resetting = set()
        for a in walk_own(scope, cst.Assign):
            if any(isinstance(t.target, cst.Name) and t.target.value == name for t in a.targets):
                resetting.update(id(x) for x in self.ancestors(a) if isinstance(x, cst.For))
        for c in walk_own(scope, cst.Call):
            f = c.func
            if not (isinstance(f, cst.Attribute) and f.attr.value == "append" and isinstance(f.value, cst.Name)
                    and f.value.value == name and in_loop_body(self, c)):
                continue
            for loop in self.ancestors(c):
                if isinstance(loop, cst.FunctionDef):
                    break
                if not isinstance(loop, cst.For) or id(loop) in resetting:
                    continue
                args = range_args(loop)
                if not args:
                    continue
                stop = args[0] if len(args) == 1 else args[1]
                b = size_bound(self, fn, stop)
                if b and b[0] and ".shape[" in b[0]:
                    self.report(
                        node,
                        problem=(f"`{self.code_for(node)}` joins a list appended once per step of a loop over "
                                 f"`{self.code_for(stop)}` (a size read from the data)."),
                        impact=("All per-step tensors stay alive until the join, which copies them again (2x peak "
                                "memory), and the loop costs one round of kernel launches per step: linear in T."),
                        fix=Fix(before=self.code_for(node),
                                after="# vectorize the step over T, or preallocate and write y[:, t] = ..."),
                        evidence={"loop_bound": b[0]},
                    )
                    return
