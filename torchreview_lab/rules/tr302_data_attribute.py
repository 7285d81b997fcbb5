from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._no_autograd import benign_data_write, parameter_data_in_compute
from ._torch import dotted_name, enclosing_function, function_facts
from .base import Invalid, Rule

# In-place tensor methods that, called on ``x.data``, mutate the tensor behind autograd's back.
_AUG_TO_METHOD = {
    cst.MultiplyAssign: "mul_", cst.AddAssign: "add_", cst.SubtractAssign: "sub_", cst.DivideAssign: "div_",
}
_PARAM_HINTS = ("weight", "bias", "param", "grad", "embedding", "tensor")


class DataAttribute(Rule):
    """``.data`` is read or written, bypassing autograd.

    What it does:
        Flags writes through ``x.data`` (``w.data *= f``, ``w.data = t``, ``w.data.copy_(t)``) at
        medium severity (low in weight initialisation, EMA/teacher copies and manual optimizer
        updates, where no graph holds the tensor) and reads of a tensor's ``.data`` at low severity; high for a module's own
        ``nn.Parameter`` read inside a computation outside set-up (``torch.exp(self.log_A.data)``).

    Why is this bad:
        ``.data`` returns a tensor that shares storage with ``x`` but is invisible to autograd:
        in-place changes through it are not recorded and do not bump the version counter, so a
        backward pass that saved ``x`` silently uses the modified values and returns wrong
        gradients instead of raising. It also hides the mutation from ``torch.compile``.

    Example:
        w.data *= factor

    Use instead:
        with torch.no_grad():
            w.mul_(factor)
        # and x.detach() for a graph-free read
    """

    code = "TR302"
    title = "`.data` bypasses autograd"
    category = "gradient-flow"
    severity = {"research": "medium", "production": "medium"}
    autofix = True
    VALID = [
        "import torch\ndef scale_(w, f):\n    with torch.no_grad():\n        w.mul_(f)\n    return w\n",
        "def load(batch):\n    return batch.data\n",
        "class Box:\n    def __init__(self, data):\n        self.data = data\n",
        "from torch.utils import data\nloader = data.DataLoader([])\n",
    ]
    INVALID = [
        Invalid("def scale_(w, factor):\n    w.data *= factor\n    return w\n", line=2,
                expected_fix="def scale_(w, factor):\n    with torch.no_grad():\n        w.mul_(factor)\n    return w\n"),
        Invalid("import torch\ndef reset(model):\n    for p in model.parameters():\n        p.data.copy_(torch.zeros_like(p))\n", line=4),
        Invalid("def assign(layer, t):\n    layer.weight.data = t\n", line=2),
        Invalid("import torch\nimport torch.nn as nn\nclass S(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.log_a = nn.Parameter(torch.zeros(4))\n    def forward(self, x):\n"
                "        return x * torch.exp(self.log_a.data)\n", line=8),
    ]

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        recv = self._data_receiver(node.target)
        if recv is None:
            return
        method = _AUG_TO_METHOD.get(type(node.operator))
        r = self.code_for(recv)
        after = f"with torch.no_grad():\n    {r}.{method}({self.code_for(node.value)})" if method else \
            f"with torch.no_grad():\n    {r}{self.code_for(node.operator).strip()}{self.code_for(node.value)}"
        repl = None
        line = self.parent(node)
        if method and isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1:
            stmt = cst.parse_statement(after + "\n")
            repl = stmt.with_changes(leading_lines=line.leading_lines)
            self._write(line, r, after, repl)
            return
        self._write(node, r, after, None)

    def visit_Assign(self, node: cst.Assign) -> None:
        for t in node.targets:
            recv = self._data_receiver(t.target)
            if recv is not None:
                r = self.code_for(recv)
                self._write(node, r, f"with torch.no_grad():\n    {r}.copy_({self.code_for(node.value)})", None)

    def visit_Call(self, node: cst.Call) -> None:
        f = node.func
        if isinstance(f, cst.Attribute) and f.attr.value.endswith("_") and not f.attr.value.startswith("_"):
            recv = self._data_receiver(f.value)
            if recv is not None:
                r = self.code_for(recv)
                args = ", ".join(self.code_for(a) for a in node.args)
                self._write(node, r, f"with torch.no_grad():\n    {r}.{f.attr.value}({args})", None)

    def visit_Attribute(self, node: cst.Attribute) -> None:
        recv = self._data_receiver(node)
        if recv is None or self._is_write(node):
            return
        if parameter_data_in_compute(self, recv, node):
            r = self.code_for(recv)
            return self.report(node, severity="high", fix=Fix(before=self.code_for(node), after=r), problem=(
                f"`{self.code_for(node)}` reads the parameter `{r}` through `.data` inside a computation: autograd "
                "does not see this use."), impact=(f"No gradient reaches `{r}` through this result: if this is its "
                                                   "only use, the optimizer never changes it."))
        if not self._looks_tensor(recv, node):
            return
        self.report(
            node, severity="low",
            problem=f"`{self.code_for(node)}` reads a tensor through `.data`, outside autograd's view.",
            impact="If the result is later modified in place, gradients that depend on it become silently wrong.",
            fix=Fix(before=self.code_for(node), after=f"{self.code_for(recv)}.detach()"),
        )

    # -- helpers ------------------------------------------------------------------------------
    def _data_receiver(self, node) -> Optional[cst.BaseExpression]:
        if not (isinstance(node, cst.Attribute) and node.attr.value == "data"):
            return None
        recv = node.value
        if isinstance(recv, cst.Name) and recv.value in ("self", "cls"):
            return None
        if any(q.startswith(("torch.utils", "torch_geometric")) for q in self.qnames(node)):
            return None
        return recv

    def _is_write(self, node) -> bool:
        p = self.parent(node)
        if isinstance(p, cst.AugAssign) and p.target is node:
            return True
        if isinstance(p, cst.AssignTarget):
            return True
        if isinstance(p, cst.Attribute) and p.attr.value.endswith("_") and isinstance(self.parent(p), cst.Call):
            return True
        return False

    def _looks_tensor(self, recv, node) -> bool:
        name = (dotted_name(recv) or "").lower()
        if any(h in name.split(".")[-1] for h in _PARAM_HINTS) or name.split(".")[-1] in ("p", "w", "x", "t"):
            return True
        fn = enclosing_function(self, node)
        return fn is not None and isinstance(recv, cst.Name) and recv.value in function_facts(self, fn).tensor_params

    def _write(self, node, recv_code: str, after: str, repl) -> None:
        self.report(
            node, severity="low" if benign_data_write(self, node) else None,
            problem=f"`{self.code_for(node).strip()}` modifies `{recv_code}` through `.data`, which autograd does not track.",
            impact=("The change bypasses the version counter: a backward pass that saved this tensor uses the "
                    "new values and returns wrong gradients without an error."),
            fix=Fix(before=self.code_for(node).strip(), after=after),
            replacement=repl,
        )
