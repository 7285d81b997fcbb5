from __future__ import annotations

import libcst as cst

from ..findings import Fix
from .base import Invalid, Rule

_MUTABLE_CALLS = frozenset({"list", "dict", "set", "collections.defaultdict", "collections.OrderedDict",
                            "defaultdict", "OrderedDict", "bytearray"})


class MutableDefaultArgument(Rule):
    """A mutable default argument (``[]``, ``{}``, ``set()``) shared across calls.

    What it does:
        Flags parameters whose default is a list, dict or set literal or a ``list()``/``dict()``/
        ``set()``/``defaultdict()`` call.

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
    ]
    INVALID = [
        Invalid("def train(model, data, history=[]):\n    history.append(1)\n    return history\n", line=1),
        Invalid("class M:\n    def __init__(self, cfg={}):\n        self.cfg = cfg\n", line=2),
        Invalid("def f(seen=set()):\n    return seen\n", line=1),
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
        if not mutable:
            return
        name = node.name.value
        self.report(
            node,
            problem=f"Parameter `{name}` defaults to `{self.code_for(d)}`, created once and shared by every call.",
            impact=("Mutations leak between calls (and between instances for __init__): caches, histories and "
                    "hook lists grow across runs and results depend on call order."),
            fix=Fix(before=f"{name}={self.code_for(d)}",
                    after=f"{name}=None  # then: {name} = {self.code_for(d)} if {name} is None else {name}"),
        )
