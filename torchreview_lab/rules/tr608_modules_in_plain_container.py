from __future__ import annotations

import re

import libcst as cst

from ..findings import Fix
from ._context import init_methods, is_module_class, module_kind, self_attribute_assignments
from ._flow import values_added
from ._knowledge import NON_RETAINING_BUILTINS, REGISTERING_CALLS, REGISTERING_CONTAINERS
from ._torch import (assigned_values, container_elements, container_kind, dotted_name, names_in, nn_prefix, source_text,
                     walk_own)
from .base import Invalid, Rule


class ModulesInPlainContainer(Rule):
    """Submodules or parameters kept in a plain ``list``/``dict``/``tuple`` attribute of an nn.Module.

    What it does:
        In ``__init__`` (and the helpers it calls) of an ``nn.Module`` subclass, flags
        ``self.layers = [nn.Linear(d, d) for _ in range(n)]``, ``self.heads = {"a": nn.Linear(...)}``,
        ``self.w = [nn.Parameter(...)]`` and ``self.blocks = []`` filled with ``.append(Block())``,
        when the elements are constructed torch.nn modules (or classes of this document that are
        modules) and nothing registers them otherwise (``add_module``, ``nn.Sequential(*self.layers)``).

    Why is this bad:
        nn.Module only registers submodules and parameters assigned as attributes or held in
        ``nn.ModuleList``/``nn.ModuleDict``/``nn.ParameterList``. The ones in a plain container are
        missing from ``model.parameters()`` (the optimizer never trains them), from ``state_dict()``
        (checkpoints lose them), and ``.to(device)``, ``.cuda()``, ``.eval()`` never reach them.

    Example:
        self.layers = [nn.Linear(d, d) for _ in range(n)]

    Use instead:
        self.layers = nn.ModuleList([nn.Linear(d, d) for _ in range(n)])
    """

    code = "TR608"
    title = "Submodules in a plain Python container are not registered"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    autofix = True
    VALID = [
        "import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
        "        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(n)])\n        self.sizes = [4, 8]\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
        "        self.layers = [nn.Linear(4, 4) for _ in range(n)]\n        self.net = nn.Sequential(*self.layers)\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(4, 4)\n        self.hooks = [self.fc]\n",
        "import torch.nn as nn\nclass Cfg:\n    def __init__(self):\n        self.layers = [nn.Linear(4, 4)]\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.acts = {'relu': nn.ReLU(), 'gelu': nn.GELU()}\n",
    ]
    INVALID = [
        Invalid("import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
                "        self.layers = [nn.Linear(4, 4) for _ in range(n)]\n", line=5,
                expected_fix="import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
                "        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(n)])\n"),
        Invalid("from torch import nn\nclass Block(nn.Module):\n    pass\nclass M(Block):\n    def __init__(self):\n"
                "        super().__init__()\n        self.blocks = []\n        for _ in range(3):\n            self.blocks.append(Block())\n",
                line=7, expected_fix="from torch import nn\nclass Block(nn.Module):\n    pass\nclass M(Block):\n    def __init__(self):\n"
                "        super().__init__()\n        self.blocks = nn.ModuleList()\n        for _ in range(3):\n            self.blocks.append(Block())\n"),
        Invalid("import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.heads = {'a': torch.nn.Linear(4, 2), 'b': torch.nn.Linear(4, 3)}\n", line=5,
                expected_fix="import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.heads = torch.nn.ModuleDict({'a': torch.nn.Linear(4, 2), 'b': torch.nn.Linear(4, 3)})\n"),
        Invalid("import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.w = [nn.Parameter(torch.zeros(3)) for _ in range(2)]\n", line=6,
                expected_fix="import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.w = nn.ParameterList([nn.Parameter(torch.zeros(3)) for _ in range(2)])\n"),
    ]

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if not is_module_class(self, node):
            return
        scope = init_methods(self, node)  # __init__ and the helpers it calls (self._build())
        if not scope:
            return
        owner = {id(a): fn for fn in scope for a in walk_own(fn.body, (cst.Assign, cst.AnnAssign))}
        for attr, values in self_attribute_assignments(self, node).items():
            if any(container_kind(self, v) is None for v, _ in values):
                continue  # also assigned an nn.ModuleList (or anything else) somewhere
            for v, a in values:
                if id(a) in owner:
                    self._check(node, owner[id(a)], scope, attr, v)

    def _check(self, cls, fn, scope, attr: str, value) -> None:
        target, where, container = f"self.{attr}", scope, value
        if isinstance(value, cst.Name):  # self.layers = layers, with ``layers`` built in this method
            vals = assigned_values(self, fn, value.value)
            if len(vals) != 1:
                return
            target, where, container = value.value, [fn], vals[0]
        kind = container_kind(self, container)
        added = values_added(self, target, where)
        elements = container_elements(container) + added
        if kind in (None, "name") or self._registered(target, where, elements):
            return
        kinds = [module_kind(self, fn, e) for e in elements]
        found = {k for k in kinds if k} - {"stateless"}
        if not found:
            return  # no modules, or only activations/pooling that hold nothing to register
        wrapper = REGISTERING_CONTAINERS.get(("dict" if kind == "dict" else "list", next(iter(found)))) \
            if len(found) == 1 else None
        prefix = nn_prefix(self)
        safe = bool(wrapper and prefix and all(kinds)) and (wrapper.startswith("Module") or "stateless" not in kinds) \
            and not isinstance(container, cst.BinaryOperation) \
            and (kind != "dict" or self._string_keys(container, target, where)) \
            and (container is value or all(self.line_of(e) < self.line_of(value) for e in added))
        new = f"{prefix or 'nn'}.{wrapper or 'ModuleList'}"
        empty = isinstance(value, (cst.List, cst.Dict)) and not value.elements or isinstance(value, cst.Call)
        text = f"[{source_text(self, value)}]" if isinstance(value, cst.Tuple) else source_text(self, value)
        shared = " (and `[m] * n` repeats one module n times: shared weights)" \
            if isinstance(container, cst.BinaryOperation) else ""
        self.report(
            value,
            problem=(f"`self.{attr}` in `{cls.name.value}` holds {'parameters' if found == {'param'} else 'submodules'} "
                     f"in a plain {kind}: nn.Module does not register them{shared}."),
            impact=("Their parameters are missing from model.parameters() (the optimizer never trains them) and "
                    "from state_dict() (checkpoints lose them); .to(device)/.cuda()/.eval() do not reach them."),
            fix=Fix(before=source_text(self, value), after=f"{new}()" if empty else f"{new}({text})"),
            replacement=cst.Call(cst.parse_expression(new), [] if empty else [cst.Arg(value)]) if safe else None,
        )

    def _registered(self, target: str, scope, elements) -> bool:
        """The elements reach nn.Module another way: ``target`` handed to a call (``nn.Sequential(*self.layers)``),
        or ``add_module``/``setattr`` applied to them (or inside a loop over ``target``)."""
        mention = re.compile(rf"(?<![\w.]){re.escape(target)}(?!\w)")
        names = {e.value for e in elements if isinstance(e, cst.Name)}
        for fn in scope:
            for c in walk_own(fn.body, cst.Call):
                if not self.qnames(c.func) & NON_RETAINING_BUILTINS \
                        and any(mention.search(self.code_for(a.value)) for a in c.args):
                    return True
                if (dotted_name(c.func) or "").split(".")[-1] in REGISTERING_CALLS and (
                        any(names_in(a.value) & names for a in c.args) or any(
                        isinstance(a, cst.For) and mention.search(self.code_for(a.iter)) for a in self.ancestors(c))):
                    return True
        return False

    def _string_keys(self, container, target: str, scope) -> bool:
        keys = [getattr(e, "key", None) for e in container.elements] if isinstance(container, cst.Dict) else (
            [container.key] if isinstance(container, cst.DictComp) else [])
        for fn in scope:
            for n in walk_own(fn.body, cst.Assign):
                keys += [t.target.slice[0].slice.value for t in n.targets if isinstance(t.target, cst.Subscript)
                         and self.code_for(t.target.value) == target and isinstance(t.target.slice[0].slice, cst.Index)]
        return all(isinstance(k, cst.FormattedString) or isinstance(k, cst.SimpleString) and "." not in k.value
                   and len(k.evaluated_value) > 0 for k in keys)
