"""The meta figure at the target for harnesses that loop over T in Python (``meta_ladder``).

A meta run costs ~0.1 ms per op, so 400,000 Python iterations cannot finish in an interactive time
limit. The probe then runs meta at doubling sizes while the time lasts and carries the exact bytes
of the top rungs to the target, marked as extrapolated. The figures here are checked against the
bytes each harness allocates, worked out by hand.
"""
import json

import pytest
import torch

from torchreview_lab.measure import ScalingResult, meta_run, scale
from torchreview_lab.measure.meta_ladder import meta_at_target

TARGET = 400_000


def rows_loop(T):
    """x: 64 B per step; one 64 B row per step; the stack: 64 B per step; the sum: 4 B."""
    x = torch.randn(T, 16)
    rows = []
    for t in range(T):
        rows.append(x[t] * 2)
    return torch.stack(rows).sum()


def rows_loop_bytes(T):
    return 192 * T + 4


def loop_with_weights(T):
    """The same loop beside a 16 MiB buffer that does not grow with T."""
    w = torch.empty(2048, 2048)
    x = torch.randn(T, 16)
    rows = [x[t] * 2 for t in range(T)]
    return torch.stack(rows).sum() + w.sum()


def test_python_loop_gets_a_figure_extrapolated_from_exact_meta_runs():
    m = meta_at_target(rows_loop, TARGET, time_limit=2.0)
    assert m.ok, m.skipped_reason
    assert m.extrapolated_from and max(m.extrapolated_from) < TARGET  # never run at the target itself
    assert m.peak_bytes == pytest.approx(rows_loop_bytes(TARGET), rel=1e-3)
    assert "Python loop" in m.note and "extrapolated" in m.note and f"T={TARGET:,}" in m.note
    assert m.seconds < 2.5  # within the time limit (plus one rung's overshoot at most)


def test_a_constant_buffer_is_kept_apart_from_the_growing_part():
    """A plain power law through the rungs (16 MiB + 192 B·T at T ≤ 4,096 is mostly constant) would
    fit an exponent near 0.1 and predict a fifth of the bytes at T=400,000."""
    m = meta_at_target(loop_with_weights, TARGET, time_limit=2.0)
    assert m.ok and m.extrapolated_from
    assert m.peak_bytes == pytest.approx(2048 * 2048 * 4 + rows_loop_bytes(TARGET), rel=1e-3)


def test_vectorized_harness_still_gets_one_exact_run_at_the_target():
    def attention(T):
        q = torch.randn(T, 8)
        return torch.softmax(q @ q.T, dim=-1).sum()

    m = meta_at_target(attention, TARGET, time_limit=5.0)
    assert m.ok and m.extrapolated_from == [] and m.note is None
    assert m.peak_bytes == meta_run(attention, TARGET).peak_bytes
    assert m.peak_bytes >= 2 * TARGET * TARGET * 4  # the (T, T) scores and their softmax


def test_too_little_time_for_a_ladder_says_why():
    m = meta_at_target(rows_loop, TARGET, time_limit=0.3)
    assert not m.ok and m.extrapolated_from == []
    assert "Python loop" in m.skipped_reason and "time limit" in m.skipped_reason


def test_a_harness_that_fails_on_meta_reports_that_failure():
    def needs_cpu(T):
        x = torch.randn(T)
        if x.device.type != "cpu":
            raise RuntimeError("this harness only runs on the CPU")
        return x.sum()

    m = meta_at_target(needs_cpu, TARGET, time_limit=2.0)
    assert not m.ok and m.extrapolated_from == []
    assert "RuntimeError" in m.skipped_reason and "only runs on the CPU" in m.skipped_reason


def test_scale_reports_the_extrapolated_meta_figure_everywhere():
    res = scale(rows_loop, sizes=(64, 128, 256), target=TARGET, device="cpu", repeats=1,
                meta_time_limit=2.0, progress=False)
    t = res.target
    assert t.meta_peak_bytes == pytest.approx(rows_loop_bytes(TARGET), rel=1e-3)
    assert t.meta_from_sizes and t.meta_from_sizes[0] == 64  # the ladder starts at the smallest probed T
    assert any("extrapolated" in w and "Python loop" in w for w in res.warnings)
    assert not any(w.startswith("no meta prediction") for w in res.warnings)
    assert f"(meta runs up to T={max(t.meta_from_sizes):,}, extrapolated)" in str(res)
    data = json.loads(json.dumps(res.to_json()))
    assert data["target"]["meta_from_sizes"] == t.meta_from_sizes
    assert ScalingResult.from_json(data).target.meta_from_sizes == t.meta_from_sizes
    del data["target"]["meta_from_sizes"]  # JSON written before the key existed still loads
    assert ScalingResult.from_json(data).target.meta_from_sizes == []
    names = [tr.name for tr in res.plot().data]
    assert "meta-device runs, extrapolated" in names
