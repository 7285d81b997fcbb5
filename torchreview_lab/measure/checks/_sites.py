"""Helpers shared by the gradient and NaN/Inf checks: the loss a check runs backward from, where each
autograd node was made in the user's forward, and which tensors were made with gradients disabled.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .._frames import Site, user_site
from .._harness import returned_tensor, scalar_loss


def loss_of(out: Any) -> Optional[torch.Tensor]:
    """The scalar a check runs backward from (the probe's choice of tensor, ``_harness.returned_tensor``),
    whether or not it carries a graph: the gradient check reports a loss without one."""
    return scalar_loss(returned_tensor(out))


def is_complex_result(out: Any) -> bool:
    t = returned_tensor(out)
    return isinstance(t, torch.Tensor) and t.is_complex()


def checkable(t: Any) -> bool:
    """A dense floating or complex tensor with real data (sparse, nested, meta tensors are skipped)."""
    return (isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
            and t.layout == torch.strided and not t.is_nested and t.device.type != "meta" and t.numel() > 0)


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def node_label(node: Any) -> str:
    """``SqrtBackward0`` -> ``sqrt``, ``LogSoftmaxBackward0`` -> ``log_softmax``; a custom
    ``torch.autograd.Function`` keeps its class name (``BadSquareBackward`` -> ``BadSquare``)."""
    try:
        name = node.name()
    except Exception:
        name = type(node).__name__
    base = re.sub(r"Backward\d*$", "", name) or name
    if isinstance(node, torch.autograd.function.BackwardCFunction):
        return base
    return _CAMEL.sub("_", base).lower()


class NodeSites(TorchFunctionMode):
    """Maps every autograd node made in the forward to the user's line of the torch call that made it
    (nodes made inside a composite call, a module or a custom Function map to that call's line), so a
    backward op can be placed with ``torch._C._current_autograd_node()``. Strong references to the
    nodes, dropped with the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: Dict[Any, Optional[Site]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") in ("__get__", "__set__"):
            return out
        if not torch.is_grad_enabled():
            return out
        site = None
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            gf = t.grad_fn
            if gf is not None and gf not in self.sites:
                if site is None:
                    site = user_site()
                self._walk(gf, site)
        return out

    def _walk(self, node: Any, site: Optional[Site]) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if n is None or n in self.sites:
                continue
            self.sites[n] = site
            stack.extend(nf for nf, _ in getattr(n, "next_functions", ()) or ())

    def site_of(self, node: Any) -> Optional[Site]:
        return self.sites.get(node) if node is not None else None

    def clear(self) -> None:
        self.sites.clear()
