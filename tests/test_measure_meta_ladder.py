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
from torchreview_lab.measure import meta_ladder
from torchreview_lab.measure.meta import MetaRun
from torchreview_lab.measure.meta_ladder import meta_at_target

TARGET = 400_000
LIMIT = 4.0  # real meta runs: the ladder needs ~0.5 s here; the margin is for a loaded 2-core CI machine


@pytest.fixture(scope="module", autouse=True)
def warm_meta():
    """The first meta run in a process pays a one-off ~1 s (meta kernels and modes load); the probe
    has always made a meta run before the target (its budget guard), so the tests start warm too."""
    meta_run(lambda T: torch.randn(T).sum(), 16)


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
    m = meta_at_target(rows_loop, TARGET, time_limit=LIMIT)
    assert m.ok, m.skipped_reason
    assert m.extrapolated_from and max(m.extrapolated_from) < TARGET  # never run at the target itself
    assert m.peak_bytes == pytest.approx(rows_loop_bytes(TARGET), rel=1e-3)
    assert "Python loop" in m.note and "extrapolated" in m.note and f"T={TARGET:,}" in m.note
    assert m.seconds < LIMIT + 0.5  # within the time limit (plus one rung's overshoot at most)


def test_a_constant_buffer_is_kept_apart_from_the_growing_part():
    """A plain power law through the rungs (16 MiB + 192 B·T at T ≤ 4,096 is mostly constant) would
    fit an exponent near 0.1 and predict a fifth of the bytes at T=400,000."""
    m = meta_at_target(loop_with_weights, TARGET, time_limit=LIMIT)
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

    m = meta_at_target(needs_cpu, TARGET, time_limit=LIMIT)
    assert not m.ok and m.extrapolated_from == []
    assert "RuntimeError" in m.skipped_reason and "only runs on the CPU" in m.skipped_reason
    assert not m.timed_out  # a failure, not a time limit: no ladder is tried


def test_scale_reports_the_extrapolated_meta_figure_everywhere():
    res = scale(rows_loop, sizes=(64, 128, 256), target=TARGET, device="cpu", repeats=1,
                meta_time_limit=LIMIT, progress=False)
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


# ---- the ladder's decisions, on simulated meta runs (deterministic: no clock, no machine speed)

class FakeMeta:
    """Meta runs with a given byte law and op count per T; each costs ``per_op`` simulated seconds
    on a fake clock that the ladder's deadline reads."""

    def __init__(self, monkeypatch, bytes_at, ops_at, per_op=1e-4, fail=None):
        self.now, self.sizes = 0.0, []
        self.bytes_at, self.ops_at, self.per_op, self.fail = bytes_at, ops_at, per_op, fail
        monkeypatch.setattr(meta_ladder, "meta_run", self.run)
        monkeypatch.setattr(meta_ladder.time, "perf_counter", lambda: self.now)

    def run(self, harness, size, time_limit=10.0, backward=False):
        self.sizes.append(size)
        ops = self.ops_at(size)
        secs = ops * self.per_op
        if self.fail:
            return MetaRun(size=size, seconds=0.01, ops=3, skipped_reason=self.fail)
        if secs > time_limit:
            self.now += time_limit
            return MetaRun(size=size, seconds=time_limit, ops=int(time_limit / self.per_op), timed_out=True,
                           skipped_reason=f"meta run at T={size:,} stopped: time limit reached (a Python loop over T?)")
        self.now += secs
        return MetaRun(size=size, peak_bytes=int(self.bytes_at(size)), seconds=secs, ops=ops)


def test_ladder_doubles_while_the_time_lasts_and_carries_a_polynomial_to_the_target(monkeypatch):
    fake = FakeMeta(monkeypatch, bytes_at=lambda T: 1_000_000 + 64 * T + 4 * T * T, ops_at=lambda T: 3 * T)
    m = meta_at_target(None, TARGET, time_limit=3.0)
    assert fake.sizes[:2] == [390, 780] and TARGET not in fake.sizes  # the run at the target (120 s) is never tried
    assert fake.sizes == m.extrapolated_from and all(b == 2 * a for a, b in zip(fake.sizes, fake.sizes[1:]))
    assert fake.now <= 3.0  # every rung was predicted to fit, and did
    next_rung = 3 * (2 * max(fake.sizes)) * 1e-4
    assert next_rung * meta_ladder.TIME_SAFETY > 3.0 - fake.now  # it stopped when the next would not fit
    # a + b*T + c*T^2 from three rungs is close at 40x beyond them (the quadratic term leads)
    assert m.peak_bytes == pytest.approx(1_000_000 + 64 * TARGET + 4 * TARGET ** 2, rel=0.02)
    assert "O(T^" in m.note and "≈120 s" in m.note


def test_cheap_meta_runs_go_straight_to_the_target(monkeypatch):
    fake = FakeMeta(monkeypatch, bytes_at=lambda T: 8 * T * T, ops_at=lambda T: 40)  # vectorized: ops do not grow
    m = meta_at_target(None, TARGET, time_limit=3.0)
    assert fake.sizes == [390, 780, TARGET]
    assert m.ok and m.peak_bytes == 8 * TARGET * TARGET and m.extrapolated_from == [] and m.note is None


def test_an_exact_run_that_overruns_its_prediction_falls_back_to_the_rungs(monkeypatch):
    fake = FakeMeta(monkeypatch, bytes_at=lambda T: 100 * T, ops_at=lambda T: 40 if T < 1000 else 10 * T)
    m = meta_at_target(None, TARGET, time_limit=3.0)  # the two pilots look cheap; the target is not
    assert fake.sizes == [390, 780, TARGET]
    assert not m.ok and "time limit" in m.skipped_reason  # no time left for rungs: said, not guessed


def test_a_pilot_that_fails_on_meta_is_reported_for_the_target(monkeypatch):
    fake = FakeMeta(monkeypatch, bytes_at=lambda T: T, ops_at=lambda T: T,
                    fail="meta run at T=390 failed at h.py:3: RuntimeError: needs real values")
    m = meta_at_target(None, TARGET, time_limit=3.0)
    assert fake.sizes == [390] and m.size == TARGET
    assert not m.ok and "RuntimeError: needs real values" in m.skipped_reason


def test_a_target_close_to_the_pilot_is_one_exact_run(monkeypatch):
    fake = FakeMeta(monkeypatch, bytes_at=lambda T: 4 * T, ops_at=lambda T: T)
    m = meta_at_target(None, 1000, time_limit=3.0, pilot=512)
    assert fake.sizes == [1000] and m.peak_bytes == 4000 and m.extrapolated_from == []
