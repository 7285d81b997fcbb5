"""Helpers shared by the gradient and NaN/Inf checks: the loss a check runs backward from, where each
autograd node was made in the user's forward, and which tensors were made with gradients disabled.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .._frames import Site, user_site
from ._base import as_loss


def _returned_tensor(out: Any) -> Any:
    """The value ``as_loss`` starts from (the first element of a tuple, ``dict["loss"]``)."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, dict) and "loss" in out:
        out = out["loss"]
    return out


def loss_of(out: Any) -> Optional[torch.Tensor]:
    """Like ``as_loss`` but real: a complex result goes backward from ``|out|.sum()`` (a complex scalar
    cannot start a backward pass). Non-strided (sparse) results are summed densely."""
    t = _returned_tensor(out)
    if isinstance(t, torch.Tensor) and t.is_complex():
        if t.layout != torch.strided:
            t = t.to_dense()
        return t.abs() if t.numel() == 1 else t.abs().sum()
    if isinstance(t, torch.Tensor) and t.layout != torch.strided and t.is_floating_point():
        t = t.to_dense()
        return t if t.numel() == 1 else t.sum()
    return as_loss(out)


def is_complex_result(out: Any) -> bool:
    t = _returned_tensor(out)
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
    backward op can be placed with ``torch._C._current_autograd_node()``. Also remembers the tensors
    made while gradients were disabled (``torch.no_grad`` / ``inference_mode``) and where.
    Strong references to the nodes, dropped with the mode."""

    def __init__(self, track_no_grad: bool = False) -> None:
        super().__init__()
        self.sites: Dict[Any, Optional[Site]] = {}
        self.track_no_grad = track_no_grad
        self.no_grad: Dict[int, Tuple[Any, Optional[Site]]] = {}  # id -> (weakref, site)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") in ("__get__", "__set__"):
            return out
        grad_on = torch.is_grad_enabled()
        if not grad_on and not self.track_no_grad:
            return out
        site = None
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            if grad_on:
                gf = t.grad_fn
                if gf is not None and gf not in self.sites:
                    if site is None:
                        site = user_site()
                    self._walk(gf, site)
            elif self.track_no_grad:
                import weakref

                if site is None:
                    site = user_site()
                try:
                    self.no_grad[id(t)] = (weakref.ref(t), site)
                except TypeError:
                    pass
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

    def made_without_grad(self, t: Any) -> Optional[Tuple[Optional[Site]]]:
        """``(site,)`` when ``t`` was returned by a torch call under ``no_grad``/``inference_mode``
        (or is an inference tensor), else None."""
        if not isinstance(t, torch.Tensor):
            return None
        hit = self.no_grad.get(id(t))
        if hit is not None and hit[0]() is t:
            return (hit[1],)
        if t.is_inference():
            return (None,)
        return None

    def clear(self) -> None:
        self.sites.clear()
        self.no_grad.clear()
