from __future__ import annotations

from typing import Dict, List, Optional, Set

import libcst as cst

from ..findings import Fix
from ._flow import data_names, detached_value, graph_reason, model_sources, runs_forward
from ._loops import differentiated_later
from ._torch import (assigned_values, enclosing_function, in_loop_body, kwarg, method_call, names_in, torch_function,
                     walk, walk_own, without_arg)
from .base import Invalid, Rule


class RetainGraphInTrainingLoop(Rule):
    """``loss.backward(retain_graph=True)`` in a loop that rebuilds the graph every iteration.

    What it does:
        Flags ``loss.backward(retain_graph=True)`` (and ``torch.autograd.backward(loss,
        retain_graph=True)``) in a loop body when ``loss`` is computed in the same iteration by a
        forward call (``model(x)``, ``rnn(x, h)``, a criterion), no tensor with a graph built before
        the loop feeds it, and no second backward (or ``autograd.grad``) follows in the iteration.
        Two backward passes through one graph, ``autograd.grad(..., create_graph=True)`` for
        higher-order gradients and per-output loops over a graph built once are not flagged.

    Why is this bad:
        ``retain_graph=True`` keeps every activation saved for backward alive until the next
        iteration has built its own (about 2x peak activation memory), and is usually there to
        silence "Trying to backward through the graph a second time": a tensor carried across
        iterations still holds the previous iteration's graph (an RNN hidden state, a running
        statistic), so each backward also walks back through older iterations, ever slower, with
        gradients leaking across batches.

    Example:
        for x, y in loader:
            out, h = rnn(x, h)
            loss = criterion(out, y)
            loss.backward(retain_graph=True)

    Use instead:
        for x, y in loader:
            h = h.detach()                 # truncate backpropagation at the batch boundary
            out, h = rnn(x, h)
            loss = criterion(out, y)
            loss.backward()
    """

    code = "TR156"
    title = "backward(retain_graph=True) in a loop that rebuilds the graph"
    category = "memory-correctness"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "def fit(model, loader, opt):\n    for x, y in loader:\n        loss = ((model(x) - y) ** 2).mean()\n        loss.backward()\n        opt.step()\n",
        "def fit(G, D, loader, crit):\n    for z, real in loader:\n        fake = G(z)\n        d_loss = crit(D(fake), real)\n"
        "        d_loss.backward(retain_graph=True)\n        g_loss = -D(fake).mean()\n        g_loss.backward()\n",
        "def jac(model, x):\n    y = model(x)\n    for i in range(y.shape[1]):\n        y[:, i].sum().backward(retain_graph=True)\n",
        "def heads(model, x, ys, crit):\n    feats = model(x)\n    for head, y in zip(model.heads, ys):\n        loss = crit(head(feats), y)\n"
        "        loss.backward(retain_graph=True)\n",
        "import torch\ndef f(model, loader):\n    for x in loader:\n        out = model(x)\n"
        "        g, = torch.autograd.grad(out.sum(), x, retain_graph=True, create_graph=True)\n        (g ** 2).sum().backward()\n",
        "def fit(model, loader):\n    for x, y in loader:\n        loss = model(x).mean()\n        loss.backward(retain_graph=False)\n",
    ]
    INVALID = [
        Invalid("def fit(rnn, crit, loader, opt, h):\n    for x, y in loader:\n        out, h = rnn(x, h)\n        loss = crit(out, y)\n"
                "        opt.zero_grad()\n        loss.backward(retain_graph=True)\n        opt.step()\n", line=6),
        Invalid("import torch\nfor epoch in range(10):\n    for xb, yb in loader:\n        loss = torch.nn.functional.mse_loss(model(xb), yb)\n"
                "        loss.backward(retain_graph=True)\n        optimizer.step()\n", line=5),
        Invalid("import torch as th\ndef fit(net, data):\n    while data.more():\n        x = data.next()\n        loss = net(x).sum()\n"
                "        th.autograd.backward(loss, retain_graph=True)\n", line=6),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        mc = method_call(node)
        if mc and mc[1] == "backward" and torch_function(self, node) is None:
            loss = mc[0]
        elif torch_function(self, node) == "autograd.backward" and node.args and node.args[0].keyword is None:
            loss = node.args[0].value
        else:
            return
        rg = kwarg(node, "retain_graph")
        if rg is None or not (isinstance(rg.value, cst.Name) and rg.value.value == "True") or not in_loop_body(self, node):
            return
        loop = next((a for a in self.ancestors(node) if isinstance(a, (cst.For, cst.While))), None)
        if loop is None or differentiated_later(self, loop, node):
            return
        carried = self._rebuilt_in_iteration(loop, loss, self.line_of(node))
        if carried is None:
            return
        hint = (f" `{'`, `'.join(sorted(carried))}` is read before it is reassigned in the iteration: if backward fails "
                f"without retain_graph, detach it at the start of each iteration.") if carried else ""
        self.report(
            node,
            problem=(f"`{self.code_for(node)}` retains a graph that is rebuilt in every iteration of the loop, and no "
                     f"second backward through it follows.{hint}"),
            impact=("Every activation saved for backward stays alive until the next iteration replaces it (about 2x peak "
                    "memory); when a tensor carried across iterations still holds the old graph, each backward also "
                    "runs through all previous iterations, slower every step, with gradients leaking across batches."),
            fix=Fix(before=self.code_for(node), after=self.code_for(without_arg(node, rg))),
        )

    def _rebuilt_in_iteration(self, loop, loss, line: int) -> Optional[Set[str]]:
        """When ``loss`` is computed in this iteration by a forward call and no graph built before the
        loop feeds it: the names that carry a non-detached value from one iteration to the next.
        None otherwise."""
        fn = enclosing_function(self, loop)
        scope = fn.body if fn is not None else self.ctx.module
        assigned: Dict[str, List[cst.CSTNode]] = {}  # name -> its assignments in the loop body
        for n in walk_own(loop.body, (cst.Assign, cst.AugAssign, cst.AnnAssign)):
            for t in ([t.target for t in n.targets] if isinstance(n, cst.Assign) else [n.target]):
                if n.value is not None and isinstance(t, (cst.Name, cst.Tuple, cst.List)):
                    for name in names_in(t):
                        assigned.setdefault(name, []).append(n)
        targets = names_in(loop.target) if isinstance(loop, cst.For) else set()
        todo = data_names(loss)
        if not any(n in assigned and self.line_of(assigned[n][0]) < line for n in todo):
            return None  # the loss was computed before the loop
        seen, forward, carried = set(), False, set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in assigned:
                stmts = assigned[name]
                for stmt in stmts:
                    forward = forward or any(runs_forward(self, c) for c in walk(stmt.value, cst.Call))
                    todo.extend(data_names(stmt.value))
                first = min(self.line_of(s) for s in stmts)
                read_early = isinstance(stmts[0], cst.AugAssign) or name in data_names(stmts[0].value) or any(
                    name in data_names(s) for s in walk_own(loop.body, cst.SimpleStatementLine) if self.line_of(s) < first)
                if read_early and not any(detached_value(s.value) for s in stmts):
                    carried.add(name)
            elif name in targets:
                if graph_reason(self, fn, scope, loop.iter) or model_sources(self, fn, loop.iter, set()):
                    return None  # iterating over outputs of one forward pass: a shared graph
            elif name != "self" and (graph_reason(self, fn, scope, cst.Name(name)) or any(
                    runs_forward(self, c) for v in assigned_values(self, fn, name) for c in walk(v, cst.Call))):
                return None  # part of the graph was built before the loop and is shared by every iteration
        return carried if forward else None
