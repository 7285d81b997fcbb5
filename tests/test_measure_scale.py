"""The scaling probe on functions of known scaling, the meta prediction, safety, JSON and text."""
import gc
import json

import pytest
import torch

from measure_cases import scaling
from torchreview_lab.measure import ScalingResult, meta_run, scale
from torchreview_lab.measure.result import Point, TargetPrediction
from torchreview_lab.measure.fit import fit_power_law

SIZES = (64, 128, 256, 512)


def _scale(fn, **kw):
    kw.setdefault("sizes", SIZES)
    kw.setdefault("repeats", 1)
    kw.setdefault("device", "cpu")
    return scale(fn, **kw)


@pytest.mark.parametrize("fn, exponent", [
    (scaling.const, 0.0),
    (scaling.linear, 1.0),
    (scaling.quadratic, 2.0),
    (scaling.edges, 1.0),   # O(T*K*C^2) with K, C fixed
])
def test_memory_exponent_of_known_scaling(fn, exponent):
    res = _scale(fn)
    assert [p.size for p in res.points] == list(SIZES)
    assert res.memory_fit is not None
    assert res.memory_fit.exponent == pytest.approx(exponent, abs=0.1)
    assert res.memory_fit.r2 > 0.98
    assert all(p.seconds > 0 for p in res.points)


def test_cpu_peak_sees_kernel_temporaries():
    res = _scale(scaling.edges, sizes=(128, 256))
    for p in res.points:  # the profiler sees logsumexp's full-size temporary: exact analytic bytes
        assert p.peak_bytes == scaling.edges_bytes(p.size)


def test_meta_prediction_equals_analytic_bytes():
    for T in (1000, 400_000):
        m = meta_run(scaling.edges, T)
        assert m.ok and not m.assumptions
        assert m.peak_bytes == scaling.edges_bytes(T)
    m = meta_run(scaling.linear, 10_000)
    assert m.peak_bytes == 2 * 10_000 * 64 * 4 + 4  # x, x * 2 and the scalar sum


def test_meta_run_at_target_reported_beside_fit():
    res = _scale(scaling.edges, target=400_000)
    t = res.target
    assert t.meta_peak_bytes == scaling.edges_bytes(400_000)
    assert t.peak_bytes == pytest.approx(t.meta_peak_bytes, rel=0.05)
    assert t.device_bytes and t.fits is not None
    assert not any("disagree" in w for w in res.warnings)


def test_meta_answers_data_dependent_calls_with_recorded_assumptions():
    m = meta_run(scaling.data_dependent, 100_000)
    assert m.ok
    text = " | ".join(m.assumptions)
    assert ".item()" in text and "boolean-mask" in text and "bool(tensor)" in text
    assert "scaling.py" in text  # each assumption names the user's line


def test_meta_loop_is_stopped_by_time_limit():
    m = meta_run(scaling.python_loop, 400_000, time_limit=0.2)
    assert not m.ok and m.timed_out
    assert "time limit" in m.skipped_reason


def test_meta_redirects_explicit_device():
    m = meta_run(scaling.edges, 400_000)  # edges takes device=; the meta run passes device="meta"
    assert m.ok
    def explicit(T):
        return torch.zeros(T, 1000, device="cpu").sum()
    m = meta_run(explicit, 10_000_000)  # 40 GB if it were real
    assert m.ok and m.peak_bytes == 10_000_000 * 1000 * 4 + 4
    assert any("redirected to meta" in a for a in m.assumptions)


def test_budget_guard_skips_sizes_predicted_over_budget():
    budget = 200_000  # linear: 64 * 64 * 4 * 2 = 32 kB at T=64 ... 262 kB at T=512
    res = _scale(scaling.linear, budget_bytes=budget)
    measured = [p.size for p in res.points]
    assert 512 not in measured and 64 in measured
    skipped = {s["size"]: s for s in res.skipped}
    assert 512 in skipped and "exceeds the budget" in skipped[512]["reason"]
    assert all(p.peak_bytes <= budget for p in res.points)


def test_budget_guard_uses_meta_before_any_measurement():
    res = _scale(scaling.linear, sizes=(100_000,), budget_bytes=1_000_000)
    assert not res.points
    assert res.skipped[0]["kind"] == "budget" and "meta-device run" in res.skipped[0]["reason"]


@pytest.mark.parametrize("fn", [scaling.raises_oom, scaling.raises_memoryerror])
def test_out_of_memory_is_reported_and_process_survives(fn):
    res = _scale(fn, meta=False)
    assert [p.size for p in res.points] == [64]
    kinds = {s["size"]: s["kind"] for s in res.skipped}
    assert kinds[128] == "oom" and kinds[256] == "stopped" and kinds[512] == "stopped"
    assert "out of memory" in res.skipped[0]["reason"]
    assert [f.rule for f in res.findings()] == ["TR021"]
    assert torch.get_num_threads() >= 1


def test_harness_error_is_reported_not_raised():
    res = _scale(scaling.broken)
    assert not res.points
    assert res.skipped[0]["kind"] == "error" and "ValueError" in res.skipped[0]["reason"]
    assert "Not enough measurements" in res.verdict()


def test_time_budget_stops_the_grid():
    res = _scale(scaling.linear, time_budget=0.0)
    assert not res.points
    assert res.skipped[0]["kind"] == "time" and "time budget" in res.skipped[0]["reason"]
    assert [s["kind"] for s in res.skipped[1:]] == ["stopped"] * 3


def test_probe_leaves_no_state_behind():
    threads = torch.get_num_threads()
    _scale(scaling.linear, sizes=(64, 128), target=10_000)
    assert torch.get_num_threads() == threads
    assert not torch.autograd.profiler._is_profiler_enabled
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    from torch.overrides import _get_current_function_mode_stack

    assert _get_current_dispatch_mode() is None
    assert not [m for m in _get_current_function_mode_stack()]
    assert torch.empty(1).device.type == "cpu"  # the meta device context was left


def _synthetic(target_fits: bool) -> ScalingResult:
    sizes = [256, 512, 1024, 2048]
    pts = [Point(s, int(2_304_000 * s), 1e-6 * s) for s in sizes]
    res = ScalingResult(function="edges", device="cuda", points=pts,
                        memory_fit=fit_power_law(sizes, [p.peak_bytes for p in pts]),
                        time_fit=fit_power_law(sizes, [p.seconds for p in pts], min_size=256))
    dev = 80_000_000_000 if not target_fits else 2_000_000_000_000
    tgt = TargetPrediction(size=400_000, peak_bytes=res.memory_fit.predict(400_000), seconds=0.4,
                           meta_peak_bytes=921_600_000_000, device_bytes=dev, device_free_bytes=dev)
    tgt.fits = tgt.predicted_bytes <= dev
    tgt.max_size_that_fits = int(res.memory_fit.inverse(dev))
    res.target = tgt
    return res


def test_text_verdict():
    res = _synthetic(target_fits=False)
    v = res.verdict()
    assert v == "O(T^1.00) memory: 922 GB at T=400,000 — does not fit in 80 GB; largest T that fits ≈ 34,700"
    text = str(res)
    assert "verdict: " + v in text and "2,048" in text and "R² 1.000" in text
    assert "fits in 2 TB" in _synthetic(target_fits=True).verdict()
    assert [f.rule for f in res.findings()] == ["TR020"]


def test_json_round_trip_and_stable_keys():
    res = _scale(scaling.edges, sizes=(64, 128, 256), target=100_000)
    data = json.loads(json.dumps(res.to_json()))
    assert {"function", "device", "points", "memory_fit", "time_fit", "target", "skipped", "warnings"} <= set(data)
    assert set(data["points"][0]) == {"size", "peak_bytes", "seconds"}
    assert {"exponent", "coefficient", "r2"} <= set(data["memory_fit"])
    assert {"size", "peak_bytes", "seconds", "meta_peak_bytes", "device_bytes", "fits",
            "max_size_that_fits"} <= set(data["target"])
    back = ScalingResult.from_json(data)
    assert back.to_json() == data
    assert str(back) == str(res)


def test_plot_and_notebook_rendering():
    res = _synthetic(target_fits=False)
    fig = res.plot()
    names = [t.name for t in fig.data]
    assert "measured memory" in names and "meta-device run" in names and "measured time" in names
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    fit_trace = next(t for t in fig.data if t.name.startswith("fit O(T^1.00)"))
    assert max(fit_trace.x) == pytest.approx(400_000)  # the fit is carried out to the target
    assert any(getattr(s, "y0", None) == 80e9 for s in fig.layout.shapes)  # device memory line
    bundle = res._repr_mimebundle_()
    assert "application/vnd.plotly.v1+json" in bundle and bundle["text/plain"] == str(res)
    json.dumps(bundle["application/vnd.plotly.v1+json"])
    gc.collect()


def test_backward_option_measures_forward_and_backward():
    def fwd(T):
        w = torch.randn(64, 64, requires_grad=True)
        return (torch.randn(T, 64) @ w).tanh().sum()

    plain = _scale(fwd, sizes=(128, 256), meta=False)
    both = _scale(fwd, sizes=(128, 256), meta=False, backward=True)
    for a, b in zip(plain.points, both.points):
        assert b.peak_bytes > a.peak_bytes  # the backward's buffers (grad of the (T, 64) activations)
    m = meta_run(fwd, 256, backward=True)
    assert m.ok and m.peak_bytes >= both.points[1].peak_bytes * 0.8


def test_device_resolution_on_cpu_only_build():
    from torchreview_lab.measure.probe import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available"):
            scale(scaling.linear, sizes=(64,), device="cuda")
    with pytest.raises(ValueError):
        resolve_device("mps-nope")


def test_text_and_plot_without_target():
    res = _scale(scaling.linear, sizes=(64, 128, 256))
    assert res.target is None
    assert res.verdict() == "O(T^1.00) memory."
    assert "at T=" not in str(res)
    fig = res.plot()
    assert {t.name for t in fig.data} >= {"measured memory", "measured time"}


def test_on_point_streams_each_measured_size():
    seen = []
    res = _scale(scaling.linear, sizes=(64, 128), on_point=seen.append)
    assert seen == res.points

    def broken(point):
        raise RuntimeError("listener down")

    res = _scale(scaling.linear, sizes=(64, 128), on_point=broken)
    assert len(res.points) == 2 and any("listener down" in w for w in res.warnings)


def test_largest_size_that_fits_is_anchored_at_the_meta_figure():
    res = _scale(scaling.quadratic, sizes=(64, 128, 256), target=100_000, budget_bytes=10**9)
    t = res.target
    assert t.meta_peak_bytes >= 4 * 100_000 ** 2  # the (T, T) product, exact on meta
    limit = t.device_free_bytes
    exact = (limit / 4) ** 0.5  # 4 * T^2 bytes fill the free memory
    assert t.max_size_that_fits == pytest.approx(exact, rel=0.1)


def test_per_call_overhead_does_not_flatten_the_time_exponent(monkeypatch):
    """Timings = a fixed per-call overhead + linear work. The probe times a tiny size, takes that
    overhead out before the fit and adds it back to predictions, so the law stays O(T) and the time
    at 8x the largest size is right (a plain power law would say O(T^0.5) here)."""
    from torchreview_lab.measure import probe

    overhead, per_t = 5e-4, 1e-6  # 66% of the time at T=256 is overhead
    timed = []

    def fake_time(fn, size, device, backward, repeats, max_seconds):
        timed.append(size)
        return overhead + per_t * size

    monkeypatch.setattr(probe, "_time", fake_time)
    res = scale(scaling.linear, sizes=(256, 512, 1024, 2048), target=16384, device="cpu", meta=False)
    assert 256 // probe.OVERHEAD_SIZE_RATIO in timed   # the tiny size was timed
    tf = res.time_fit
    assert tf.offset == pytest.approx(overhead, rel=0.01)  # the tiny size's own work taken out
    assert tf.exponent == pytest.approx(1.0, abs=0.01)
    assert res.target.seconds == pytest.approx(overhead + per_t * 16384, rel=0.01)
    assert "per call" in str(res)
    assert ScalingResult.from_json(json.loads(json.dumps(res.to_json()))).time_fit.offset == tf.offset


def test_harness_that_needs_larger_sizes_gets_no_overhead_term():
    def needs_64(T):
        if T < 64:
            raise ValueError("T must be at least 64")
        return scaling.linear(T)

    res = _scale(needs_64, sizes=(256, 512, 1024))
    assert res.time_fit is not None and res.time_fit.offset == 0.0
    assert not res.skipped and not any("raised" in w for w in res.warnings)


def test_each_timed_cpu_run_starts_from_a_released_allocator(monkeypatch):
    from torchreview_lab.measure import probe
    from torchreview_lab.measure._allocator import release_free_memory

    runs, releases = [], []
    monkeypatch.setattr(probe, "release_free_memory", lambda: releases.append(len(runs)) or True)

    def counted(T):
        runs.append(T)
        return scaling.linear(T)

    probe._time(counted, 128, "cpu", False, repeats=3, max_seconds=1.0)
    assert releases == list(range(len(runs)))  # one release before each run, none during
    # the real call is safe: live tensors survive it, the allocator keeps working
    x = torch.arange(1 << 20, dtype=torch.float32)
    import platform

    assert release_free_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert x.sum().item() == float(sum(range(1 << 20)))
