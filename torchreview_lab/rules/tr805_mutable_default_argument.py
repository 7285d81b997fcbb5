from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._realcode import document_class, mutated_attributes, only_read
from ._torch import enclosing_function
from .base import Invalid, Rule

_MUTABLE_CALLS = frozenset({"list", "dict", "set", "collections.defaultdict", "collections.OrderedDict",
                            "defaultdict", "OrderedDict", "bytearray"})
_NAMESPACES = frozenset({"types.SimpleNamespace", "argparse.Namespace"})


class MutableDefaultArgument(Rule):
    """A mutable default argument (``[]``, ``{}``, ``set()``) shared across calls.

    What it does:
        Flags parameters whose default is a list, dict or set literal or a ``list()``/``dict()``/
        ``set()``/``defaultdict()`` call, unless the function only reads it (``fn(*args)``, iterates it,
        ``len(args)``, ``x in args``): never mutated, stored or returned, the shared default cannot leak.
        Also flags an object default (an instance of a class of this document, ``SimpleNamespace()``)
        whose attributes the function assigns (``train_state=TrainState()`` with ``train_state.step += 1``).

    Why is this bad:
        The default is created once, when the function is defined, and shared by every call:
        anything appended to it (a cache, a history of losses, hooks) leaks from one call into
        the next, and across model instances when the function is ``__init__``.

    Example:
        def train(model, data, history=[]):
            history.append(loss)

    Use instead:
        def train(model, data, history=None):
            history = [] if history is None else history
    """

    code = "TR805"
    title = "Mutable default argument"
    category = "api-design"
    severity = {"research": "low", "production": "medium"}
    VALID = [
        "def f(x, history=None):\n    history = [] if history is None else history\n    return history\n",
        "def f(x, dims=(1, 2), name='a'):\n    return x\n",
        "def show(fn, args=[], opts={}):\n    if len(args) and 'a' in opts:\n        return fn(*args, **opts)\n",
        "class State:\n    step = 0\ndef run(s=State()):\n    return s.step + 1\n",
    ]
    INVALID = [
        Invalid("def train(model, data, history=[]):\n    history.append(1)\n    return history\n", line=1),
        Invalid("class M:\n    def __init__(self, cfg={}):\n        self.cfg = cfg\n", line=2),
        Invalid("def f(seen=set()):\n    return seen\n", line=1),
        Invalid("class TrainState:\n    step = 0\n\ndef run_epoch(data, train_state=TrainState()):\n"
                "    for x in data:\n        train_state.step += 1\n    return train_state\n", line=4),
    ]

    def visit_Param(self, node: cst.Param) -> None:
        d = node.default
        if d is None:
            return
        mutable = isinstance(d, (cst.List, cst.Dict, cst.Set, cst.ListComp, cst.DictComp, cst.SetComp))
        if isinstance(d, cst.Call):
            name = self.code_for(d.func)
            mutable = name in _MUTABLE_CALLS or bool(self.qnames(d.func) & {"builtins.list", "builtins.dict",
                                                                             "builtins.set",
                                                                             "collections.defaultdict",
                                                                             "collections.OrderedDict"})
        name = node.name.value
        fn = enclosing_function(self, node)
        if isinstance(d, cst.Call) and not mutable and fn is not None:
            return self._object_default(node, fn, d)
        if not mutable or fn is not None and only_read(self, fn, name):
            return  # immutable, or a list/dict the function only reads: nothing can leak between calls
        self.report(
            node,
            problem=f"Parameter `{name}` defaults to `{self.code_for(d)}`, created once and shared by every call.",
            impact=("Mutations leak between calls (and between instances for __init__): caches, histories and "
                    "hook lists grow across runs and results depend on call order."),
            fix=Fix(before=f"{name}={self.code_for(d)}",
                    after=f"{name}=None  # then: {name} = {self.code_for(d)} if {name} is None else {name}"),
        )

    def _object_default(self, node: cst.Param, fn: cst.FunctionDef, d: cst.Call) -> None:
        """``train_state=TrainState()`` whose attributes the function assigns: one shared counter object."""
        name = node.name.value
        if document_class(self, d) is None and not self.qnames(d.func) & _NAMESPACES:
            return
        attrs = mutated_attributes(self, fn, name)
        if not attrs:
            return
        self.report(
            node,
            problem=(f"Parameter `{name}` defaults to `{self.code_for(d)}`, one object created when `{fn.name.value}` is "
                     f"defined, and the function assigns its attributes (`{name}.{attrs[0]}`)."),
            impact=("Every call that omits the argument updates the same object: counters and state accumulate "
                    "across calls (and runs), so results depend on how often the function was called before."),
            fix=Fix(before=f"{name}={self.code_for(d)}",
                    after=f"{name}=None  # then: {name} = {self.code_for(d)} if {name} is None else {name}"),
        )
