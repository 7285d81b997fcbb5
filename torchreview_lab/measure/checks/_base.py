"""What every runtime check shares: the run context and small helpers."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .._frames import def_site
from .._harness import accepts_device, call_harness
from .._preserve import modules_kept


@dataclass
class CheckContext:
    """How to run the user's code once.

    Harness form: ``fn(T)`` / ``fn(T, device=...)`` builds its inputs and returns the loss or output.
    ``make_inputs`` form: ``make_inputs(T)`` (or ``make_inputs(T, device=...)``) returns the
    arguments (a tuple, a dict of keyword arguments, or one value) and ``fn(*args)`` returns the loss
    or output.
    """

    fn: Callable
    size: Any
    make_inputs: Optional[Callable] = None
    device: str = "cpu"
    notes: List[str] = field(default_factory=list)

    # -- inputs
    def inputs(self, device: Optional[str] = None) -> Tuple[tuple, dict]:
        mk = self.make_inputs
        if accepts_device(mk) and device is not None:
            val = mk(self.size, device=device)
        else:
            val = mk(self.size)
        if isinstance(val, dict):
            return (), dict(val)
        if isinstance(val, (tuple, list)):
            return tuple(val), {}
        return (val,), {}

    def run(self, device: Optional[str] = None) -> Any:
        """One run on ``device`` (default: the context's), inputs built there."""
        dev = device or self.device
        if self.make_inputs is None:
            return call_harness(self.fn, self.size, dev)
        with torch.device(dev):
            args, kwargs = self.inputs(dev)
            return self.fn(*args, **kwargs)

    def can_run_on_meta(self) -> bool:
        return self.make_inputs is not None or accepts_device(self.fn)

    def run_inputs_on_meta(self) -> Any:
        """Inputs on ``meta`` (a stand-in for "not the CPU"), *no* default-device context: factory
        calls without ``device=`` in the user's code still land on the CPU, as they would on a GPU."""
        with modules_kept():  # a model kept outside the harness and moved by it gets its weights back
            if self.make_inputs is None:
                return self.fn(self.size, device="meta")
            args, kwargs = self.inputs("cpu")
            to_meta = _to_meta
            return self.fn(*[to_meta(a) for a in args], **{k: to_meta(v) for k, v in kwargs.items()})

    def location(self):
        return def_site(self.fn)


def _to_meta(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        t = v.detach().to("meta")
        return t.requires_grad_(v.requires_grad) if v.is_floating_point() or v.is_complex() else t
    if isinstance(v, torch.nn.Module):
        return copy.deepcopy(v).to("meta")
    if isinstance(v, (list, tuple)):
        return type(v)(_to_meta(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_meta(x) for k, x in v.items()}
    return v


def describe(site) -> str:
    return f"{site[0]}:{site[1]}" if site else "<unknown>"


def counts_by_site(events: List[Tuple[Any, str]]) -> Dict[Tuple[Any, str], int]:
    out: Dict[Tuple[Any, str], int] = {}
    for site, kind in events:
        out[(site, kind)] = out.get((site, kind), 0) + 1
    return out
