"""Calling conventions shared by the probe and the checks.

A *harness* is ``harness(T)`` or ``harness(T, device=...)``: it builds inputs of size ``T`` and runs
the computation, returning the loss or the output (or nothing). When it accepts ``device`` the probe
passes the device being measured; otherwise the probe runs it under ``with torch.device(...)`` so
factory calls without ``device=`` land on that device.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Optional

import torch


def accepts_device(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    for p in sig.parameters.values():
        if p.name == "device" or p.kind is inspect.Parameter.VAR_KEYWORD:
            return True
    return False


def call_harness(fn: Callable, size: Any, device: str) -> Any:
    """Run ``fn`` at ``size`` on ``device`` (see module doc)."""
    if accepts_device(fn):
        with torch.device(device):
            return fn(size, device=device)
    with torch.device(device):
        return fn(size)


def harness_name(fn: Callable) -> str:
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    if mod and not mod.startswith("_torchreview_user_") and mod != "__main__":
        return f"{mod}.{name}"
    return name


def returned_tensor(out: Any) -> Any:
    """The value of a harness result that stands for its loss (the probe and the checks agree on it):

    * a dict: its ``"loss"`` entry, else its first tensor value;
    * a tuple or list: its first element (``(loss, logits)``);
    * nested the same way a few levels (``({"loss": l}, aux)``).
    """
    for _ in range(4):
        if isinstance(out, dict):
            out = out["loss"] if "loss" in out else next(
                (v for v in out.values() if isinstance(v, torch.Tensor)), None)
        elif isinstance(out, (tuple, list)):
            out = out[0] if out else None
        else:
            break
    return out


def scalar_loss(t: Any) -> Optional[torch.Tensor]:
    """A real scalar to start backward from: the tensor itself when it has one element, else its sum.
    A complex tensor starts from its modulus (a complex tensor has no backward of its own; the
    modulus reaches both parts), a sparse one from its dense form. None for a non-float tensor."""
    if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
        return None
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_complex():
        t = t.abs()
    return t if t.numel() == 1 else t.sum()


def backward_root(out: Any) -> Optional[torch.Tensor]:
    """The tensor a backward pass through a harness result starts from (:func:`returned_tensor`, made
    a scalar by :func:`scalar_loss`), or None when it carries no graph."""
    t = returned_tensor(out)
    if not isinstance(t, torch.Tensor) or not t.requires_grad:
        return None
    return scalar_loss(t)


def run_backward(out: Any) -> bool:
    """Backward through a harness result (see :func:`backward_root`). Returns whether a backward ran:
    False when nothing in the result carries a graph (the caller may warn: ``backward=True`` then
    measures the forward only)."""
    root = backward_root(out)
    if root is None:
        return False
    root.backward()
    return True


@contextlib.contextmanager
def single_thread(device: str):
    """``torch.set_num_threads(1)`` on the CPU for stable timings, restored afterwards."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def frozen_heap():
    """Move the objects alive now out of the garbage collector's sight while measuring.

    Probes collect after every run so freed tensors do not count at the next size; a full collection
    of a heap with torch (and dynamo) imported costs 0.1-0.3 s. ``gc.freeze`` makes those collections
    look only at what the harness made. Nothing is frozen when the caller froze objects already.
    """
    import gc

    froze = hasattr(gc, "freeze") and gc.get_freeze_count() == 0
    if froze:  # no collection first: garbage frozen now is handed back by unfreeze()
        gc.freeze()
    try:
        yield
    finally:
        if froze:
            gc.unfreeze()
