"""Memory trackers: peak bytes above the baseline while a block runs.

* :class:`ProfilerMemoryTracker` (CPU): the autograd profiler's ``[memory]`` events summed in time
  order. It sees every allocation of the CPU allocator, kernel temporaries included, and counts only
  what is allocated (or freed) after it starts, so the running sum *is* "bytes above the baseline".
* :class:`CudaMemoryTracker` (CUDA): ``reset_peak_memory_stats`` / ``max_memory_allocated`` with a
  ``synchronize`` on both sides.
* :class:`LiveStorageTracker` (any device, used on ``meta``): a ``TorchDispatchMode`` that keeps the
  bytes of live tensor storages created inside it; no real memory is needed on ``meta``. Composite
  kernels known to make full-size temporaries run through their decomposition so those count too.
"""
from __future__ import annotations

import os
import sys
import weakref
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# ---------------------------------------------------------------------------------- device memory


def device_memory(device: str) -> Dict[str, Optional[int]]:
    """``{"total": bytes, "free": bytes}`` of the device (CPU: MemTotal / MemAvailable)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return {"total": None, "free": None}
        free, total = torch.cuda.mem_get_info(dev.index if dev.index is not None else torch.cuda.current_device())
        return {"total": int(total), "free": int(free)}
    if dev.type == "cpu":
        return _host_memory()
    return {"total": None, "free": None}


def _host_memory() -> Dict[str, Optional[int]]:
    try:
        import psutil  # type: ignore

        vm = psutil.virtual_memory()
        return {"total": int(vm.total), "free": int(vm.available)}
    except ImportError:
        pass
    info: Dict[str, int] = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    info[key] = int(parts[0]) * 1024
    except OSError:
        pass
    total = info.get("MemTotal")
    free = info.get("MemAvailable", info.get("MemFree"))
    if total is None:  # macOS and friends without psutil
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    return {"total": total, "free": free}


# ---------------------------------------------------------------------------------- CPU: profiler


class ProfilerMemoryTracker:
    """Peak CPU allocator bytes above the baseline, from the profiler's memory events.

    Uses the profiler's low-level enable/disable calls (no op-shape recording, no trace export), and
    falls back to :class:`torch.profiler.profile` when those private calls are unavailable.
    """

    def __init__(self) -> None:
        self.peak_bytes: int = 0
        self.net_bytes: int = 0
        self._mode = None
        self._prof = None

    def __enter__(self) -> "ProfilerMemoryTracker":
        if torch.autograd.profiler._is_profiler_enabled:
            raise RuntimeError("a torch profiler is already running; the memory tracker needs its own")
        try:
            from torch._C._profiler import ProfilerConfig, ProfilerState, RecordScope, _ExperimentalConfig
            from torch.autograd import ProfilerActivity

            # (state, report_input_shapes, profile_memory, with_stack, with_flops, with_modules, experimental)
            cfg = ProfilerConfig(ProfilerState.KINETO, False, True, False, False, False, _ExperimentalConfig())
            acts = {ProfilerActivity.CPU}
            # Only user-scope record_functions: no event per aten op. Memory events do not go through
            # record-function callbacks, so all of them are kept, and the post-processing at stop
            # shrinks from ~90 µs to ~17 µs per op.
            with _quiet_stderr():
                torch.autograd._prepare_profiler(cfg, acts)
                torch.autograd._enable_profiler(cfg, acts, {RecordScope.USER_SCOPE})
            self._mode = "lowlevel"
        except (ImportError, AttributeError, TypeError, RuntimeError):
            self._prof = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            )
            self._prof.__enter__()
            self._mode = "profiler"
        return self

    def __exit__(self, *exc) -> None:
        if self._mode == "lowlevel":
            with _quiet_stderr():
                events = torch.autograd._disable_profiler().events()
        else:
            self._prof.__exit__(None, None, None)
            events = self._prof.profiler.kineto_results.events()
            self._prof = None
        cpu = _cpu_device_type()
        mem = [(e.start_ns(), e.nbytes()) for e in events
               if e.name() == "[memory]" and (cpu is None or e.device_type() == cpu)]
        mem.sort(key=lambda x: x[0])
        cur = peak = 0
        for _, n in mem:
            cur += n
            if cur > peak:
                peak = cur
        self.peak_bytes, self.net_bytes = int(peak), int(cur)
        self._mode = None


class _quiet_stderr:
    """Silence file descriptor 2 around the profiler's start/stop: kineto prints a
    ``profiler_start``/``profiler_stop`` line there from C++ on every use."""

    def __enter__(self):
        self._saved = None
        if os.environ.get("TORCHREVIEW_PROFILER_LOGS"):
            return self
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)


def _cpu_device_type():
    try:
        return torch._C._autograd.DeviceType.CPU
    except AttributeError:  # older builds: keep every memory event
        return None


# ---------------------------------------------------------------------------------- CUDA


class CudaMemoryTracker:
    """Peak CUDA bytes above the baseline (``max_memory_allocated`` after ``reset_peak_memory_stats``)."""

    def __init__(self, device: Any = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        self.peak_bytes = 0
        self.net_bytes = 0
        self._base = 0

    def __enter__(self) -> "CudaMemoryTracker":
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.peak_bytes = max(0, int(torch.cuda.max_memory_allocated(self.device)) - self._base)
        self.net_bytes = int(torch.cuda.memory_allocated(self.device)) - self._base


def real_tracker(device: str):
    return CudaMemoryTracker(device) if torch.device(device).type == "cuda" else ProfilerMemoryTracker()


# ---------------------------------------------------------------------------------- live storages

# Ops whose CPU/CUDA kernels allocate full-size temporaries that their meta kernels do not. On meta
# they run through a Python function that makes the same allocations as the ATen kernel, inside the
# mode, so the temporaries are counted. Kept to a short, checked list: decomposing fused kernels
# (softmax, layer norm) with the generic decompositions would *over*-count what the kernels need.


def _logsumexp_like_aten(self, dim, keepdim=False):
    # aten/src/ATen/native/ReduceOps.cpp logsumexp_out_impl: amax, then (self - maxes).exp_(), sum
    dims = [dim] if isinstance(dim, int) else list(dim)
    if not dims:
        dims = list(range(self.dim()))
    maxes = torch.amax(self, dims, True)
    tmp = self - maxes
    tmp.exp_()
    out = torch.sum(tmp, dims, keepdim)
    del tmp
    out.log_()
    return out.add_(maxes if keepdim else maxes.reshape(out.shape))


def _softmax_backward_like_aten(grad_output, output, dim, input_dtype):
    # aten/src/ATen/native/SoftMax.cpp (and SoftMax.cu) softmax_backward: grad.contiguous() and
    # output.contiguous() before the kernel. The gradient of ``softmax(x).sum()`` is an expanded
    # scalar (stride 0): its contiguous copy is a full-size temporary (measured on the CPU).
    return torch.ops.aten._softmax_backward_data.default(grad_output.contiguous(), output.contiguous(), dim,
                                                         input_dtype)


def _log_softmax_backward_like_aten(grad_output, output, dim, input_dtype):
    return torch.ops.aten._log_softmax_backward_data.default(grad_output.contiguous(), output.contiguous(), dim,
                                                             input_dtype)


_TEMPORARY_MODELS = {"aten::logsumexp": _logsumexp_like_aten,
                     "aten::_softmax_backward_data": _softmax_backward_like_aten,
                     "aten::_log_softmax_backward_data": _log_softmax_backward_like_aten}


def _current_node() -> Any:
    """The autograd node running now (backward), else None."""
    get = getattr(torch._C, "_current_autograd_node", None)
    try:
        return get() if get is not None else None
    except Exception:  # noqa: BLE001 - private API: no node means no accumulation model
        return None


def _non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """ATen's ``is_non_overlapping_and_dense``: the elements fill a block of memory, in some order."""
    expected = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


_EXCLUSIVE_REFS: List[Optional[Any]] = []  # cached: see _exclusive_refs


def _exclusive_refs() -> Optional[Any]:
    """``(tensor refs, storage refs)`` that an operand of the engine's gradient sum shows inside a
    Python dispatch mode when the engine holds the only reference to it (the real engine would add
    into it in place). Measured once on a two-element graph on meta, so the references the trip
    through the mode and the tensor's Python object add are counted as they are in this torch
    build. None when it cannot be measured (then no accumulation is modelled)."""
    if _EXCLUSIVE_REFS:
        return _EXCLUSIVE_REFS[0]
    value: Optional[Any] = None
    try:
        class _Probe(TorchDispatchMode):
            seen: Optional[Any] = None

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if (self.seen is None and func is torch.ops.aten.add.Tensor and not torch.is_grad_enabled()
                        and _current_node() is not None):
                    st = args[0].untyped_storage()
                    self.seen = (int(args[0]._use_count()), int(torch._C._storage_Use_Count(st._cdata)))
                return out

        from torch.utils._python_dispatch import _disable_current_modes

        probe = _Probe()
        # away from the caller's modes (a meta run's function mode and deadline, a tracker)
        with torch._C.DisableTorchFunction(), _disable_current_modes(), torch.enable_grad(), probe:
            x = torch.zeros(2, 3, device="meta", requires_grad=True)
            (x[0] + x[1]).sum().backward()  # two select_backward results summed for x
        value = probe.seen
    except Exception:  # noqa: BLE001 - private API
        value = None
    if value is not None:  # a failure is not cached: the next tracker tries again
        _EXCLUSIVE_REFS.append(value)
    return value


class LiveStorageTracker(TorchDispatchMode):
    """Tracks the bytes of live storages created by ops run inside it; ``peak_bytes`` is the maximum.

    Storages are keyed by ``untyped_storage()._cdata`` (``data_ptr()`` is 0 on meta) and released
    with ``weakref.finalize`` and a per-storage token, so ``out=`` resizes cannot corrupt the count.
    Storages seen first as *inputs* (parameters, buffers, captured tensors) are baseline and never
    count. ``on_op`` (optional) is called as ``on_op(func, args, kwargs, out)`` after each op;
    ``answer`` (optional) may return a replacement result for an op (``NotImplemented`` to run it).

    The mode is re-entered while a temporary model runs (``with self:``); only the outermost exit
    detaches the finalizers (detaching them at an inner exit left every storage made so far
    unreleased: backward figures 2-3x too high, varying with the allocator's address reuse).

    Backward: the autograd engine sums two gradients for one input in place (``old.add_(new)``) when
    it holds the only reference to one of them. Under any Python dispatch mode every tensor has a
    Python object that holds one more reference, so the engine allocates a new sum each time
    (``old + new``): one gradient-sized buffer more than a real run. Such an ``add`` (grad mode off,
    inside a backward node, same shape and dtype, an operand made by an earlier node) has its result's
    bytes taken from the operand the real engine would have reused (``model_accumulation``).
    """

    def __init__(self, decompose: bool = True, on_op: Optional[Callable] = None,
                 answer: Optional[Callable] = None, record_sites: bool = False,
                 model_accumulation: bool = True) -> None:
        super().__init__()
        self.decompose = decompose
        self.on_op = on_op
        self.answer = answer
        self.record_sites = record_sites
        self.model_accumulation = model_accumulation
        self.live_bytes = 0
        self.peak_bytes = 0
        self.ops = 0
        self.accumulations = 0  # backward sums counted as in place (see class doc)
        self._storages: Dict[int, List[Any]] = {}  # cdata -> [token, nbytes, site, node id]
        self._next_token = 0
        self._finalizers: List[Any] = []
        self._depth = 0
        self._modelling: set = set()  # ops whose temporary model is running now
        self._refs: Optional[Any] = None  # see _exclusive_refs

    # -- bookkeeping
    def _release(self, cdata: int, token: int) -> None:
        entry = self._storages.get(cdata)
        if entry is not None and entry[0] == token:
            del self._storages[cdata]
            self.live_bytes -= entry[1]

    def _see(self, t: torch.Tensor, count: bool, site=None, node: Optional[int] = None) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested, functional wrappers
            return
        key = st._cdata
        nbytes = int(st.nbytes())
        entry = self._storages.get(key)
        if entry is not None:
            if count and entry[1] != nbytes and entry[2] not in ("baseline", "donated"):  # resized (out=)
                self.live_bytes += nbytes - entry[1]
                entry[1] = nbytes
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            return
        self._next_token += 1
        token = self._next_token
        if count:
            self._storages[key] = [token, nbytes, site, node]
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        else:
            self._storages[key] = [token, 0, "baseline", None]
        try:
            self._finalizers.append(weakref.finalize(st, self._release, key, token))
        except TypeError:
            pass

    def live_storages(self) -> List[Any]:
        """``[(nbytes, site)]`` of counted storages still alive."""
        return [(e[1], e[2]) for e in self._storages.values() if e[2] not in ("baseline", "donated")]

    def __enter__(self):
        if self._depth == 0 and self.model_accumulation and self._refs is None:
            self._refs = _exclusive_refs()
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._depth -= 1
        if self._depth == 0:
            for fin in self._finalizers:
                fin.detach()
            self._finalizers.clear()
        return out

    # -- backward accumulation (see class doc)
    def _exclusive(self, t: torch.Tensor) -> bool:
        """Would the real engine hold the only reference to ``t`` and its storage (InputBuffer's
        ``can_accumulate_inplace``)? Compared with the references such an operand shows in this mode."""
        try:
            if not _non_overlapping_and_dense(t):
                return False
            if int(t._use_count()) > self._refs[0]:
                return False
            st = t.untyped_storage()
            return int(torch._C._storage_Use_Count(st._cdata)) <= self._refs[1]
        except Exception:  # noqa: BLE001 - private API
            return False

    def _accumulation_donor(self, func, args, kwargs, out, node: Optional[int]) -> Optional[torch.Tensor]:
        if node is None or self._refs is None or func is not torch.ops.aten.add.Tensor:
            return None
        if len(args) != 2 or (kwargs.get("alpha", 1) != 1) or not isinstance(out, torch.Tensor):
            return None
        a, b = args
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a is b:
            return None
        if not (a.shape == b.shape == out.shape and a.dtype == b.dtype == out.dtype):
            return None
        entries = []
        for t in (a, b):
            try:
                entries.append(self._storages.get(t.untyped_storage()._cdata))
            except (RuntimeError, NotImplementedError):
                return None
        # one operand was made by an earlier backward node: the engine summing gradients, not a formula
        if not any(e is not None and e[2] not in ("baseline", "donated") and e[3] is not None and e[3] != node
                   for e in entries):
            return None
        for t, e in zip((a, b), entries):  # the engine tries old (first) then new
            if e is not None and e[2] not in ("baseline", "donated") and e[1] > 0 and self._exclusive(t):
                return t
        return None

    # -- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        flat, _ = tree_flatten((args, kwargs))
        for a in flat:
            if isinstance(a, torch.Tensor):
                self._see(a, count=False)
        out = NotImplemented
        if self.answer is not None:
            out = self.answer(func, args, kwargs)
        if out is NotImplemented and self.decompose and func not in self._modelling:
            decomp = self._decomposition(func)
            if decomp is not None:
                self._modelling.add(func)  # a model that calls its own op runs the kernel itself
                try:
                    with self:
                        out = decomp(*args, **kwargs)
                except Exception:
                    out = NotImplemented
                finally:
                    self._modelling.discard(func)
        if out is NotImplemented:
            out = func(*args, **kwargs)
        site = None
        if self.record_sites:
            from ._frames import user_site

            site = user_site()
        node = None
        if self.model_accumulation and not torch.is_grad_enabled():
            cur = _current_node()
            node = id(cur) if cur is not None else None
            if node is not None:
                donor = self._accumulation_donor(func, args, kwargs, out, node)
                if donor is not None:  # the real engine adds into donor: its bytes become the sum's
                    entry = self._storages[donor.untyped_storage()._cdata]
                    self.live_bytes -= entry[1]
                    entry[1], entry[2] = 0, "donated"
                    self.accumulations += 1
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                self._see(o, count=True, site=site, node=node)
        if self.on_op is not None:
            self.on_op(func, args, kwargs, out)
        return out

    @staticmethod
    def _decomposition(func) -> Optional[Callable]:
        if func._overloadname != "default":
            return None
        return _TEMPORARY_MODELS.get(func.name())
