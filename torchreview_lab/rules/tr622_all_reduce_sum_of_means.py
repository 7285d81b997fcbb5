from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._bindings import reaching_value
from ._rank_means import mean_kind
from ._torch import enclosing_function, kwarg, method_call, names_in, positional, torch_function, walk_own
from .base import Invalid, Rule


class AllReduceSumOfMeans(Rule):
    """A per-rank mean or ratio is summed over ranks by ``all_reduce`` and never divided by the world size.

    What it does:
        Flags ``dist.all_reduce(t)`` (the default ``op=ReduceOp.SUM``, or ``SUM`` named) when ``t`` holds a
        mean or a ratio computed on this rank (``t = correct / total``, ``t = loss.mean()``, ``torch.mean(x)``, a
        mean-reduced torch loss, or a stack of such values: ``torch.stack([loss_sum / n, correct / n])``,
        ``torch.tensor([avg_loss, acc])``) and the function never divides ``t``, or what it unpacks into
        (``val_loss, val_acc = t.tolist()``), afterwards (``t / world_size``, ``t /= n``, ``t.div_(n)``). Sums and
        counts reduced first and divided after (the correct pattern) and ``ReduceOp.AVG`` are not flagged.

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
        "import torch, torch.distributed as dist\ndef ev(loss_sum, correct, seen):\n"
        "    stats = torch.stack([loss_sum, correct, seen])\n    dist.all_reduce(stats)\n    return stats[:2] / stats[2]\n",
        "import torch, torch.distributed as dist\ndef ev(loss_sum, correct, seen):\n"
        "    stats = torch.stack([loss_sum / seen, correct / seen])\n    dist.all_reduce(stats)\n"
        "    val_loss, val_acc = stats.tolist()\n    return val_loss / dist.get_world_size(), val_acc / dist.get_world_size()\n",
    ]
    INVALID = [
        Invalid("import torch.distributed as dist\ndef validate(correct, total):\n    acc = correct / total\n"
                "    dist.all_reduce(acc)\n    return acc.item()\n", line=4),
        Invalid("import torch\nimport torch.distributed as dist\ndef epoch_loss(losses):\n    avg = torch.stack(losses).mean()\n"
                "    dist.all_reduce(avg, op=dist.ReduceOp.SUM)\n    print(avg.item())\n", line=5),
        Invalid("import torch\nimport torch.distributed as dist\ndef evaluate(loss_sum, correct, seen):\n"
                "    stats = torch.stack([loss_sum / seen, correct / seen])\n    dist.all_reduce(stats)\n"
                "    val_loss, val_acc = stats.tolist()\n    return val_loss, val_acc\n", line=5),
        Invalid("import torch.nn.functional as F\nimport torch.distributed as dist\ndef step(model, x, y):\n"
                "    loss = F.cross_entropy(model(x), y)\n    loss.backward()\n    logged = loss.detach().clone()\n"
                "    dist.all_reduce(logged)\n    return logged.item()\n", line=7),
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
        kind = mean_kind(self, fn, reaching_value(self, fn, t.value, node))
        if kind is None or self._divided_after(fn, node, t.value):
            return
        self.report(
            node,
            problem=(f"`{t.value}` is {kind} on this rank, and `{self.code_for(node)}` adds it up over all ranks "
                     f"(SUM); `{t.value}` is not divided by the world size afterwards."),
            impact=("The result is world_size times the global mean: metrics and losses are scaled by "
                    "the number of GPUs, checkpoints are chosen on wrong numbers, and results change with the cluster."),
            fix=Fix(before=self.code_for(node),
                    after=f"{self.code_for(node.func)}({t.value}, op=dist.ReduceOp.AVG)  # or divide by world_size"),
        )

    def _divided_after(self, fn: cst.FunctionDef, call: cst.Call, name: str) -> bool:
        """``name``, or a name later computed from it (``loss, acc = stats.tolist()``), is divided or scaled
        after ``call``."""
        line = self.line_of(call)
        later = [n for n in walk_own(fn.body) if self.line_of(n) >= line]
        held = {name}
        for _ in range(2):
            held |= {b for a in later if isinstance(a, cst.Assign) and names_in(a.value) & held
                     for t in a.targets for b in names_in(t.target)}
        for n in later:
            if isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Divide) and names_in(n.left) & held:
                return True
            if isinstance(n, cst.AugAssign) and isinstance(n.operator, (cst.DivideAssign, cst.MultiplyAssign)) \
                    and names_in(n.target) & held:
                return True
            mc = method_call(n)
            if mc and mc[1] in ("div_", "div", "mul_", "mul", "true_divide") and names_in(mc[0]) & held:
                return True
        return False

