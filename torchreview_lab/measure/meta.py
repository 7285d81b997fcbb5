"""Run a harness on the ``meta`` device: shapes and bytes without real memory or compute.

``meta_run(harness, T)`` runs ``harness(T)`` under ``with torch.device("meta")`` and a
:class:`~.trackers.LiveStorageTracker`, so the peak of live tensor bytes at size T is known without
allocating it. Data-dependent calls have no values on meta; they are answered with assumptions that
are recorded (``.item()`` → 1, ``bool(t)`` → True, ``nonzero``/bool masks → every element selected,
``unique`` → all distinct, ``.tolist()``/``.numpy()`` → ones). Explicit ``device="cpu"``/``"cuda"``
factories and ``.to(device)``/``.cpu()``/``.cuda()`` are redirected to meta (recorded too), so the
run never allocates for real what the harness asked for. Modules the harness moves to meta
(``model.to(device)`` on a model kept outside it) get their parameters and buffers back when the run
ends (:func:`~._preserve.modules_kept`). A time limit, checked at every op, stops
Python loops over T (≈0.1 ms per iteration on meta) and the run is then skipped with the reason.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.overrides import TorchFunctionMode

from ._frames import site_from_traceback, user_site
from ._harness import accepts_device, run_backward
from ._preserve import modules_kept
from .trackers import LiveStorageTracker

_MAX_FAKE_VALUES = 1_000_000  # .tolist()/.numpy() answers larger than this skip the run

_FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.rand, torch.randn,
    torch.randint, torch.randperm, torch.tensor, torch.eye, torch.linspace, torch.logspace,
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
    torch.randn_like, torch.randint_like, torch.as_tensor, torch.empty_strided, torch.normal,
    torch.tril_indices, torch.triu_indices, torch.scalar_tensor,
}


class MetaSkip(Exception):
    """The meta run cannot go on (a time limit, or an answer that would need real memory)."""


class MetaTimeout(MetaSkip):
    """The meta run's time limit was reached (typically a Python loop over T)."""

    def __init__(self) -> None:
        super().__init__("time limit reached (a Python loop over T?)")


@dataclass
class MetaRun:
    size: int
    peak_bytes: Optional[int] = None
    seconds: float = 0.0
    ops: int = 0
    assumptions: List[str] = field(default_factory=list)
    skipped_reason: Optional[str] = None
    extrapolated_from: List[int] = field(default_factory=list)  # meta_ladder: the sizes run for real on meta
    note: Optional[str] = None  # how an extrapolated figure was made
    timed_out: bool = False  # stopped by its time limit (the harness itself may be fine on meta)

    @property
    def ok(self) -> bool:
        return self.peak_bytes is not None


def _where() -> str:
    site = user_site()
    return f" at {site[0]}:{site[1]}" if site else ""


class _Shim(TorchFunctionMode):
    """Answers what meta cannot (values) and keeps every tensor on meta."""

    def __init__(self, record: Callable[[str], None], deadline: float, redirect_factories: bool = True) -> None:
        super().__init__()
        self.record = record
        self.deadline = deadline
        self.redirect_factories = redirect_factories

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if time.perf_counter() > self.deadline:
            raise MetaTimeout()
        if func in _FACTORIES and self.redirect_factories:
            dev = kwargs.get("device")
            if dev is not None and torch.device(dev).type != "meta":
                self.record(f"{getattr(func, '__name__', func)}(device={str(dev)!r}) redirected to meta{_where()}")
                kwargs["device"] = "meta"
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        self_t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if self_t is None or self_t.device.type != "meta":
            return func(*args, **kwargs)
        if name in ("cpu", "cuda"):
            self.record(f".{name}() kept on meta{_where()}")
            return self_t
        if name == "to":
            device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
            if device is not None and device.type != "meta":
                self.record(f".to({str(device)!r}) kept on meta{_where()}")
                return self_t.to(dtype=dtype) if dtype is not None else self_t
            return func(*args, **kwargs)
        if name == "tolist":
            self._check_size(self_t, ".tolist()")
            self.record(f".tolist() answered with ones{_where()}")
            return _ones_list(self_t)
        if name == "numpy":
            import numpy as np

            self._check_size(self_t, ".numpy()")
            self.record(f".numpy() answered with ones{_where()}")
            return np.ones(tuple(self_t.shape), dtype=torch.empty((), dtype=self_t.dtype, device="cpu").numpy().dtype)
        return func(*args, **kwargs)

    @staticmethod
    def _check_size(t: torch.Tensor, what: str) -> None:
        if t.numel() > _MAX_FAKE_VALUES:
            raise MetaSkip(f"{what} of a {t.numel():,}-element tensor would need real values")


def _ones_list(t: torch.Tensor) -> Any:
    one: Any = True if t.dtype == torch.bool else (1.0 if t.dtype.is_floating_point else 1)
    if t.dim() == 0:
        return one
    out: Any = one
    for n in reversed(t.shape):
        out = [out if not isinstance(out, list) else list(out) for _ in range(n)]
    return out


class _Answers:
    """Dispatch-level answers for data-dependent ops on meta (see module doc)."""

    def __init__(self, record: Callable[[str], None], deadline: float) -> None:
        self.record = record
        self.deadline = deadline
        self._aten = torch.ops.aten

    def __call__(self, func, args, kwargs):
        if time.perf_counter() > self.deadline:
            raise MetaTimeout()
        a = self._aten
        packet = func.overloadpacket
        first = args[0] if args else None
        if not (isinstance(first, torch.Tensor) and first.device.type == "meta"):
            return NotImplemented
        if packet is a._local_scalar_dense:
            if first.dtype == torch.bool:
                self.record(f"bool(tensor)/.item() assumed True{_where()}")
                return True
            self.record(f".item()/int()/float() of a tensor assumed 1{_where()}")
            return 1.0 if first.dtype.is_floating_point or first.dtype.is_complex else 1
        if packet is a.is_nonzero:
            self.record(f"bool(tensor) assumed True{_where()}")
            return True
        if packet is a.equal:
            self.record(f"torch.equal assumed True{_where()}")
            return True
        if packet in (a.nonzero, a.argwhere):
            self.record(f"nonzero/argwhere: every element assumed selected{_where()}")
            return torch.empty((first.numel(), first.dim()), dtype=torch.long, device="meta")
        if packet is a.masked_select:
            mask = args[1]
            n = math.prod(torch.broadcast_shapes(first.shape, mask.shape))
            self.record(f"masked_select: every element assumed selected{_where()}")
            return torch.empty((n,), dtype=first.dtype, device="meta")
        if packet in (a.index, a.index_put, a.index_put_, a._index_put_impl_):
            indices = args[1]
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.record(f"boolean-mask indexing: every element assumed selected{_where()}")
                new_idx: List[Any] = []
                for i in indices:
                    if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8):
                        n = i.numel()
                        new_idx.extend(torch.empty((n,), dtype=torch.long, device="meta") for _ in range(max(i.dim(), 1)))
                    else:
                        new_idx.append(i)
                return func(first, new_idx, *args[2:], **kwargs)
            return NotImplemented
        if packet in (a._unique2, a.unique_dim, a.unique_consecutive, a._unique):
            self.record(f"unique: every element assumed distinct{_where()}")
            n = first.numel()
            ret_inv = bool(args[2]) if len(args) > 2 else bool(kwargs.get("return_inverse", False))
            ret_cnt = bool(args[3]) if len(args) > 3 else bool(kwargs.get("return_counts", False))
            out = torch.empty((n,), dtype=first.dtype, device="meta")
            inv = torch.empty(first.shape if ret_inv else (0,), dtype=torch.long, device="meta")
            cnt = torch.empty((n if ret_cnt else 0,), dtype=torch.long, device="meta")
            return (out, inv) if packet is a._unique else (out, inv, cnt)
        if packet is a.repeat_interleave and func._overloadname == "Tensor":
            self.record(f"repeat_interleave: each repeat assumed 1{_where()}")
            return torch.empty((first.numel(),), dtype=torch.long, device="meta")
        return NotImplemented


def meta_run(harness: Callable, size: int, time_limit: float = 10.0, backward: bool = False) -> MetaRun:
    """Run ``harness(size)`` on meta under the byte tracker; never raises for the harness's errors."""
    res = MetaRun(size=int(size))
    seen: Dict[str, int] = {}

    def record(msg: str) -> None:
        if msg not in seen:
            seen[msg] = 0
            res.assumptions.append(msg)
        seen[msg] += 1

    t0 = time.perf_counter()
    deadline = t0 + max(0.0, float(time_limit))
    tracker = LiveStorageTracker(answer=_Answers(record, deadline))
    out = None
    try:
        with modules_kept(), torch.device("meta"), _Shim(record, deadline), tracker:
            if accepts_device(harness):
                out = harness(size, device="meta")
            else:
                out = harness(size)
            if backward:
                run_backward(out)
        res.peak_bytes = int(tracker.peak_bytes)
    except MetaSkip as e:
        res.skipped_reason = f"meta run at T={size:,} stopped: {e}"
        res.timed_out = isinstance(e, MetaTimeout)
    except MemoryError as e:
        res.skipped_reason = f"meta run at T={size:,} needed real memory (MemoryError: {e})"
    except Exception as e:  # the harness cannot run on meta: say where and why
        site = site_from_traceback(e.__traceback__)
        where = f" at {site[0]}:{site[1]}" if site else ""
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        res.skipped_reason = f"meta run at T={size:,} failed{where}: {type(e).__name__}: {msg}"
    finally:
        del out
        res.seconds = time.perf_counter() - t0
        res.ops = tracker.ops
    return res
