"""TR011 host-device syncs, counted per call site.

A ``TorchFunctionMode`` catches the Tensor methods that force a sync (``.item()``, ``bool(t)``,
``int(t)``, ``float(t)``, ``.tolist()``, ``.numpy()``, ``.cpu()``); a ``TorchDispatchMode`` catches the
ops whose output size depends on values (``nonzero``, ``masked_select``, ``unique``,
``repeat_interleave`` with tensor repeats, ``equal``, boolean-mask ``index``/``index_put_``) and
device-to-host copies. On a real GPU ``torch.cuda.set_sync_debug_mode("warn")`` adds what torch
itself reports. On the CPU these calls cost little; the finding says what they will cost on a GPU.
"""
from __future__ import annotations

import warnings
from typing import Any, List, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ...findings import Fix
from .._frames import user_site
from ..rules import make_finding
from ._base import CheckContext, counts_by_site

_METHODS = {
    "item": ".item()", "__bool__": "bool(tensor)", "__int__": "int(tensor)", "__float__": "float(tensor)",
    "__index__": "tensor used as an index", "tolist": ".tolist()", "numpy": ".numpy()", "cpu": ".cpu()",
}
_FIXES = {
    ".item()": ("loss_total += loss.item()", "loss_total += loss.detach()  # read once, after the loop"),
    "bool(tensor)": ("if (x > 0).any():", "x = torch.where(x > 0, a, b)  # keep the decision on the device"),
    "nonzero": ("idx = mask.nonzero()", "x = torch.where(mask, x, 0)  # or a fixed-size masked op"),
    "boolean-mask indexing": ("y = x[mask]", "y = torch.where(mask, x, 0)  # static shape, no sync"),
}


class _State:
    def __init__(self) -> None:
        self.depth = 0
        self.events: List[Tuple[Any, str]] = []
        self.warned: Optional[list] = None  # on a GPU: the warnings recorded while torch's sync debug mode warns


class _Methods(TorchFunctionMode):
    def __init__(self, state: _State) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _METHODS and args and isinstance(args[0], torch.Tensor):
            self.state.events.append((user_site(), _METHODS[name]))
            self.state.depth += 1
            try:
                return func(*args, **kwargs)
            finally:
                self.state.depth -= 1
        return func(*args, **kwargs)


class _Ops(TorchDispatchMode):
    def __init__(self, state: _State) -> None:
        super().__init__()
        self.state = state
        a = torch.ops.aten
        self.value_ops = {a.nonzero: "nonzero", a.masked_select: "masked_select", a._unique2: "unique",
                          a.unique_dim: "unique", a.unique_consecutive: "unique_consecutive",
                          a.equal: "torch.equal", a._local_scalar_dense: "tensor value read on the host",
                          a.is_nonzero: "bool(tensor)", a.argwhere: "argwhere"}
        self.index_ops = {a.index, a.index_put, a.index_put_, a._index_put_impl_}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = None
        if self.state.depth == 0:
            packet = func.overloadpacket
            kind = self.value_ops.get(packet)
            if kind is None and packet is torch.ops.aten.repeat_interleave and func._overloadname != "self_int":
                kind = "repeat_interleave with tensor repeats"
            if kind is None and packet in self.index_ops and len(args) > 1 and any(
                    isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
                kind = "boolean-mask indexing"
            if kind is None and packet in (torch.ops.aten._to_copy, torch.ops.aten.copy_):
                src = args[1] if packet is torch.ops.aten.copy_ else args[0]
                dst_cpu = (kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu") or \
                    (packet is torch.ops.aten.copy_ and args[0].device.type == "cpu")
                if isinstance(src, torch.Tensor) and src.device.type == "cuda" and dst_cpu:
                    kind = "device-to-host copy"
            if kind is not None:
                self.state.events.append((user_site(), kind))
        warned = self.state.warned
        if warned is None:
            return func(*args, **kwargs)
        n = len(warned)
        out = func(*args, **kwargs)
        # torch warns from C++, at the Python frame that called the kernel (torch's own): count the sync
        # here, at the user's line, unless this call was counted above or by _Methods already
        new = warned[n:]
        if any(_is_sync_warning(w) for w in new):
            warned[n:] = [w for w in new if not _is_sync_warning(w)]
            if kind is None and self.state.depth == 0:
                self.state.events.append((user_site(), "synchronizing CUDA call"))
        return out


def _is_sync_warning(w) -> bool:
    return "synchroniz" in str(w.message).lower()


def check_syncs(ctx: CheckContext) -> list:
    state = _State()
    out = None
    on_cuda = torch.device(ctx.device).type == "cuda" and torch.cuda.is_available()
    prev_mode = torch.cuda.get_sync_debug_mode() if on_cuda else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if on_cuda:
                torch.cuda.set_sync_debug_mode("warn")
                state.warned = caught
            with _Methods(state), _Ops(state):
                out = ctx.run()
                if on_cuda:
                    torch.cuda.synchronize(ctx.device)
        finally:
            if on_cuda:
                torch.cuda.set_sync_debug_mode(prev_mode)
            del out
    for w in caught:  # torch's own report on a real GPU, of syncs outside any op
        if _is_sync_warning(w):
            state.events.append(((w.filename, w.lineno, ""), "synchronizing CUDA call"))
    findings = []
    counts = counts_by_site([(s, k) for s, k in state.events if s is not None])
    for (site, kind), n in sorted(counts.items(), key=lambda kv: -kv[1]):
        sev = "high" if n >= 10 else ("medium" if n > 1 else "low")
        before, after = _FIXES.get(kind, ("", ""))
        where = "on a GPU each one stalls" if n == 1 else f"called {n} times in one run; on a GPU each one stalls"
        findings.append(make_finding(
            "TR011", f"{kind} forces a host-device sync ({n}x)", site, severity=sev,
            problem=f"{kind} needs a value (or a size) from the device on the host; {where} the host until "
                    "all queued GPU work is done.",
            impact="the GPU idles between kernels; inside a loop over T this dominates the run time",
            fix=Fix(before=before, after=after) if before else None,
            evidence={"kind": kind, "count": n}))
    return findings
