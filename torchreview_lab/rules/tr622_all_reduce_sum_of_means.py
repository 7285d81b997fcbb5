from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value
from ._torch import enclosing_function, kwarg, method_call, positional, torch_function, walk, walk_own
from .base import Invalid, Rule

_MEANS = frozenset({"mean", "nanmean"})


class AllReduceSumOfMeans(Rule):
    """A per-rank mean or ratio is summed over ranks by ``all_reduce`` and never divided by the world size.

    What it does:
        Flags ``dist.all_reduce(t)`` (the default ``op=ReduceOp.SUM``, or ``SUM`` named) when ``t`` holds a
        mean or a ratio computed on this rank (``t = correct / total``, ``t = loss.mean()``,
        ``torch.mean(x)``) and the function never divides ``t`` afterwards (``t / world_size``, ``t /= n``,
        ``t.div_(n)``). Sums and counts reduced first and divided after (the correct pattern),
        ``ReduceOp.AVG`` and reductions of a name that is later divided are not flagged.

    Why is this bad:
        ``all_reduce`` with SUM adds the tensors of all ranks. The sum of per-rank means is
        ``world_size`` times the global mean: accuracy above 100% on 8 GPUs, a validation loss that
        grows with the number of GPUs, and a "best" checkpoint chosen on a wrong number. Nothing fails.

    Example:
        acc = correct / total
        dist.all_reduce(acc)
        return acc.item()

    Use instead:
        dist.all_reduce(correct); dist.all_reduce(total)   # reduce the sums, divide once
        return (correct / total).item()
        # or: dist.all_reduce(acc, op=dist.ReduceOp.AVG)
    """

    code = "TR622"
    title = "all_reduce sums per-rank means (result is world_size times too large)"
    category = "algorithm-correctness"
    severity = {"research": "critical", "production": "critical"}
    VALID = [
        "import torch.distributed as dist\ndef acc(correct, total):\n    dist.all_reduce(correct)\n    dist.all_reduce(total)\n"
        "    return (correct / total).item()\n",
        "import torch.distributed as dist\ndef avg(loss):\n    loss = loss.mean()\n    dist.all_reduce(loss)\n"
        "    return loss / dist.get_world_size()\n",
        "import torch.distributed as dist\ndef avg(loss):\n    t = loss.mean()\n    dist.all_reduce(t, op=dist.ReduceOp.AVG)\n"
        "    return t\n",
        "import torch.distributed as dist\ndef avg(loss, world):\n    t = loss.mean()\n    dist.all_reduce(t)\n"
        "    t /= world\n    return t\n",
        "import torch.distributed as dist\ndef mx(loss):\n    t = loss.mean()\n    dist.all_reduce(t, op=dist.ReduceOp.MAX)\n"
        "    return t\n",
    ]
    INVALID = [
        Invalid("import torch.distributed as dist\ndef validate(correct, total):\n    acc = correct / total\n"
                "    dist.all_reduce(acc)\n    return acc.item()\n", line=4),
        Invalid("import torch\nimport torch.distributed as dist\ndef epoch_loss(losses):\n    avg = torch.stack(losses).mean()\n"
                "    dist.all_reduce(avg, op=dist.ReduceOp.SUM)\n    print(avg.item())\n", line=5),
    ]

    def visit_Call(self, node: cst.Call) -> None:
        tf = torch_function(self, node)
        if tf not in ("distributed.all_reduce", "distributed.all_reduce_coalesced") or not positional(node):
            return
        op = kwarg(node, "op") or (positional(node)[1] if len(positional(node)) > 1 else None)
        if op is not None and not self.code_for(op.value).endswith("SUM"):
            return
        t = positional(node)[0].value
        fn = enclosing_function(self, node)
        if not isinstance(t, cst.Name) or fn is None:
            return
        value = reaching_value(self, fn, t.value, node)
        kind = _mean_kind(self, value)
        if kind is None or self._divided_after(fn, node, t.value):
            return
        self.report(
            node,
            problem=(f"`{t.value}` is {kind} on this rank, and `{self.code_for(node)}` adds it up over all ranks "
                     f"(SUM); `{t.value}` is not divided by the world size afterwards."),
            impact=(f"The result is world_size times the global {kind.split()[-1]}: metrics and losses are scaled by "
                    "the number of GPUs, checkpoints are chosen on wrong numbers, and results change with the cluster."),
            fix=Fix(before=self.code_for(node),
                    after=f"{self.code_for(node.func)}({t.value}, op=dist.ReduceOp.AVG)  # or divide by world_size"),
        )

    def _divided_after(self, fn: cst.FunctionDef, call: cst.Call, name: str) -> bool:
        line = self.line_of(call)
        for n in walk_own(fn.body):
            if self.line_of(n) < line:
                continue
            if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Divide) and _is(n.left, name):
                return True
            if isinstance(n, cst.AugAssign) and isinstance(n.operator, (cst.DivideAssign, cst.MultiplyAssign)) \
                    and _is(n.target, name):
                return True
            mc = method_call(n)
            if mc and mc[1] in ("div_", "div", "mul_", "true_divide") and _is(mc[0], name):
                return True
        return False


def _is(expr: cst.CSTNode, name: str) -> bool:
    return isinstance(expr, cst.Name) and expr.value == name or isinstance(expr, cst.Call) and any(
        isinstance(x, cst.Name) and x.value == name for x in walk(expr.func))


def _mean_kind(rule, value: Optional[cst.BaseExpression]) -> Optional[str]:
    """``"a ratio"`` for ``a / b``, ``"a mean"`` for ``x.mean()``/``torch.mean(x)`` (also ``.float()``-cast)."""
    while isinstance(value, cst.Call) and (method_call(value) or (None, ""))[1] in ("float", "double", "detach", "clone"):
        value = method_call(value)[0]
    if isinstance(value, cst.BinaryOperation) and isinstance(value.operator, cst.Divide):
        return "a ratio (a per-rank mean)"
    if isinstance(value, cst.Call):
        mc = method_call(value)
        if torch_function(rule, value) in _MEANS or torch_function(rule, value) is None and mc and mc[1] in _MEANS:
            return "a mean"
    return None
