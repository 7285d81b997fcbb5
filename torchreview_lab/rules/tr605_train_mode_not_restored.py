from __future__ import annotations

import re
from typing import Dict, FrozenSet, Set

import libcst as cst

from ..findings import Fix
from ._flow import in_no_grad, runs_forward
from ._torch import dotted_name, enclosing_class, enclosing_function, function_facts, method_call, module_functions, walk, walk_own
from ._context import self_attribute_values
from ._training import calls_method as _calls_method, is_training_loop as _is_training_loop, optimizers, param_roots, \
    stepped
from .base import Invalid, Rule


def _same(evaluated: str, trained: str) -> bool:
    """``model.eval()`` covers ``model`` and its submodules; ``ddp.module.eval()`` the wrapped network."""
    return evaluated == trained or trained.startswith(evaluated + ".") or evaluated in (
        trained + ".module", trained + "._orig_mod")


class TrainModeNotRestored(Rule):
    """A training loop never puts the model back in training mode after evaluation.

    What it does:
        Flags a training loop (a loop whose body calls ``.backward()`` and ``optimizer.step()``)
        that never gets ``model.train()`` back (in the loop itself when it evaluates: one call
        before the epoch loop is not enough), when the function (directly, or
        through a function of the same document it calls) runs ``model.eval()`` on the network the
        loop trains (the owner of the stepped optimizer's parameters, else the network it runs): the
        same name or attribute chain, not a copy such as ``ema = deepcopy(model).eval()``. High when the
        evaluation runs inside the training loop (reported at the evaluating call); Medium (at the loop)
        when only a function called before it does.

    Why is this bad:
        ``eval()`` switches dropout off and makes batch norm use running statistics. Without ``train()``
        afterwards, every step after the first evaluation trains another model: no error, worse results.

    Example:
        for epoch in range(epochs):
            for x, y in loader:
                loss = criterion(model(x), y); loss.backward(); opt.step()
            evaluate(model, val_loader)      # calls model.eval()

    Use instead:
        for epoch in range(epochs):
            model.train()
            for x, y in loader:
                ...
            evaluate(model, val_loader)
    """

    code = "TR605"
    title = "Training continues in eval mode after evaluation"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "def evaluate(model, xs):\n    model.eval()\n    return [model(x) for x in xs]\n\n"
        "def fit(model, opt, data, epochs):\n    for epoch in range(epochs):\n        model.train()\n"
        "        for x in data:\n            loss = model(x).sum()\n            loss.backward()\n            opt.step()\n"
        "        evaluate(model, data)\n",
        "def fit(model, opt, data):\n    for x in data:\n        loss = model(x).sum()\n        loss.backward()\n        opt.step()\n",
        "import copy, torch\ndef fit(model, data):\n    ema = copy.deepcopy(model).eval()\n"
        "    opt = torch.optim.SGD(model.parameters(), lr=0.1)\n    for x in data:\n        model(x).sum().backward()\n"
        "        opt.step()\n        update(ema, model)\n",
        "def fit(model, ema_model, opt, data):\n    ema_model.eval()\n    for x in data:\n"
        "        model(x).sum().backward()\n        opt.step()\n",
    ]
    INVALID = [
        Invalid("def evaluate(model, xs):\n    model.eval()\n    return [model(x) for x in xs]\n\n"
                "def fit(model, opt, data, epochs):\n    for epoch in range(epochs):\n"
                "        for x in data:\n            loss = model(x).sum()\n            loss.backward()\n            opt.step()\n"
                "        evaluate(model, data)\n", line=11),
        Invalid("def fit(model, opt, data, epochs):\n    for epoch in range(epochs):\n        for x in data:\n"
                "            model(x).sum().backward()\n            opt.step()\n        model.eval()\n"
                "        val = model(data[0])\n", line=6),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        self._functions = module_functions(self)
        self._memo: Dict[str, Set[str]] = {}

    def _evaluated(self, scope: cst.CSTNode, seen: FrozenSet[str] = frozenset()) -> Set[str]:
        """What ``scope`` puts in eval mode (``x.eval()`` receivers, a name or attribute chain), itself or
        through the document's functions it calls, their parameters replaced by the arguments passed."""
        out = {self.code_for(mc[0]) for c in walk(scope, cst.Call) if (mc := method_call(c)) and mc[1] == "eval"
               and not c.args and dotted_name(mc[0])}
        for c in walk(scope, cst.Call):
            name = c.func.value if isinstance(c.func, cst.Name) else None
            if name not in self._functions or name in seen:
                continue
            if name not in self._memo:  # raw codes, the callee's parameter names included
                self._memo[name] = self._evaluated(self._functions[name].body, seen | {name})
            params = function_facts(self, self._functions[name]).params
            args = {**dict(zip(params, (a.value for a in c.args if not a.keyword and not a.star))),
                    **{a.keyword.value: a.value for a in c.args if a.keyword}}
            for code in self._memo[name]:
                head, _, rest = code.partition(".")
                arg = dotted_name(args.get(head)) if head in params else head  # a global stays itself
                out |= {arg + ("." + rest if rest else "")} if arg else set()
        return out

    def _trained(self, fn: cst.FunctionDef, loop: cst.For) -> Set[str]:
        """The networks ``loop`` trains: the parameter owners of the optimizers it steps (built in ``fn``),
        else the networks it runs with autograd on and those whose ``.parameters()`` it reads."""
        built = [optimizers(self).get(o) for c in walk(loop.body, cst.Call) if (o := stepped(self, c))]
        roots = set().union(*(param_roots(self, b) for b in built if b is not None and enclosing_function(self, b) is fn))
        cls = enclosing_class(self, fn)
        attrs = self_attribute_values(self, cls) if cls is not None else {}  # submodules; not methods or helpers
        for c in walk(loop.body, cst.Call) if not roots else ():
            mc = method_call(c)
            if mc and mc[1] in ("parameters", "named_parameters") and dotted_name(mc[0]):
                roots.add(self.code_for(mc[0]))
            elif (isinstance(c.func, cst.Name) or mc and dotted_name(mc[0]) == "self") and runs_forward(self, c) \
                    and not in_no_grad(self, c) and not re.search("loss|criterion", self.code_for(c.func), re.I) \
                    and not (mc and mc[1] not in attrs):
                roots.add(self.code_for(c.func))  # model(x), self.net(x) (assigned in the class); not self._clip_lr()
        return roots

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        for loop in walk_own(node.body, cst.For):
            if not _is_training_loop(loop):
                continue
            anc = list(self.ancestors(loop))
            outer = next((a for a in reversed(anc[:anc.index(node)]) if isinstance(a, cst.For)), loop)
            trained = self._trained(node, loop)
            hit = sorted(e for e in self._evaluated(node.body) if any(_same(e, t) for t in trained))
            if not hit:
                continue
            inside = any(_same(e, t) for e in self._evaluated(outer.body) for t in trained)
            if _calls_method(outer.body if inside else node.body, "train"):
                continue  # restored: in the loop that evaluates, or anywhere after an evaluation before it
            site = next((c for c in walk(outer.body, cst.Call) if any(_same(e, t) for e in self._evaluated(c) for t in
                                                                       trained)), None) if inside else None
            first = self.code_for(site or outer).splitlines()[0]
            self.report(site or outer,
                problem=(f"`{node.name.value}` trains `{hit[0]}` in a loop but never calls `.train()`, while "
                         + ("an evaluation inside the loop" if inside else "code it runs")
                         + f" calls `{hit[0]}.eval()`."),
                impact=("After the first evaluation, dropout stays off and batch norm uses running statistics for "
                        "all further training steps: a different model trains, silently."),
                fix=Fix(before=first, after=first + (f"\n{hit[0]}.train()  # back to training" if site else
                                                     f"\n    {hit[0]}.train()  # at the start of every epoch")),
                severity=None if inside else "medium",
            )
            return
