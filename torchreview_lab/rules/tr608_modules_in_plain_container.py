from __future__ import annotations

import re
from typing import Dict, List, Optional

import libcst as cst

from ..findings import Fix
from ._context import is_module_class
from ._torch import assigned_values, dotted_name, names_in, source_text, torch_function, walk, walk_own
from .base import Invalid, Rule

_NOT_MODULES = ("nn.functional.", "nn.init.", "nn.utils.", "nn.attention.", "nn.grad.", "nn.common_types.")
_NON_MODULE_CLASSES = frozenset({"Buffer", "UninitializedBuffer", "UninitializedParameter"})
_REGISTERS = frozenset({"add_module", "register_module", "register_parameter", "setattr"})
_HARMLESS = frozenset(f"builtins.{h}" for h in ("len", "enumerate", "zip", "reversed", "iter", "isinstance", "print",
                                                 "range", "str", "repr", "min", "max"))
# Modules without parameters, buffers or a train/eval difference: losing them from registration changes nothing.
_STATELESS = re.compile(r"(ReLU6?|LeakyReLU|R?ReLU|GELU|SiLU|Mish|C?ELU|SELU|GLU|Tanh|Sigmoid|LogSigmoid|Softmax2?d?|LogSoftmax"
                        r"|Softmin|Softplus|Softsign|Hardtanh|Hardswish|Hardsigmoid|Tanhshrink|Softshrink|Hardshrink|Threshold"
                        r"|Identity|Flatten|Unflatten|(Adaptive)?(Max|Avg)Pool[123]d|Upsample\w*|Pixel(Un)?Shuffle"
                        r"|(Zero|Constant|Reflection|Replication|Circular)Pad[123]d)")
_WRAPPER = {("list", "module"): "ModuleList", ("dict", "module"): "ModuleDict",
            ("list", "param"): "ParameterList", ("dict", "param"): "ParameterDict"}


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
        methods = {s.name.value: s for s in walk_own(node.body, cst.FunctionDef)}
        if "__init__" not in methods:
            return
        init = methods["__init__"]  # and the helpers it calls (self._build())
        helpers = set(methods) - {"__init__"}
        scope = [init] + [methods[c.func.attr.value] for c in walk_own(init.body, cst.Call)
                          if isinstance(c.func, cst.Attribute) and dotted_name(c.func.value) == "self"
                          and c.func.attr.value in helpers]
        assigns: Dict[str, List[cst.BaseExpression]] = {}
        for a in walk(node.body, (cst.Assign, cst.AnnAssign)):
            for t in ([t.target for t in a.targets] if isinstance(a, cst.Assign) else [a.target]):
                if isinstance(t, cst.Attribute) and dotted_name(t.value) == "self" and a.value is not None:
                    assigns.setdefault(t.attr.value, []).append((a.value, a))
        owner = {id(a): fn for fn in scope for a in walk_own(fn.body, (cst.Assign, cst.AnnAssign))}
        for attr, values in assigns.items():
            if any(self._container(v) is None for v, _ in values):
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
        kind = self._container(container)
        added = self._added(target, where)
        elements = self._elements(container) + added
        if kind in (None, "name") or self._registered(target, where, elements):
            return
        kinds = [self._element_kind(e, fn) for e in elements]
        found = {k for k in kinds if k} - {"stateless"}
        if not found:
            return  # no modules, or only activations/pooling that hold nothing to register
        wrapper = _WRAPPER.get(("dict" if kind == "dict" else "list", next(iter(found)))) if len(found) == 1 else None
        prefix = self._nn_prefix()
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

    def _container(self, v) -> Optional[str]:
        if isinstance(v, (cst.List, cst.ListComp)) or isinstance(v, cst.BinaryOperation) and isinstance(v.left, cst.List):
            return "list"
        if isinstance(v, (cst.Dict, cst.DictComp, cst.Tuple)):
            return "tuple" if isinstance(v, cst.Tuple) else "dict"
        if isinstance(v, cst.Call) and not v.args and self.qnames(v.func) & {"builtins.list", "builtins.dict"}:
            return "list" if "builtins.list" in self.qnames(v.func) else "dict"
        return "name" if isinstance(v, cst.Name) else None

    def _elements(self, v) -> List[cst.BaseExpression]:
        v = v.left if isinstance(v, cst.BinaryOperation) else v
        if isinstance(v, (cst.List, cst.Tuple, cst.Dict)):
            return [e.value for e in v.elements]
        return [v.elt] if isinstance(v, cst.ListComp) else [v.value] if isinstance(v, cst.DictComp) else []

    def _added(self, target: str, scope) -> List[cst.BaseExpression]:
        """Values put into ``target`` by ``.append(x)``, ``.extend([...])``, ``.insert(i, x)``, ``[k] = x``, ``+= [...]``."""
        out: List[cst.BaseExpression] = []
        for n in (n for fn in scope for n in walk_own(fn.body, (cst.Call, cst.Assign, cst.AugAssign))):
            if isinstance(n, cst.Call) and isinstance(n.func, cst.Attribute) and n.args \
                    and self.code_for(n.func.value) == target:
                if n.func.attr.value in ("append", "insert"):
                    out.append(n.args[-1].value)
                elif n.func.attr.value in ("extend", "update"):
                    out.extend(self._elements(n.args[0].value) or [n.args[0].value])
            elif isinstance(n, cst.Assign) and any(isinstance(t.target, cst.Subscript)
                                                   and self.code_for(t.target.value) == target for t in n.targets):
                out.append(n.value)
            elif isinstance(n, cst.AugAssign) and self.code_for(n.target) == target:
                out.extend(self._elements(n.value) or [n.value])
        return out

    def _registered(self, target: str, scope, elements) -> bool:
        """The elements reach nn.Module another way: ``target`` handed to a call (``nn.Sequential(*self.layers)``),
        or ``add_module``/``setattr`` applied to them (or inside a loop over ``target``)."""
        mention = re.compile(rf"(?<![\w.]){re.escape(target)}(?!\w)")
        names = {e.value for e in elements if isinstance(e, cst.Name)}
        for fn in scope:
            for c in walk_own(fn.body, cst.Call):
                if not self.qnames(c.func) & _HARMLESS and any(mention.search(self.code_for(a.value)) for a in c.args):
                    return True
                if (dotted_name(c.func) or "").split(".")[-1] in _REGISTERS and (
                        any(names_in(a.value) & names for a in c.args) or any(
                        isinstance(a, cst.For) and mention.search(self.code_for(a.iter)) for a in self.ancestors(c))):
                    return True
        return False

    def _element_kind(self, e, fn) -> Optional[str]:
        if isinstance(e, cst.Name):
            vals = assigned_values(self, fn, e.value)
            e = vals[0] if len(vals) == 1 else e
        if not isinstance(e, cst.Call):
            return None
        tf = torch_function(self, e)
        if tf is not None:
            last = tf.rsplit(".", 1)[-1]
            if not tf.startswith("nn.") or tf.startswith(_NOT_MODULES) or not last[:1].isupper() \
                    or last in _NON_MODULE_CLASSES:
                return None
            return "param" if last == "Parameter" else "stateless" if _STATELESS.fullmatch(last) else "module"
        if isinstance(e.func, cst.Name) and self._local_module_class(e.func.value):
            return "module"
        return None

    def _local_module_class(self, name: str) -> bool:
        key = ("tr608-classes",)
        if key not in self.ctx.cache:
            self.ctx.cache[key] = {} if self.ctx.module is None else {
                c.name.value: c for c in walk(self.ctx.module, cst.ClassDef)}
        cls = self.ctx.cache[key].get(name)
        return cls is not None and name not in self.ctx.names.aliases and is_module_class(self, cls)

    def _string_keys(self, container, target: str, scope) -> bool:
        keys = [getattr(e, "key", None) for e in container.elements] if isinstance(container, cst.Dict) else (
            [container.key] if isinstance(container, cst.DictComp) else [])
        for fn in scope:
            for n in walk_own(fn.body, cst.Assign):
                keys += [t.target.slice[0].slice.value for t in n.targets if isinstance(t.target, cst.Subscript)
                         and self.code_for(t.target.value) == target and isinstance(t.target.slice[0].slice, cst.Index)]
        return all(isinstance(k, cst.FormattedString) or isinstance(k, cst.SimpleString) and "." not in k.value
                   and len(k.evaluated_value) > 0 for k in keys)

    def _nn_prefix(self) -> Optional[str]:
        aliases = self.ctx.names.aliases
        return next((k for k, v in aliases.items() if v == "torch.nn"), None) or \
            next((f"{k}.nn" for k, v in aliases.items() if v == "torch"), None)
