from __future__ import annotations

import bisect
import re
from typing import Optional

import libcst as cst

from ..findings import Fix
from ._knowledge import OUT_OF_PLACE_TENSOR_ONLY, OUT_OF_PLACE_WHEN_TENSOR
from ._torch import assigned_values, dotted_name, enclosing_function, kwarg, method_call, torch_function, walk
from .base import Invalid, Rule


_PROFILED = re.compile(r"profil|record_function|benchmark|Timer", re.I)


def _makes_tensor(function: str) -> bool:
    """``torch.randn``/``torch.as_tensor``/``F.pad``...: a torch function that returns a tensor (not a class,
    a module, an optimizer or a utility object such as a store or a compiled model)."""
    if "." in function:
        return function.startswith(("nn.functional.", "linalg.", "fft.", "special.")) and function[-1:].islower()
    return function[:1].islower()


class OutOfPlaceResultDiscarded(Rule):
    """An out-of-place tensor op is called as a statement: its result is thrown away.

    What it does:
        Flags expression statements such as ``mask.masked_fill(pad, 0)``, ``x.clamp(0, 1)``,
        ``x.unsqueeze(0)`` or ``torch.clamp(x, 0, 1)`` (no ``out=``): ops that return a new tensor
        and leave their input unchanged. ``x.to(device)``, ``x.float()``, ``x.cuda()``, ``x.detach()``
        and arithmetic methods are flagged only when ``x`` is bound to a torch call in the same scope:
        on an ``nn.Module`` the first four work in place. The last statement of a notebook cell (its
        displayed value) is left alone.

    Why is this bad:
        Tensors are not modified by these methods (only their ``_`` twins, ``clamp_``, ``masked_fill_``,
        work in place): the line does nothing, and the code after it runs on the old values. A batch
        "moved" with ``x.to(device)`` stays on the CPU, a mask "applied" with ``masked_fill`` is not,
        a value "clipped" with ``clamp`` is not. Nothing fails at this line.

    Example:
        scores.masked_fill(~mask, float("-inf"))
        x.to(device)

    Use instead:
        scores = scores.masked_fill(~mask, float("-inf"))    # or scores.masked_fill_(...)
        x = x.to(device)
    """

    code = "TR613"
    title = "Result of an out-of-place tensor op discarded"
    category = "algorithm-correctness"
    severity = {"research": "high", "production": "high"}
    autofix = True
    VALID = [
        "import torch\ndef f(scores, mask):\n    scores = scores.masked_fill(~mask, 0.0)\n    scores.clamp_(0, 1)\n    return scores\n",
        "import torch\ndef f(model, device):\n    model.to(device)\n    model.float()\n    model.cuda()\n    return model\n",
        "import torch\ndef f(a, b, c):\n    torch.add(a, b, out=c)\n    torch.clamp(c, 0, 1, out=c)\n    return c\n",
        "seen = set()\nseen.add(3)\nitems = [3, 1]\nitems.sort()\n",
        "import numpy as np\nimport torch\ndef f(a):\n    np.clip(a, 0, 1, out=a)\n    torch.manual_seed(0)\n    return a\n",
        "import torch\ndef f(x, y):\n    print(x.clamp(0, 1))\n    return y.unsqueeze(0)\n",
        "import torch.nn as nn\nclass M(nn.Module):\n    def forward(self, x, ax):\n        self.relu(x)  # a hook check\n"
        "        ax.scatter(x[:, 0], x[:, 1])\n        return self.expand(x)\n",
        "def move(self, d, tok, texts):\n    for dl in self.loaders:\n        dl.to(d)\n    for batch in tok_loader:\n"
        "        batch.to(d)  # a tokenizer's BatchEncoding moves in place\n",
        "import torch\nfrom torch.utils._ordered_set import OrderedSet\ndef f(t1, t2, m):\n    seen = OrderedSet()\n    seen.add(t1)\n"
        "    model = torch.jit.script(m)\n    model.cpu()\n    with torch.profiler.profile() as prof:\n        torch.add(t1, t2)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef attend(scores, mask):\n    scores.masked_fill(mask == 0, float('-inf'))\n"
                "    return torch.softmax(scores, -1)\n", line=3,
                expected_fix="import torch\ndef attend(scores, mask):\n    scores = scores.masked_fill(mask == 0, float('-inf'))\n"
                "    return torch.softmax(scores, -1)\n"),
        Invalid("import torch\ndef step(batch, device):\n    x = torch.as_tensor(batch)\n    x.to(device)\n    return x\n", line=4,
                expected_fix="import torch\ndef step(batch, device):\n    x = torch.as_tensor(batch)\n    x = x.to(device)\n    return x\n"),
        Invalid("import torch\ndef norm(self, x):\n    torch.clamp(x, min=1e-6)\n    self.h.unsqueeze(1)\n    return x\n", line=3),
        Invalid("import torch\ndef f(w):\n    w = torch.randn(3, 3)\n    w.float()\n    w.t()\n    return w\n", line=4),
        Invalid("def train(model, train_loader, device):\n    for images, labels in train_loader:\n        images.to(device)\n"
                "        labels.to(device)\n        model(images).sum().backward()\n", line=3),
    ]

    def visit_Expr(self, node: cst.Expr) -> None:
        call = node.value
        if not isinstance(call, cst.Call) or self._notebook_display(node) or any(
                isinstance(a, cst.With) and _PROFILED.search(self.code_for(a.items[0])) for a in self.ancestors(node)):
            return  # a cell's displayed value; an op run for a profiler or benchmark to record
        mc = method_call(call)
        tf = torch_function(self, call)
        if tf is not None and "." not in tf:  # torch.clamp(x, ...) as a statement
            name, target = tf, call.args[0].value if call.args and not call.args[0].keyword else None
            if name not in OUT_OF_PLACE_TENSOR_ONLY | OUT_OF_PLACE_WHEN_TENSOR or kwarg(call, "out") is not None:
                return
        elif mc is not None and not self._imported(mc[0]):  # x.method(...), x not a module like `torch`/`np`
            target, name = mc
            if name not in OUT_OF_PLACE_TENSOR_ONLY and not (name in OUT_OF_PLACE_WHEN_TENSOR and self._is_tensor(target)):
                return
        else:
            return
        text = self.code_for(call)
        fixable = target is not None and isinstance(target, (cst.Name, cst.Attribute))
        after = f"{self.code_for(target)} = {text}" if fixable else f"<name> = {text}"
        twin = f" (or use the in-place `{name}_`, where torch has one)" if mc is not None else ""
        self.report(
            node,
            problem=f"`{text}` returns a new tensor and leaves its input unchanged; the result is discarded. "
                    f"Assign it{twin}.",
            impact=("The line has no effect: the code after it uses the old values (a mask not applied, a value "
                    "not clipped, a tensor not moved), silently."),
            fix=Fix(before=text, after=after),
            replacement=cst.Assign(targets=[cst.AssignTarget(target=target)], value=call) if fixable else None,
        )

    def _imported(self, target: cst.BaseExpression) -> bool:
        """``target`` is (an attribute of) an imported module (``np.clip(...)`` is a function call) or
        ``self`` itself (``self.relu(h)`` calls a submodule or a method, not a tensor op)."""
        name = dotted_name(target)
        return name is not None and (name == "self" or name.split(".")[0] in self.ctx.names.aliases)

    def _is_tensor(self, target: cst.BaseExpression) -> bool:
        """``target`` is a name bound (in this scope) only to results of torch calls, never an nn/optim
        object, or a batch a loop takes from a data loader."""
        if not isinstance(target, cst.Name):
            return False
        if any(isinstance(a, cst.For) and isinstance(a.target, (cst.Tuple, cst.List))
               and "loader" in self.code_for(a.iter).lower() and "loaders" not in self.code_for(a.iter).lower()
               and target.value in {n.value for n in walk(a.target, cst.Name)} for a in self.ancestors(target)):
            return True  # unpacked from a DataLoader's batches: `for x, y in train_loader: x.to(device)`
        values = assigned_values(self, enclosing_function(self, target), target.value)
        kinds = [torch_function(self, v) if isinstance(v, cst.Call) else None for v in values]
        return bool(kinds) and all(k is not None and _makes_tensor(k) for k in kinds)

    def _notebook_display(self, node: cst.Expr) -> bool:
        """The last top-level statement of a notebook cell: Jupyter displays its value."""
        starts = self.ctx.options.get("cell_starts") or []
        stmt = self.parent(node)
        if self.ctx.options.get("kind") != "notebook" or not isinstance(self.parent(stmt), cst.Module):
            return False
        body = self.parent(stmt).body
        i = next(k for k, s in enumerate(body) if s is stmt)
        line = self.line_of(stmt)
        cell_end: Optional[int] = None
        j = bisect.bisect_right(starts, line)
        if j < len(starts):
            cell_end = starts[j]
        return i + 1 == len(body) or cell_end is not None and self.line_of(body[i + 1]) >= cell_end
