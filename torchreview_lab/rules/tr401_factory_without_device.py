from __future__ import annotations

import libcst as cst

from ..findings import Fix
from ._context import graph_function, under_device_context
from ._devices import (cpu_by_design, inherits_device, inline_meets, input_tensors, meets_inputs, returned_directly,
                       zero_dim_factory)
from ._knowledge import TENSOR_FACTORIES
from ._module_weights import reaches_module_weights
from ._torch import enclosing_function, function_facts, kwarg, torch_function, with_keyword
from .base import Invalid, Rule


_FACTORIES = TENSOR_FACTORIES | {"scalar_tensor"}
_ZERO_DIM = "a 0-dim tensor (it combines with a GPU tensor, at the cost of a host->device copy)"
_HOW = {"meets": (None, "combined with an input tensor"),
        "indexes": ("low", "used to index an input tensor (allowed, but copied host->device on every call)"),
        "returned": ("medium", "returned from the forward on the default device")}


class FactoryWithoutDevice(Rule):
    """A tensor factory without ``device=`` inside a function that receives tensors.

    What it does:
        Flags ``torch.zeros``/``ones``/``empty``/``full``/``arange``/``linspace``/``eye``/
        ``rand*``/``tensor`` ... called without ``device=`` inside a function whose tensor inputs
        can live on a GPU, when the new tensor then meets a tensor computed from those inputs:
        High for arithmetic, comparison, an operation that needs both on one device (``cat``,
        ``where``, ``F.*``, ``x.masked_fill(new, 0)``, ``new.scatter_add_(0, i, x)``), indexing it with
        an input tensor or writing input values into it. Medium when it is only returned from a
        ``forward``. Low when it only indexes an input tensor (``x[torch.arange(B), t]``: PyTorch
        accepts CPU indices for a CUDA tensor, at one host->device copy) and for a 0-dim tensor
        (``torch.tensor(2.0)``, ``torch.zeros(())``), which combines legally with a CUDA tensor.
        In a method of an nn.Module that takes no tensors (``sample(self, n)``), High when the new
        tensor is passed to a submodule, ``self(...)`` or a method running one, or meets a parameter.
        Silent when the new tensor never meets an input tensor, and in code that runs on the CPU by
        design: DataLoader ``collate_fn=``/``worker_init_fn=`` callables (and collate functions that
        take a list of samples), ``__getitem__``/``__iter__`` of torch.utils.data Dataset/Sampler
        subclasses and the helpers they call, and nn.Module constructors.

    Why is this bad:
        The factory allocates on the default device (the CPU). The code passes every CPU test and
        fails on the first GPU run with "Expected all tensors to be on the same device", or, when
        the CPU tensor is only written into, runs a slow host-device copy per step.

    Example:
        def masked(data, lengths):
            mask = torch.zeros(data.shape[0], data.shape[1])
            return data * mask

    Use instead:
        mask = torch.zeros(data.shape[0], data.shape[1], device=data.device, dtype=data.dtype)
        # or data.new_zeros(...), torch.zeros_like(data)
    """

    code = "TR401"
    title = "Tensor factory without device= in a function that receives tensors"
    category = "device-handling"
    severity = {"research": "high", "production": "high"}
    VALID = [
        "import torch\ndef f(x):\n    m = torch.zeros(x.shape[0], device=x.device)\n    return x * m\n",
        "import torch\ndef f(x):\n    return x * torch.zeros_like(x)\n",
        "import torch\ndef make(n):\n    return torch.zeros(n, n)\n",
        "import torch\ndef f(x):\n    with torch.device(x.device):\n        m = torch.ones(3)\n    return x + m\n",
        "import torch\ndef f(x):\n    m = torch.arange(x.shape[1]).to(x.device)\n    return x * m\n",
        "import torch\nfrom torch.utils.data import DataLoader\ndef pad(batch):\n    xs, ys = zip(*batch)\n"
        "    lens = torch.tensor([x.size(0) for x in xs])\n    x = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)\n"
        "    mask = torch.arange(x.size(1))[None, :] < lens[:, None]\n    return x, mask\n"
        "def loader(ds):\n    return DataLoader(ds, batch_size=8, collate_fn=pad)\n",
        "import torch\nfrom torch.utils.data import Dataset\nclass D(Dataset):\n    def __getitem__(self, i):\n"
        "        x = self.data[i]\n        return x, torch.tensor(self.labels[i]) + x.sum()\n",
        "import torch\ndef f(x):\n    n = torch.arange(x.size(0)).sum().item()\n    return x * n\n",
        "import torch, torch.nn as nn\nclass G(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(8, 8)\n    def sample(self, n):\n        p = next(self.parameters())\n"
        "        return self.fc(torch.randn(n, 8, device=p.device))\n    def init_state(self, n):\n        return torch.zeros(n, 8)\n",
        "import torch\ndef log_z(em, crf):\n    terms = []\n    rec(0, torch.zeros((), dtype=torch.float64), em, terms)\n"
        "    return torch.logsumexp(torch.stack(terms), 0)\n",
    ]
    INVALID = [
        Invalid("import torch\ndef masked(data, lengths):\n    b, T = data.shape[:2]\n    mask = torch.zeros(b, T)\n    return data * mask\n", line=4),
        Invalid("from torch import arange\ndef pos(x):\n    p = arange(x.size(1))\n    return x + p\n", line=3),
        Invalid("import torch as th\nclass M:\n    def forward(self, x):\n        h = th.randn(x.shape[0], 4)\n        return h\n", line=4),
        Invalid("import torch\ndef gold(em, tags):\n    return em[torch.arange(em.size(0)), tags].sum()\n", line=3),
        Invalid("import torch\ndef causal(scores: torch.Tensor):\n    T = scores.size(-1)\n"
                "    return scores.masked_fill(torch.ones(T, T).triu(1).bool(), float('-inf'))\n", line=4),
        Invalid("import torch\ndef pad(x):\n    return torch.cat([x, torch.zeros(x.size(0), 1)], dim=1)\n", line=3),
        Invalid("import torch\ndef shift(x: torch.Tensor):\n    return x + torch.tensor(1.0)\n", line=3),
        Invalid("import torch, torch.nn as nn\nclass VAE(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.dec = nn.Linear(8, 784)\n    def decode(self, z):\n        return self.dec(z)\n"
                "    @torch.no_grad()\n    def sample(self, n):\n        z = torch.randn(n, 8)\n        return self.decode(z)\n",
                line=10),
    ]

    def _module_method(self, node: cst.Call, fn: cst.FunctionDef, fname: str) -> None:
        found = None if zero_dim_factory(self, node, fname) else reaches_module_weights(self, node, fn)
        if found is not None:
            self.report(node, problem=(f"`torch.{fname}(...)` has no `device=` in `{fn.name.value}`, a method of the "
                                       f"nn.Module `{found[0].name.value}`; the new tensor is {found[1]}, whose weights "
                                       "live wherever the module was moved."),
                        impact="After `model.to('cuda')` this raises 'Expected all tensors to be on the same device'.",
                        fix=Fix(before=self.code_for(node), after=self.code_for(with_keyword(
                            node, "device", cst.parse_expression("next(self.parameters()).device")))))

    def visit_Call(self, node: cst.Call) -> None:
        fname = torch_function(self, node)
        if fname not in _FACTORIES or kwarg(node, "device") is not None:
            return
        if any(a.star == "**" for a in node.args):
            return
        fn = enclosing_function(self, node)
        if fn is None or under_device_context(self, node) or cpu_by_design(self, fn):
            return
        if not function_facts(self, fn).tensor_params:
            return self._module_method(node, fn, fname)
        facts = function_facts(self, fn)
        inputs = input_tensors(self, fn)
        if inherits_device(self, node, fname, inputs):
            return
        where = inline_meets(self, node, inputs)
        if where and where.startswith("assigned:"):
            target = where.split(":", 1)[1]
            where = meets_inputs(self, fn, target, inputs - {target}) or \
                ("returned" if returned_directly(self, fn, target) else None)
        if where == "returned" and not (facts.is_forward or graph_function(self, node)):
            return  # a helper's caller decides where its result goes
        if where not in _HOW:
            return  # moved to a device, or never meets an input tensor nor leaves the function
        severity, how = ("low", _ZERO_DIM) if zero_dim_factory(self, node, fname) else _HOW[where]
        ref = sorted(facts.tensor_params)[0]
        self.report(
            node,
            problem=(f"`torch.{fname}(...)` has no `device=` although `{fn.name.value}` receives tensors "
                     f"({', '.join(sorted(facts.tensor_params))}) that may live on a GPU; the result is {how}."),
            impact=("On a GPU this raises 'Expected all tensors to be on the same device' or copies host->device "
                    "every call; CPU-only tests cannot catch it."),
            fix=Fix(before=self.code_for(node),
                    after=self.code_for(with_keyword(node, "device", cst.parse_expression(f"{ref}.device")))),
            severity=severity,
        )
