"""The scaling probe: run a harness at a grid of sizes under a memory tracker, fit, predict.

Safety first: before each real run the bytes at that size are predicted (the fit so far, or a
meta-device run while fewer than two sizes are measured) and sizes over the budget are skipped; the
time budget stops the grid; out-of-memory is caught, reported, and ends the grid. Nothing is left
behind: modes and the profiler are context managers, thread counts are restored, and the harness's
outputs are dropped before the next size.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from ._format import fmt_bytes, fmt_seconds
from ._allocator import release_free_memory
from ._preserve import UserState
from ._harness import call_harness, frozen_heap, harness_name, run_backward, single_thread
from .progress import probe_progress
from .fit import R2_POOR, PowerLawFit, fit_power_law
from .meta import meta_run
from .meta_ladder import meta_at_target
from .result import Point, ScalingResult, TargetPrediction
from .rules import harness_location
from .trackers import device_memory, real_tracker

DEFAULT_SIZES = (256, 512, 1024, 2048)
TIME_FIT_MIN_SIZE = 256
META_DISAGREE = 0.20


def resolve_device(device: str = "auto") -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto'; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                         "CUDA device(s) (cuda:0 ...)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto'; got {device!r}")
    return str(dev)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_cls = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cleanup(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _measure_once(fn: Callable, size: int, device: str, backward: bool) -> Tuple[int, bool]:
    tracker = real_tracker(device)
    out = None
    ran = False
    with tracker:
        out = call_harness(fn, size, device)
        if backward:
            ran = run_backward(out)
        _sync(device)
    del out
    return tracker.peak_bytes, ran


NO_GRAPH = ("backward=True but the harness result carries no graph (no tensor requiring grad as the loss, a "
            "dict's \"loss\" or a tuple's first element): only the forward was measured")
MIN_TIMING_SECONDS = 0.05  # short runs are repeated until this much was timed (up to 10x repeats)


def clock(device: str) -> Callable[[], float]:
    """The clock timings use. CPU: the calling thread's CPU time (user + system): with
    ``set_num_threads(1)`` the whole computation runs on this thread, and time lost to other processes
    on a shared machine is not counted. CUDA: wall time around ``synchronize``."""
    if torch.device(device).type == "cpu" and hasattr(time, "thread_time"):
        return time.thread_time
    return time.perf_counter


def _time(fn: Callable, size: int, device: str, backward: bool, repeats: int, max_seconds: float) -> float:
    """Median seconds of :func:`timed_runs`."""
    return statistics.median(timed_runs(fn, size, device, backward, repeats, max_seconds))


def timed_runs(fn: Callable, size: int, device: str, backward: bool, repeats: int, max_seconds: float) -> List[float]:
    """Seconds of ``repeats`` runs (more for short runs, fewer when ``max_seconds`` is spent), the
    probe's timing method (the benchmark times its reference runs with it too).

    On the CPU the allocator's free memory goes back to the OS before each run (see ``_allocator``):
    every size then pays for its memory pages as a run at a large size does."""
    samples: List[float] = []
    spent = 0.0
    repeats = max(1, repeats)
    now = clock(device)
    on_cpu = torch.device(device).type == "cpu"
    while True:
        if on_cpu:
            release_free_memory()
        _sync(device)
        t0 = now()
        out = call_harness(fn, size, device)
        if backward:
            run_backward(out)
        _sync(device)
        dt = now() - t0
        del out
        samples.append(dt)
        spent += dt
        if spent > max_seconds:
            break
        if len(samples) >= repeats and (spent >= MIN_TIMING_SECONDS or len(samples) >= 10 * repeats):
            break
    return samples


def scale(fn: Callable, sizes: Sequence[int] = DEFAULT_SIZES, target: Optional[int] = None,
          device: str = "auto", budget_bytes: Optional[int] = None, time_budget: Optional[float] = None,
          *, backward: bool = False, repeats: int = 5, meta: bool = True, meta_time_limit: float = 10.0,
          name: Optional[str] = None, on_point: Optional[Callable[[Point], None]] = None,
          progress: Union[bool, str] = "auto") -> ScalingResult:
    """Measure peak memory and time of ``fn(T)`` at each size, fit power laws, predict at ``target``.

    ``fn`` is a harness: ``fn(T)`` or ``fn(T, device=...)`` builds inputs of size T and runs the
    computation (``backward=True`` also runs backward through a returned loss). ``budget_bytes``
    (default: half of the device's free memory) bounds each real run; ``time_budget`` (seconds)
    bounds the whole grid. ``on_point(point)`` is called after each size is measured (streaming to a
    panel); its errors become warnings. ``progress`` (``"auto"``: inside a Jupyter kernel only;
    ``True``/``False``) shows a live progress bar with a line per size (``progress.py``), removed when
    the probe ends. Never raises for the harness's own errors: they are reported in
    ``skipped``/``warnings``.
    """
    dev = resolve_device(device)
    mem = device_memory(dev)
    if budget_bytes is None and mem.get("free"):
        budget_bytes = int(mem["free"] // 2)
    res = ScalingResult(function=name or harness_name(fn), device=dev, budget_bytes=budget_bytes,
                        location=harness_location(fn))
    sizes = sorted({int(s) for s in sizes if int(s) > 0})
    view = probe_progress(progress, res, sizes, target)  # notebook progress; a no-op when off
    # the user's model, optimizer and leaf tensors get their gradients, modes, buffers and state
    # back when the probe ends; every run starts with the gradients cleared, as a training step does
    with UserState(fn) as state:
        _scale(state.wrap(view.wrap(fn)), res, sizes, target, dev, mem, budget_bytes, time_budget, backward,
               repeats, meta, meta_time_limit, view.chain(on_point), state, view)
    res.warnings.extend(state.changed)
    return res


def _scale(fn, res, sizes, target, dev, mem, budget_bytes, time_budget, backward, repeats, meta, meta_time_limit,
           on_point, state, view) -> None:
    """The measuring grid, the fits and the target prediction of :func:`scale`, filled into ``res``."""
    t_start = time.perf_counter()
    per_size_time = None if time_budget is None else max(0.05, float(time_budget) / max(1, 2 * len(sizes)))
    stop: Optional[str] = None

    with single_thread(dev), frozen_heap():
        for size in sizes:
            if stop:
                res.skipped.append({"size": size, "reason": stop, "kind": "stopped"})
                continue
            elapsed = time.perf_counter() - t_start
            # ---- time budget: stop when spent, or when the next size would overrun it
            if time_budget is not None:
                tf = _fit_time(res.points)
                est = tf.predict(size) * (1 + min(repeats, 3)) if tf else 0.0
                if elapsed >= time_budget or (tf and elapsed + est > time_budget):
                    stop = f"time budget of {fmt_seconds(time_budget)} spent" if elapsed >= time_budget else \
                        f"predicted {fmt_seconds(est)} would overrun the time budget of {fmt_seconds(time_budget)}"
                    res.skipped.append({"size": size, "reason": stop, "kind": "time"})
                    continue
            # ---- memory budget: predict before running
            predicted, how = _predict_bytes(fn, res, size, dev, backward, meta, meta_time_limit)
            if budget_bytes is not None and predicted is not None and predicted > budget_bytes:
                res.skipped.append({"size": size, "kind": "budget", "reason":
                                    f"predicted {fmt_bytes(predicted)} ({how}) exceeds the budget of "
                                    f"{fmt_bytes(budget_bytes)}"})
                stop = f"a smaller size (T={size:,}) was over the memory budget"
                continue
            # ---- real run
            failure = None
            try:
                with state.watching():  # the first real run at a size finds the modules it calls
                    peak, ran = _measure_once(fn, size, dev, backward)
                if backward and not ran and NO_GRAPH not in res.warnings:
                    res.warnings.append(NO_GRAPH)
                remaining = None if time_budget is None else time_budget - (time.perf_counter() - t_start)
                cap = per_size_time if remaining is None else max(0.0, min(per_size_time or remaining, remaining))
                secs = _time(fn, size, dev, backward, repeats, cap if cap is not None else 2.0)
            except BaseException as e:  # noqa: B902 - OOM and harness errors are results, not crashes
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                failure = ("oom", f"out of memory: {type(e).__name__}: {_first_line(e)}") if is_oom(e) else \
                    ("error", f"the harness raised {type(e).__name__}: {_first_line(e)}")
            if failure is not None:
                # outside the except block: the traceback (and the tensors its frames hold) is gone now
                _cleanup(dev)
                res.skipped.append({"size": size, "kind": failure[0], "reason": failure[1]})
                stop = (f"a smaller size (T={size:,}) ran out of memory" if failure[0] == "oom"
                        else f"the harness failed at T={size:,}")
                continue
            point = Point(size=size, peak_bytes=int(peak), seconds=float(secs))
            res.points.append(point)
            _cleanup(dev)
            if on_point is not None:
                try:
                    on_point(point)
                except Exception as e:  # a broken listener must not stop the measurement
                    res.warnings.append(f"on_point callback failed: {type(e).__name__}: {_first_line(e)}")

    offset = 0.0
    if len(res.points) >= 2 and not (time_budget is not None and time.perf_counter() - t_start >= time_budget):
        with single_thread(dev), frozen_heap():
            offset = _call_overhead(fn, res, dev, backward, repeats)
    _fit(res, offset)
    if target is not None:
        with frozen_heap():
            _predict_target(fn, res, int(target), dev, mem, backward, meta, meta_time_limit, t_start, time_budget)
    view.close()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else ""


def _time_fit_points(points: List[Point]) -> List[Point]:
    """The points time is fitted on: T >= TIME_FIT_MIN_SIZE when two such sizes exist, else all."""
    big = [p for p in points if p.size >= TIME_FIT_MIN_SIZE]
    return big if len(big) >= 2 else list(points)


def _fit_time(points: List[Point], offset: float = 0.0) -> Optional[PowerLawFit]:
    use = _time_fit_points(points)
    return fit_power_law([p.size for p in use], [p.seconds for p in use], offset=offset)


def _predict_bytes(fn, res: ScalingResult, size: int, dev: str, backward: bool, meta: bool,
                   meta_time_limit: float):
    pts = [p for p in res.points if p.peak_bytes > 0]
    if len(pts) >= 2:
        f = fit_power_law([p.size for p in pts], [p.peak_bytes for p in pts])
        if f is not None:
            return f.predict(size), f"fit over {len(pts)} sizes"
    if meta:
        m = meta_run(fn, size, time_limit=min(meta_time_limit, 2.0), backward=backward)
        if m.ok:
            return float(m.peak_bytes), "meta-device run"
    if len(pts) == 1 and pts[0].size > 0:  # one point: assume linear growth from it (conservative for O(1))
        return pts[0].peak_bytes * size / pts[0].size, "linear from one size"
    return None, ""


OVERHEAD_SIZE_RATIO = 32   # the per-call overhead is timed at T = smallest size / 32
OVERHEAD_MAX_SHARE = 0.8   # and never taken as more than 80% of the smallest size's time


def _call_overhead(fn: Callable, res: ScalingResult, dev: str, backward: bool, repeats: int) -> float:
    """Seconds a call takes at a tiny size: Python, dispatch and allocator overheads that do not grow
    with T. Subtracted before the time fit (and added back to its predictions), it keeps those
    overheads from flattening the fitted exponent (a linear MLP step fitted O(T^0.8) on T=256..2048
    without it and mispredicted T=16,384 by 55%). Zero when the tiny size fails."""
    smallest = min(p.size for p in res.points)
    tiny = max(1, smallest // OVERHEAD_SIZE_RATIO)
    if tiny >= smallest:
        return 0.0
    try:
        _sync(dev)
        call_harness(fn, tiny, dev)  # warm-up: first calls at a new shape pay one-off costs
        secs = _time(fn, tiny, dev, backward, repeats, 0.5)
    except Exception:  # noqa: BLE001 - a harness that needs larger T simply gets no overhead term
        secs = None
    _cleanup(dev)
    if secs is None:
        return 0.0
    cap = OVERHEAD_MAX_SHARE * min(p.seconds for p in _time_fit_points(res.points))
    offset = max(0.0, min(float(secs), cap))
    # the tiny run also did a little of the T-dependent work: take the fitted law's share at the tiny
    # size out of it (a few fixed-point steps; each refit moves the offset by that share's change)
    for _ in range(3):
        f = _fit_time(res.points, offset)
        if f is None:
            break
        offset = max(0.0, min(float(secs) - f.coefficient * tiny ** f.exponent, cap))
    return offset


def _fit(res: ScalingResult, time_offset: float = 0.0) -> None:
    pts = res.points
    if len(pts) < 2:
        if pts:
            res.warnings.append("only one size was measured: no fit")
        return
    pos = [p for p in pts if p.peak_bytes > 0]
    if len(pos) >= 2:
        res.memory_fit = fit_power_law([p.size for p in pos], [p.peak_bytes for p in pos])
        if len(pos) < len(pts):
            res.warnings.append(f"{len(pts) - len(pos)} size(s) allocated nothing above the baseline; "
                                "the memory fit uses the others")
    else:
        res.warnings.append("no memory above the baseline was allocated at the measured sizes")
    mf = res.memory_fit
    if mf is not None and mf.raw_exponent is not None and mf.r2 < 1.0:
        res.warnings.append(_falling_warning("memory", mf))
    elif mf is not None and mf.r2 < R2_POOR:
        res.warnings.append(f"memory does not follow a power law in T (R² {mf.r2:.2f}): predictions are rough")
    used = _time_fit_points(pts)
    tf = res.time_fit = _fit_time(pts, time_offset)
    if tf is not None and min(p.size for p in used) >= TIME_FIT_MIN_SIZE:
        if len(used) < 3 and tf.confidence == "high":
            tf.confidence = "medium"
    elif tf is not None:
        tf.confidence = "low"
        res.warnings.append(f"time fitted on sizes below T={TIME_FIT_MIN_SIZE} (timings of small sizes are "
                            "dominated by overheads): low confidence")
    if tf is not None and tf.raw_exponent is not None and tf.r2 < 1.0:
        res.warnings.append(_falling_warning("time", tf))
    elif tf is not None and tf.r2 < R2_POOR:
        res.warnings.append(f"time does not follow a power law in T (R² {tf.r2:.2f}): noisy timings")


def _falling_warning(label: str, f: PowerLawFit) -> str:
    return (f"{label} falls with T (fitted exponent {f.raw_exponent:.2f}): not a scaling law; taken as O(1) at "
            "the largest measured value (low confidence)")


def _predict_target(fn, res: ScalingResult, target: int, dev: str, mem, backward: bool, meta: bool,
                    meta_time_limit: float, t_start: float, time_budget: Optional[float]) -> None:
    tgt = TargetPrediction(size=target)
    mf, tf = res.memory_fit, res.time_fit
    if mf is not None:
        tgt.peak_bytes = float(mf.predict(target))
    if tf is not None:
        tgt.seconds = float(tf.predict(target))
    if torch.device(dev).type == "cuda":
        tgt.device_bytes, tgt.device_free_bytes = mem.get("total"), mem.get("free")
    else:
        tgt.device_bytes = tgt.device_free_bytes = mem.get("free")
    if meta:
        limit = meta_time_limit
        if time_budget is not None:
            limit = max(0.1, min(limit, time_budget - (time.perf_counter() - t_start)))
        pilot = min((p.size for p in res.points), default=None)
        m = meta_at_target(fn, target, time_limit=limit, backward=backward, pilot=pilot)
        tgt.meta_assumptions = list(m.assumptions)
        if m.ok:
            tgt.meta_peak_bytes = int(m.peak_bytes)
            tgt.meta_from_sizes = list(m.extrapolated_from)
            if m.note:
                res.warnings.append(m.note)
            if m.assumptions:
                res.warnings.append(f"the meta run at T={target:,} answered {len(m.assumptions)} data-dependent "
                                    "call(s) with assumptions (see target.meta_assumptions)")
        else:
            tgt.meta_skipped_reason = m.skipped_reason
            res.warnings.append(f"no meta prediction: {m.skipped_reason}")
    if tgt.peak_bytes is not None and tgt.meta_peak_bytes:
        a, b = tgt.peak_bytes, float(tgt.meta_peak_bytes)
        if abs(a - b) > META_DISAGREE * max(a, b):
            res.warnings.append(f"the fit ({fmt_bytes(a)}) and the meta run ({fmt_bytes(b)}) disagree by "
                                f"{abs(a - b) / max(a, b):.0%} at T={target:,}: temporaries or caches the meta "
                                "run does not model, or a law that changes with T")
    pred = tgt.predicted_bytes
    probed = max((p.peak_bytes for p in res.points), default=0)
    if tgt.seconds is not None and pred is not None and pred > 64e6 and pred > 8 * max(probed, 1):
        res.warnings.append(f"the time at T={target:,} is likely a lower bound: the working set grows from "
                            f"{fmt_bytes(probed)} (probed) to {fmt_bytes(pred)}, beyond the caches, where each "
                            "element can cost more than at the probed sizes")
    limit = tgt.device_free_bytes
    if limit is not None and pred is not None:
        tgt.fits = bool(pred <= limit)
        if mf is not None:
            if mf.exponent >= 0.05 and pred > 0:
                # anchor the law at the figure the verdict uses (the meta run is exact at the target,
                # the fit carries the small sizes' lower-order terms) and move along the fitted slope
                inv = target * (limit / pred) ** (1.0 / mf.exponent)
            else:
                inv = mf.inverse(limit)
            tgt.max_size_that_fits = None if inv is None else int(inv)
    res.target = tgt
