"""Benchmark of the dynamic review engine (CPU or CUDA).

Times are taken with the probe's clock (CPU: the thread's CPU time, single-threaded; CUDA: wall time
around ``synchronize``).

1. Tracking overhead: the median time of a harness run under the memory tracker (CPU: profiler
   memory events; CUDA: peak-memory counters) over the median of a plain run. Target <= 1.5x.
2. Extrapolation error: probe at T = 256..2048, predict memory and time at 8x the largest size
   (T = 16,384) and compare with a real run there. Target <= 10%. The real time is taken with the
   probe's own method (the CPU allocator's free memory returned to the OS before each run, median of
   repeats) and, for reference, as plain back-to-back calls. The meta-device prediction at 16,384 is
   compared as well. ``ref sprd`` is how much the real runs at the target differ among themselves
   ((max - min) / median of 7 runs): on a shared VM the time of a run that faults in gigabytes of
   fresh pages is bimodal (the host's page backing), and a prediction error below that spread is
   not resolvable by any model.

Run: ``python bench/bench_measure.py [--device cpu|cuda] [--json out.json]``
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from torchreview_lab.measure import meta_run, scale  # noqa: E402
from torchreview_lab.measure._harness import call_harness, single_thread  # noqa: E402
from torchreview_lab.measure.probe import timed_runs  # noqa: E402
from torchreview_lab.measure.probe import clock  # noqa: E402
from torchreview_lab.measure.trackers import real_tracker  # noqa: E402

K, C = 8, 8


def edges(T, device="cpu"):
    """A (T, K, C, C) edge tensor filled in a loop over K, then logsumexp (the CRF pattern)."""
    e = torch.empty(T, K, C, C, device=device)
    for k in range(K):
        e[:, k] = torch.randn(T, C, C, device=device)
    return torch.logsumexp(e, dim=(-1, -2)).sum()


def attention(T, device="cpu"):
    """O(T^2): single-head attention scores over T positions."""
    q = torch.randn(T, 32, device=device)
    return torch.softmax(q @ q.T / 32 ** 0.5, dim=-1).sum()


def mlp_train(T, device="cpu"):
    """Forward + backward of a 2-layer MLP on a batch of T."""
    w1 = torch.randn(64, 256, device=device, requires_grad=True)
    w2 = torch.randn(256, 1, device=device, requires_grad=True)
    x = torch.randn(T, 64, device=device)
    loss = (torch.relu(x @ w1) @ w2).pow(2).mean()
    loss.backward()
    return loss.detach()


CASES = {"edges": edges, "attention": attention, "mlp_train": mlp_train}


def _sync(dev):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def timed_call(fn, T, dev, now):
    """Seconds of one synchronised run of the harness on the probe's clock."""
    _sync(dev)
    t0 = now()
    out = call_harness(fn, T, dev)
    _sync(dev)
    elapsed = now() - t0
    del out
    return elapsed


def overhead(fn, T, dev, reps):
    now = clock(dev)
    plain, tracked = [], []
    call_harness(fn, T, dev)  # warm-up
    for _ in range(reps):
        plain.append(timed_call(fn, T, dev, now))
        t0 = now()
        with real_tracker(dev):
            out = call_harness(fn, T, dev)
            _sync(dev)
        tracked.append(now() - t0)
        del out
    return statistics.median(plain), statistics.median(tracked), min(plain), min(tracked)


def real_at(fn, T, dev, reps=7):
    """Peak bytes and seconds of real runs at T: seconds by the probe's own timing method (what the
    probe would have measured there), and by plain back-to-back calls (the allocator left as is)."""
    tr = real_tracker(dev)
    with tr:
        out = call_harness(fn, T, dev)
        _sync(dev)
    del out
    probe_runs = timed_runs(fn, T, dev, False, reps, 120.0)  # the probe's own method
    now = clock(dev)
    plain = [timed_call(fn, T, dev, now) for _ in range(reps)]
    return tr.peak_bytes, probe_runs, statistics.median(plain)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    sizes, far = (256, 512, 1024, 2048), 16384
    rows = []
    print(f"torch {torch.__version__} on {dev}; probe sizes {sizes}, extrapolated to T={far:,} (8x)")
    print(f"{'case':<10} {'T':>6} {'plain':>9} {'tracked':>9} {'ovh med':>7} {'ovh min':>7} | {'mem exp':>7} {'mem err':>8} "
          f"{'meta err':>8} {'time exp':>8} {'time err':>8} {'ref sprd':>8} {'probe s':>7}   (time err signed: + over, - under; "
          "ref sprd: (max - min) / median of the real runs at the target)")
    for name, fn in CASES.items():
        with single_thread(dev):
            p, t, pmin, tmin = overhead(fn, 2048, dev, args.reps)
        t0 = time.perf_counter()
        res = scale(fn, sizes=sizes, target=far, device=dev, repeats=7)
        probe_s = time.perf_counter() - t0
        with single_thread(dev):
            real_mem, real_runs, plain_t = real_at(fn, far, dev)
        real_t = statistics.median(real_runs)
        # how much the reference itself moves from run to run: an error below it cannot be resolved
        real_spread = (max(real_runs) - min(real_runs)) / real_t
        pred_mem, pred_t = res.target.peak_bytes, res.target.seconds
        meta = meta_run(fn, far)
        row = {
            "case": name, "overhead_T": 2048, "plain_s": p, "tracked_s": t, "overhead": t / p, "overhead_min": tmin / pmin,
            "memory_exponent": res.memory_fit.exponent, "time_exponent": res.time_fit.exponent,
            "predicted_bytes": pred_mem, "real_bytes": real_mem, "memory_error": abs(pred_mem - real_mem) / real_mem,
            "meta_bytes": meta.peak_bytes,
            "meta_error": abs(meta.peak_bytes - real_mem) / real_mem if meta.ok else None,
            "predicted_s": pred_t, "real_s": real_t, "time_error": abs(pred_t - real_t) / real_t,
            "real_runs_s": real_runs, "real_spread": real_spread,
            "time_offset_s": res.time_fit.offset if res.time_fit else None,
            "real_plain_s": plain_t, "time_error_plain": abs(pred_t - plain_t) / plain_t,
            "probe_seconds": probe_s,
        }
        rows.append(row)
        meta_err = f"{row['meta_error']:.1%}" if row["meta_error"] is not None else "-"
        print(f"{name:<10} {2048:>6} {p * 1e3:>7.2f}ms {t * 1e3:>7.2f}ms {t / p:>6.2f}x {tmin / pmin:>6.2f}x | "
              f"{row['memory_exponent']:>7.2f} {row['memory_error']:>8.1%} {meta_err:>8} "
              f"{row['time_exponent']:>8.2f} {(pred_t - real_t) / real_t:>+8.1%} {real_spread:>8.1%} {probe_s:>7.2f}")
    worst_o = max(r["overhead"] for r in rows)
    worst_min = max(r["overhead_min"] for r in rows)
    worst_m = max(r["memory_error"] for r in rows)
    time_errs = ", ".join(f"{r['case']} {r['time_error']:.1%} ({r['time_error_plain']:.1%} vs plain calls)" for r in rows)
    print(f"worst overhead {worst_o:.2f}x by medians, {worst_min:.2f}x by minima (target <= 1.5x); worst memory extrapolation error {worst_m:.1%} "
          f"(target <= 10%); time errors: {time_errs}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": dev, "torch": torch.__version__, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
