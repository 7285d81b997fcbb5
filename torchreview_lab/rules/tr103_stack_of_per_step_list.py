from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._flow import const_int, size_bound
from ._realcode import recurrence_feeds
from ._torch import (assigned_values, enclosing_function, function_facts, in_loop_body, positional, range_args,
                     torch_function, walk, walk_own)
from .base import Invalid, Rule


class StackOfPerStepList(Rule):
    """``torch.stack``/``torch.cat`` of a list appended once per time step of the data.

    What it does:
        Flags ``torch.stack(outs)`` / ``torch.cat(outs)`` where ``outs`` was filled by
        ``outs.append(...)`` inside a ``for t in range(T)`` loop whose bound is a size read from
        a tensor (``T = x.shape[1]``, ``x.size(1)``, ``len(x)`` of a tensor ``x``).
        Not flagged: a loop that also reads earlier entries of the list it fills (``alphas[t - k]``,
        ``hs[-1]``, ``torch.stack(alpha[n - k:])``). That list is a dynamic-programming table or a
        recursion (forward algorithm, semi-Markov CRF, RNN unrolled by hand): every entry must stay
        alive anyway, so stacking it at the end costs nothing a streaming reduction could save. Nor
        are chunked loops (``range(0, n, chunk)``, one entry per chunk, usually to bound memory),
        ``len()`` of a Python list, or steps that run on the host (``.cpu()``/``.numpy()``, numpy, scipy).
        Low for a sequential scan (``h = f(h, x[t]); outs.append(h)``): step t needs step t-1, autograd keeps
        every step anyway, and stacking at the end is the standard way to collect it.

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
        "import torch\ndef forward(em, trans, K):\n    B, T, C = em.shape\n    alphas = [em.new_zeros(B, C)]\n"
        "    for t in range(1, T + 1):\n        cands = []\n        for k in range(1, min(K, t) + 1):\n"
        "            cands.append(torch.logsumexp(alphas[t - k].unsqueeze(2) + trans, 1) + em[:, t - 1])\n"
        "        alphas.append(torch.logsumexp(torch.stack(cands), 0))\n    return torch.stack(alphas, dim=1)\n",
        "import torch\ndef rnn(cell, x, h0):\n    hs = [h0]\n    for t in range(x.size(1)):\n"
        "        hs.append(cell(x[:, t], hs[-1]))\n    return torch.stack(hs[1:], 1)\n",
        "import torch\ndef score(model, x):\n    out = []\n    for i in range(0, x.shape[0], 64):\n"
        "        out.append(model(x[i:i + 64]))\n    return torch.cat(out)\n",
        "import torch\ndef f(model, pairs):\n    out = []\n    for i in range(len(pairs)):\n"
        "        out.append(model(pairs[i]))\n    return torch.stack(out)\n",
        "import numpy as np\nimport torch\ndef f(x):\n    out = []\n    for h in range(x.shape[0]):\n"
        "        out.append(torch.from_numpy(np.interp(np.arange(9), np.arange(4), x[h].cpu().numpy())))\n"
        "    return torch.stack(out)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef f(x):\n    T = x.shape[1]\n    outs = []\n    for t in range(T):\n        outs.append(x[:, t] * 2)\n    return torch.stack(outs, 1)\n", line=7),
        Invalid("import torch\ndef f(x):\n    outs = []\n    for t in range(x.size(0)):\n        outs.append(x[t].exp())\n    return torch.cat(outs)\n", line=6),
        Invalid("import torch\ndef f(x: torch.Tensor, w):\n    outs = []\n    for t in range(len(x)):\n"
                "        outs.append(x[t] @ w)\n    return torch.stack(outs).sum(0)\n", line=6),
        Invalid("import torch\ndef f(x, h):\n    T = x.shape[1]\n    outs = []\n    for t in range(0, T, 1):\n"
                "        h = torch.tanh(x[:, t] + h)\n        outs.append(h)\n    return torch.stack(outs, 1).mean(1)\n", line=8),
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
                if not args or (len(args) == 3 and const_int(args[2]) != 1):
                    continue  # no range, or chunks of a size (``range(0, n, chunk)``): not one entry per step
                stop = args[0] if len(args) == 1 else args[1]
                b = size_bound(self, fn, stop)
                if b and b[0] and ".shape[" in b[0] and not self._len_of_non_tensor(fn, stop) \
                        and not self._reads_entries(loop, name) and not self._host_step(loop):
                    carried = recurrence_feeds(loop, c.args[0].value) if c.args else None
                    self.report(
                        node,
                        problem=(f"`{self.code_for(node)}` joins a list appended once per step of a loop over "
                                 f"`{self.code_for(stop)}` (a size read from the data)."),
                        impact=("All per-step tensors stay alive until the join, which copies them again (2x peak "
                                "memory), and the loop costs one round of kernel launches per step: linear in T."),
                        fix=Fix(before=self.code_for(node), after=f"# `{carried}` is carried from step to step: a "
                                "parallel scan or a fused kernel would replace the loop" if carried else
                                "# vectorize the step over T, or preallocate and write y[:, t] = ..."),
                        severity="low" if carried else None, evidence={"loop_bound": b[0], "recurrence": carried},
                    )
                    return

    def _reads_entries(self, loop: cst.For, name: str) -> bool:
        """The loop reads entries of the list it fills (``alphas[t - k]``, ``hs[-1]``, ``stack(a[n - k:])``):
        a dynamic-programming table or a recursion, which must keep every entry."""
        return any(isinstance(n.value, cst.Name) and n.value.value == name
                   and not isinstance(self.parent(n), (cst.AssignTarget, cst.Del)) for n in walk(loop.body, cst.Subscript))

    def _host_step(self, loop: cst.For) -> bool:
        """The step leaves torch (``.cpu()``/``.numpy()``/``.tolist()``, numpy or scipy calls): host work that
        cannot be vectorized over T on the device, so collecting its results is the only option."""
        return any(isinstance(c.func, cst.Attribute) and c.func.attr.value in ("cpu", "numpy", "tolist")
                   or any(q.split(".")[0] in ("numpy", "scipy") for q in self.qnames(c.func))
                   for c in walk(loop.body, cst.Call))

    def _len_of_non_tensor(self, fn, stop: cst.BaseExpression) -> bool:
        """The bound is ``len(xs)`` (directly or through one name) of something that is not a tensor of
        the function (a Python list of pairs, a decoder object)."""
        for _ in range(3):
            if isinstance(stop, cst.BinaryOperation) and const_int(stop.right) is not None:
                stop = stop.left
            elif isinstance(stop, cst.Name) and len(assigned_values(self, fn, stop.value)) == 1:
                stop = assigned_values(self, fn, stop.value)[0]
        if not (isinstance(stop, cst.Call) and self.qnames(stop.func) & {"builtins.len"} and stop.args):
            return False
        arg = stop.args[0].value
        derived = function_facts(self, fn).derived if fn is not None else set()
        return not (isinstance(arg, cst.Name) and arg.value in derived)
