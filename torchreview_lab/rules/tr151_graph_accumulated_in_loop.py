from __future__ import annotations

import libcst as cst

from ._flow import AccumulationVisits, accumulating_loop, backwarded_later, graph_reason, scope_of, training_step_in
from .base import Invalid, Rule


class GraphAccumulatedInLoop(AccumulationVisits, Rule):
    """A graph-carrying tensor (a loss) is accumulated across loop iterations.

    What it does:
        Flags ``history.append(loss)``, ``total += loss`` and ``total = total + loss`` inside a loop
        that runs a training step (``.backward()`` or ``optimizer.step()`` in its body) when ``loss``
        still carries its autograd graph: ``.backward()`` is called on it, or it comes from a
        model/criterion/loss-function call (or a reduction of one) and was not turned into a number
        with ``.item()`` or cut from the graph with ``.detach()``. Summing losses for a single
        backward after the loop is deliberate and not flagged.

    Why is this bad:
        A tensor that requires grad keeps its whole computation graph alive, and with it every
        activation saved for backward. Keeping one per step means memory grows linearly with the
        number of steps (a "leak" that ends in an out-of-memory error hours into training), and
        ``total += loss`` even chains the graphs of all steps together.

    Example:
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            history.append(loss)

    Use instead:
        history.append(loss.item())      # a Python float
        # or history.append(loss.detach()) to keep a tensor without its graph
    """

    code = "TR151"
    title = "Loss tensor accumulated across iterations keeps every graph alive"
    category = "memory-correctness"
    severity = {"research": "high", "production": "high"}
    autofix = True
    VALID = [
        "def fit(model, data, opt):\n    history = []\n    for x, y in data:\n        loss = ((model(x) - y) ** 2).mean()\n        loss.backward()\n        history.append(loss.item())\n    return history\n",
        "import torch\ndef evaluate(model, data):\n    total = 0.0\n    with torch.no_grad():\n        for x, y in data:\n            loss = model(x).sum()\n            total += loss\n    return total\n",
        "def f(data):\n    out = []\n    for x in data:\n        y = x * 2\n        out.append(y)\n    return out\n",
        "def fit(model, data):\n    for x, y in data:\n        losses = []\n        loss = model(x).mean()\n        losses.append(loss)\n        sum(losses).backward()\n",
        "def episode(env, policy, critic, opt, s):\n    values = []\n    for t in range(100):\n        values.append(critic(s))\n        s, r, done, _ = env.step(policy(s))\n    loss = torch.stack(values).sum()\n    loss.backward()\n",
        "def get_loss(outputs, model):\n    loss = 0.0\n    for v in outputs:\n        loss += model(v).sum()\n    return loss\n",
        "def fit(model, data):\n    total = 0\n    for x, y in data:\n        loss = model(x).mean()\n        loss.backward()\n        total += loss.detach()\n    return total\n",
    ]
    INVALID = [
        Invalid("def fit(model, data, opt):\n    history = []\n    for x, y in data:\n        loss = ((model(x) - y) ** 2).mean()\n        loss.backward()\n        history.append(loss)\n    return history\n",
                line=6,
                expected_fix="def fit(model, data, opt):\n    history = []\n    for x, y in data:\n        loss = ((model(x) - y) ** 2).mean()\n        loss.backward()\n        history.append(loss.item())\n    return history\n"),
        Invalid("import torch.nn.functional as F\ndef fit(net, data, opt):\n    total = 0.0\n    for x, y in data:\n        loss = F.cross_entropy(net(x), y)\n        total += loss\n        opt.step()\n    return total / len(data)\n", line=6),
        Invalid("import torch\nlosses = []\nfor i in range(10):\n    x = torch.randn(4, requires_grad=True)\n    loss = (x ** 2).sum()\n    loss.backward()\n    losses.append(loss)\n", line=7),
        Invalid("def run(model, batches, optimizer):\n    running = 0\n    for b in batches:\n        out = model(b)\n        out.mean().backward()\n        optimizer.step()\n        running = running + out.mean()\n    return running\n", line=7),
    ]

    def _check(self, node, acc, value, rebuild) -> None:
        loop = accumulating_loop(self, node, acc)
        if loop is None:
            return
        if not training_step_in(self, loop):
            # summing losses for one backward after the loop (several heads, micro-batches) is deliberate
            return
        fn, scope = scope_of(self, node)
        if scope is None:
            return
        reason = graph_reason(self, fn, scope, value)
        if not reason or backwarded_later(self, acc, scope, fn):
            return
        v = self.code_for(value)
        scalar = isinstance(value, cst.Name) and ("backward" in reason or ".mean()" in reason or "loss" in v.lower())
        new_code = f"{v}.item()" if scalar or "backward" in reason else f"{v}.detach()"
        new_value = cst.parse_expression(new_code if isinstance(value, (cst.Name, cst.Call, cst.Attribute, cst.Subscript))
                                         else f"({v}).detach()")
        self.report(
            node,
            problem=(f"`{self.code_for(node).strip()}` keeps `{v}` across loop iterations while it still carries "
                     f"its autograd graph ({reason})."),
            impact=("Each kept tensor holds its whole graph and the activations saved for backward, so memory grows "
                    "with every step until the process runs out of memory; `+=` even chains all steps' graphs."),
            replacement=rebuild(new_value),
            evidence={"reason": reason},
        )
