"""Where a new tensor made in a method of an nn.Module meets the module's own weights (TR401): the module's
device is known there (``next(self.parameters()).device``), so a factory without ``device=`` is a device bug."""
from __future__ import annotations

from typing import Optional, Tuple

import libcst as cst

from ._bindings import derived_names
from ._context import device_move_follows, is_module_class, module_kind, self_attribute_values
from ._knowledge import DEVICE_MOVES
from ._torch import dotted_name, enclosing_class, method_call, names_in, walk, walk_own


def reaches_module_weights(rule, node: cst.Call, fn: cst.FunctionDef) -> Optional[Tuple[cst.ClassDef, str]]:
    """``(class, how)`` when, in a method of an nn.Module (not its constructor), the tensor ``node`` makes (or a
    name computed from it) is passed to a submodule (``self.decoder(z)``), to ``self(...)`` or to a method of
    the class that runs one (``self.decode(z)``), or combined with a parameter (``self.mu + eps``)."""
    cls = enclosing_class(rule, fn)
    if cls is None or fn.name.value == "__init__" or not is_module_class(rule, cls) or device_move_follows(rule, node):
        return None
    names = derived_names(fn.body, [node])
    if any(method_call(c) and method_call(c)[1] in DEVICE_MOVES and names_in(method_call(c)[0]) & names
           for c in walk_own(fn.body, cst.Call)):
        return None  # moved to a device before (or when) it is used
    kinds = {a: {module_kind(rule, None, v) for v in vs} for a, vs in self_attribute_values(rule, cls).items()}
    methods = {d.name.value: d for d in cls.body.body if isinstance(d, cst.FunctionDef)}

    def weighted(f, deep: bool = True) -> bool:
        attr = f.attr.value if isinstance(f, cst.Attribute) and dotted_name(f.value) == "self" else None
        return dotted_name(f) == "self" or attr is not None and ("module" in kinds.get(attr, ()) or deep and (
            attr in methods and any(weighted(c.func, False) for c in walk_own(methods[attr].body, cst.Call))))

    def reads(e) -> bool:
        return e is node or any(n is node for n in walk(e)) or bool(names_in(e) & names)

    for c in walk_own(fn.body, cst.Call):
        if weighted(c.func) and any(reads(a.value) for a in c.args):
            return cls, f"passed to `{rule.code_for(c.func)}(...)`"
    for b in walk_own(fn.body, cst.BinaryOperation):
        for x, o in ((b.left, b.right), (b.right, b.left)):
            if reads(x) and isinstance(o, cst.Attribute) and dotted_name(o.value) == "self" \
                    and "param" in kinds.get(o.attr.value, ()):
                return cls, f"combined with the parameter `{rule.code_for(o)}`"
    return None
