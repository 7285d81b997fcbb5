from __future__ import annotations

from typing import Dict, List, Optional, Set

import libcst as cst

from ..findings import Fix
from ._flow import GRAPH_REDUCTIONS, MODEL_FACTORY_PREFIXES, graph_reason, model_sources
from ._knowledge import TENSOR_METHODS
from ._torch import (assigned_values, dotted_name, enclosing_function, fast_children, in_loop_body, kwarg, method_call,
                     names_in, torch_function, walk, walk_own)
from .base import Invalid, Rule

_DIFFERENTIATE = ("autograd.grad", "autograd.backward")


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
        if loop is None or self._later_backward(loop, node):
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
            fix=Fix(before=self.code_for(node), after=self._without(node, rg)),
        )

    def _without(self, node: cst.Call, rg: cst.Arg) -> str:
        args = [a for a in node.args if a is not rg]
        if args:
            args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return self.code_for(node.with_changes(args=args))

    def _later_backward(self, loop, node) -> bool:
        line = self.line_of(node)
        for c in walk_own(loop.body, cst.Call):
            if c is node or self.line_of(c) < line:
                continue
            mc = method_call(c)
            if mc and mc[1] == "backward" or torch_function(self, c) in _DIFFERENTIATE:
                return True
        return False

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
        todo = self._data_names(loss)
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
                    forward = forward or any(self._is_forward(c) for c in walk(stmt.value, cst.Call))
                    todo.extend(self._data_names(stmt.value))
                first = min(self.line_of(s) for s in stmts)
                read_early = isinstance(stmts[0], cst.AugAssign) or name in self._data_names(stmts[0].value) or any(
                    name in self._data_names(s) for s in walk_own(loop.body, cst.SimpleStatementLine) if self.line_of(s) < first)
                if read_early and not any(self._detached(s.value) for s in stmts):
                    carried.add(name)
            elif name in targets:
                if graph_reason(self, fn, scope, loop.iter) or model_sources(self, fn, loop.iter, set()):
                    return None  # iterating over outputs of one forward pass: a shared graph
            elif name != "self" and (graph_reason(self, fn, scope, cst.Name(name)) or any(
                    self._is_forward(c) for v in assigned_values(self, fn, name) for c in walk(v, cst.Call))):
                return None  # part of the graph was built before the loop and is shared by every iteration
        return carried if forward else None

    @staticmethod
    def _detached(value) -> bool:
        """``h.detach()``, ``h.item()``, ``Variable(h.data)``, ``total = 0``: no graph carried on."""
        if isinstance(value, (cst.Integer, cst.Float)) or isinstance(value, cst.Attribute) and value.attr.value == "data":
            return True
        mc = method_call(value)
        return bool(mc and mc[1] in ("detach", "item", "tolist", "numpy")) or isinstance(value, cst.Call) and bool(
            value.args) and all(RetainGraphInTrainingLoop._detached(a.value) for a in value.args)

    def _is_forward(self, call: cst.Call) -> bool:
        """A call that runs a network or criterion: not a torch function, builtin or tensor method."""
        if torch_function(self, call) is not None:
            return "loss" in torch_function(self, call) or torch_function(self, call).endswith("cross_entropy")
        last = (dotted_name(call.func) or "_").split(".")[-1]
        if any(q.startswith(("builtins.", "numpy.", "math.")) for q in self.qnames(call.func)) or \
                (last[:1].isupper() or last.startswith(MODEL_FACTORY_PREFIXES)) and "loss" not in last.lower():
            return False  # a builtin, a constructor (``DataLoader(...)``) or a data/model factory
        mc = method_call(call)
        return not (mc and (mc[1] in TENSOR_METHODS or mc[1] in GRAPH_REDUCTIONS))

    def _data_names(self, expr) -> List[str]:
        """Names read as data in ``expr`` (not callees: ``model`` in ``model(x)``, ``self.net``)."""
        out, stack = [], [expr]
        while stack:
            n = stack.pop()
            if isinstance(n, cst.Name):
                out.append(n.value)
            elif isinstance(n, cst.Call):
                mc = method_call(n)
                if mc and (mc[1] in TENSOR_METHODS or mc[1] in GRAPH_REDUCTIONS):
                    stack.append(mc[0])
                elif not isinstance(n.func, (cst.Name, cst.Attribute)):
                    stack.append(n.func)
                stack.extend(a.value for a in n.args)
            elif isinstance(n, cst.Attribute):
                stack.append(n.value)
            elif not isinstance(n, (cst.Lambda,)):
                stack.extend(fast_children(n))
        return out


