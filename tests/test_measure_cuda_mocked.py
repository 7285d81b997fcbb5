"""The CUDA path of the measuring engine on a CPU-only build: only ``torch.cuda``'s allocator statistics
(and device bookkeeping: availability, current device, synchronize, the sync debug mode) are faked.

Everything else is the product's real code: ``scale`` with its CUDA tracker, the budget and OOM
handling, the target verdict against device memory, the renderers, the CLI and the sync check.

The fake (:class:`FakeCudaAllocator`) keeps per device index what the caching allocator reports:
bytes allocated now, the peak since the last ``reset_peak_memory_stats``, bytes reserved by the
cache (given back by ``empty_cache``), the device's total memory and what other processes hold. The
harnesses below do real, small CPU work and mirror each tensor they make "on the GPU" in the fake:
``track(t)`` allocates its bytes and a ``weakref.finalize`` frees them when the tensor dies, so the
fake follows the real tensors' lifetimes (an allocation too big for the device raises
``torch.OutOfMemoryError`` as the caching allocator does). No tensor is ever created on "cuda"
(impossible on this build): ``with torch.device("cuda")`` is entered by the probe, which is fine
without CUDA, and the harnesses pass ``device="cpu"`` explicitly.
"""
import json
import sys
import time
import types
import warnings
import weakref

import pytest
import torch

from torchreview_lab import cli as top_cli
from torchreview_lab.measure import ScalingResult, scale
from torchreview_lab.measure.checks._base import CheckContext
from torchreview_lab.measure.checks.syncs import check_syncs
from torchreview_lab.measure.probe import clock, resolve_device
from torchreview_lab.measure.trackers import CudaMemoryTracker, device_memory, real_tracker

MB = 10 ** 6
GB = 10 ** 9
FAKE_MODULE = "_trl_fake_cuda"  # where harnesses (also those in a user file, for the CLI) find the fake
_SYNC_MODES = {"default": 0, "warn": 1, "error": 2}
_STATS = ("synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated",
          "mem_get_info", "empty_cache", "harness")  # the log entries the order assertions look at


class FakeCudaAllocator:
    """``torch.cuda``'s allocator statistics for ``devices`` GPUs of ``total`` bytes each (see module doc)."""

    def __init__(self, total=80 * GB, other=0, baseline=0, stale_peak=0, devices=1, current=0):
        self.total = total
        self.other = other                                    # held by other processes: not ours to use
        self.devices = devices
        self.current = current
        self.allocated = {i: baseline for i in range(devices)}
        self.peak = {i: max(baseline, stale_peak) for i in range(devices)}  # a peak from before the probe
        self.reserved = {i: max(baseline, stale_peak) for i in range(devices)}
        self.sync_mode = 0
        self.modes_seen = []                                  # sync debug mode read by harnesses
        self.log = []

    # -- the real argument handling of torch.cuda
    def _index(self, device, optional=True):
        idx = torch.cuda._utils._get_device_index(device, optional=optional)
        if not 0 <= idx < self.devices:
            raise RuntimeError(f"CUDA error: invalid device ordinal {idx}")
        return idx

    # -- what the harnesses do on the "GPU"
    def malloc(self, device, nbytes):
        idx = self._index(device)
        cap = self.total - self.other
        if self.allocated[idx] + nbytes > cap:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {nbytes / 2 ** 20:.2f} MiB. GPU {idx} has a total capacity "
                f"of {self.total / 2 ** 30:.2f} GiB of which {(cap - self.reserved[idx]) / 2 ** 20:.2f} MiB is free.")
        self.allocated[idx] += nbytes
        self.peak[idx] = max(self.peak[idx], self.allocated[idx])
        self.reserved[idx] = max(self.reserved[idx], self.allocated[idx])
        self.log.append(("malloc", idx, nbytes))
        return idx

    def free(self, idx, nbytes):
        self.allocated[idx] -= nbytes
        self.log.append(("free", idx, nbytes))

    def track(self, t, device):
        """``t`` (a real CPU tensor) stands for a tensor on ``device``: its bytes live until it dies."""
        n = t.untyped_storage().nbytes()
        idx = self.malloc(device, n)
        weakref.finalize(t, self.free, idx, n)
        return t

    def free_bytes(self, idx=0):
        return self.total - self.other - self.reserved[idx]

    # -- the patched torch.cuda API
    def is_available(self):
        return True

    def device_count(self):
        return self.devices

    def current_device(self):
        return self.current

    def mem_get_info(self, device=None):
        if device is None:
            device = self.current_device()
        idx = self._index(device, optional=False)  # as torch: a device without an index is refused
        self.log.append(("mem_get_info", idx))
        return self.free_bytes(idx), self.total

    def reset_peak_memory_stats(self, device=None):
        idx = self._index(device)
        self.log.append(("reset_peak_memory_stats", idx))
        self.peak[idx] = self.allocated[idx]

    def memory_allocated(self, device=None):
        idx = self._index(device)
        self.log.append(("memory_allocated", idx))
        return self.allocated[idx]

    def max_memory_allocated(self, device=None):
        idx = self._index(device)
        self.log.append(("max_memory_allocated", idx))
        return self.peak[idx]

    def synchronize(self, device=None):
        self.log.append(("synchronize", self._index(device)))

    def empty_cache(self):
        self.log.append(("empty_cache", dict(self.allocated)))
        self.reserved = dict(self.allocated)

    def get_sync_debug_mode(self):
        return self.sync_mode

    def set_sync_debug_mode(self, debug_mode):
        mode = _SYNC_MODES[debug_mode] if isinstance(debug_mode, str) else int(debug_mode)
        if mode not in (0, 1, 2):
            raise RuntimeError("invalid value of debug_mode, expected one of 0,1,2")
        self.log.append(("set_sync_debug_mode", mode))
        self.sync_mode = mode

    # -- reading the log
    def calls(self, name):
        return [e for e in self.log if e[0] == name]

    def stats_log(self):
        return [e for e in self.log if e[0] in _STATS]


PATCHED = ("is_available", "device_count", "current_device", "mem_get_info", "reset_peak_memory_stats",
           "memory_allocated", "max_memory_allocated", "synchronize", "empty_cache", "get_sync_debug_mode",
           "set_sync_debug_mode")


@pytest.fixture
def fake_cuda(monkeypatch):
    """``fake_cuda(**kw)`` installs a :class:`FakeCudaAllocator` in place of torch.cuda's statistics.

    The harnesses' stand-in CPU work runs on one thread (the probe leaves the thread count alone off
    the CPU), so that it stays fast on a loaded machine."""

    def install(**kw):
        fake = FakeCudaAllocator(**kw)
        for name in PATCHED:
            monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
        monkeypatch.setitem(sys.modules, FAKE_MODULE, types.SimpleNamespace(ALLOC=fake))
        return fake

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield install
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- harnesses


def _fake():
    return sys.modules[FAKE_MODULE].ALLOC


def _on_gpu(device):
    return torch.device(device).type == "cuda"


def _tensor(device, *shape):
    """A float32 tensor "on" ``device``: real on the CPU, mirrored in the fake allocator for cuda."""
    t = torch.ones(*shape, device="cpu" if _on_gpu(device) else device)
    return _fake().track(t, device) if _on_gpu(device) else t


def _enter(name, T, device):
    if _on_gpu(device):
        _fake().log.append(("harness", name, T, str(device)))


def linear_4096(T, device="cpu"):
    """Exactly 4096*T bytes on the device: one (T, 1024) float32 buffer, worked on in place."""
    _enter("linear_4096", T, device)
    x = _tensor(device, T, 1024)
    x.mul_(2).add_(1)
    return x.sum()


def pairwise(T, device="cpu"):
    """O(T^2): a (T, 8) input and its (T, T) Gram matrix, 32*T + 4*T^2 bytes."""
    _enter("pairwise", T, device)
    x = _tensor(device, T, 8)
    g = x @ x.T
    if _on_gpu(device):
        _fake().track(g, device)
    return g.sum()


OOM_FROM = 1024


def workspace_jump(T, device="cpu"):
    """4096*T bytes, plus from T=1024 on a T^3-byte workspace (an algorithm switch the meta run does not
    see) that a 512 MB device cannot hold: the allocator raises OutOfMemoryError."""
    _enter("workspace_jump", T, device)
    x = _tensor(device, T, 1024)
    if _on_gpu(device) and T >= OOM_FROM:
        _fake().malloc(device, T ** 3)
    return x.sum()


def _law(fit, T):
    return fit.coefficient * T ** fit.exponent


def _harness_sizes(fake, name=None):
    return [e[2] for e in fake.calls("harness") if name is None or e[1] == name]


# ---------------------------------------------------------------------------------- devices


def test_resolve_device_follows_cuda_availability(fake_cuda, monkeypatch):
    fake_cuda()
    assert resolve_device("auto") == "cuda"
    assert resolve_device(None) == "cuda"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="'cuda:5' does not exist"):  # one GPU: a clear error, not a crash later
        resolve_device("cuda:5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="is_available"):
        resolve_device("cuda")


def test_checks_save_the_random_state_of_the_checked_gpu_only(fake_cuda):
    from torchreview_lab.measure.checks import _rng_devices

    fake_cuda(devices=2, current=0)
    assert _rng_devices("cpu") == []          # no CUDA context for CPU checks on a GPU machine
    assert _rng_devices("cuda:1") == [1]      # the checked GPU, not the current one
    assert _rng_devices("cuda") == [0]


def test_device_memory_asks_the_allocator_of_the_right_device(fake_cuda):
    fake = fake_cuda(total=80 * GB, other=30 * GB, baseline=2 * GB, devices=2, current=1)
    assert device_memory("cuda") == {"total": 80 * GB, "free": 48 * GB}
    assert device_memory("cuda:0") == {"total": 80 * GB, "free": 48 * GB}
    # "cuda" means the current device; an explicit index is used as is (mem_get_info refuses no index)
    assert fake.calls("mem_get_info") == [("mem_get_info", 1), ("mem_get_info", 0)]


def test_cuda_tracker_subtracts_the_baseline_and_resets_the_stale_peak(fake_cuda):
    fake = fake_cuda(baseline=3 * MB, stale_peak=50 * MB)
    tracker = real_tracker("cuda")
    assert isinstance(tracker, CudaMemoryTracker)
    with tracker:
        a = fake.track(torch.ones(5 * MB // 4), "cuda")
        del a                                              # 5 MB peak, gone again
        kept = fake.track(torch.ones(MB // 4), "cuda")     # 1 MB still alive at exit
    assert tracker.peak_bytes == 5 * MB                     # not 50 MB - 3 MB: the peak was reset
    assert tracker.net_bytes == 1 * MB
    assert fake.stats_log() == [("synchronize", 0), ("reset_peak_memory_stats", 0), ("memory_allocated", 0),
                                ("synchronize", 0), ("max_memory_allocated", 0), ("memory_allocated", 0)]
    del kept
    assert real_tracker("cuda:1").device == torch.device("cuda", 1)


def test_timing_on_cuda_is_wall_clock():
    assert clock("cuda") is time.perf_counter


# ---------------------------------------------------------------------------------- scale


SIZES = (256, 512, 1024, 2048)


def test_scale_on_cuda_measures_the_allocator_peak_above_the_baseline(fake_cuda):
    fake = fake_cuda(baseline=3 * MB, stale_peak=50 * MB)
    res = scale(linear_4096, sizes=SIZES, device="cuda", repeats=1)
    assert res.device == "cuda"
    assert [p.size for p in res.points] == list(SIZES)
    assert [p.peak_bytes for p in res.points] == [4096 * T for T in SIZES]  # max_memory_allocated - 3 MB
    assert all(p.seconds > 0 for p in res.points)
    assert not res.skipped
    mf = res.memory_fit
    assert mf.exponent == pytest.approx(1.0, abs=0.1) and mf.r2 > 0.999
    assert _law(mf, 10_000) == pytest.approx(4096 * 10_000, rel=0.01)
    assert fake.allocated[0] == 3 * MB                      # every run's tensors were given back
    assert res.budget_bytes == (80 * GB - 50 * MB) // 2     # half of mem_get_info's free memory


def test_scale_on_cuda_synchronizes_around_every_run_and_resets_before_each_measurement(fake_cuda):
    fake = fake_cuda(baseline=1 * MB)
    res = scale(linear_4096, sizes=(256, 512, 1024), device="cuda", repeats=1)
    log = fake.stats_log()
    resets = [i for i, e in enumerate(log) if e[0] == "reset_peak_memory_stats"]
    assert len(resets) == len(res.points) == 3              # one measured run per size
    for i in resets:  # sync, reset, baseline, run, sync (the probe's and the tracker's), peak
        assert log[i - 1] == ("synchronize", 0)
        assert log[i + 1] == ("memory_allocated", 0)
        assert log[i + 2][0] == "harness"
        assert log[i + 3] == ("synchronize", 0)
        after = next(e for e in log[i + 3:] if e[0] != "synchronize")
        assert after == ("max_memory_allocated", 0)
    runs = [i for i, e in enumerate(log) if e[0] == "harness"]
    assert len(runs) > len(resets)                          # the timed runs too
    for i in runs:  # every run ends on a synchronize: its time and its peak include the device's work
        assert log[i + 1] == ("synchronize", 0)
    timed = [i for i in runs if log[i][2] in (256, 512, 1024)]
    for i in timed:  # and every measured or timed run at a grid size starts on a synchronized device
        assert log[i - 1] in (("synchronize", 0), ("memory_allocated", 0))
    # the cache is emptied after each size, and after the tiny run that times the per-call overhead
    assert len(fake.calls("empty_cache")) == len(res.points) + 1
    assert [e[3] for e in fake.calls("harness")] == ["cuda"] * len(runs)  # the probe passed device="cuda"


def test_scale_on_a_second_gpu_uses_that_gpus_statistics(fake_cuda):
    fake = fake_cuda(devices=2, current=0, baseline=2 * MB)
    res = scale(linear_4096, sizes=(256, 512), device="cuda:1", repeats=1, meta=False)
    assert res.device == "cuda:1"
    assert [p.peak_bytes for p in res.points] == [4096 * 256, 4096 * 512]
    devices = {e[1] for e in fake.stats_log() if e[0] not in ("harness", "empty_cache")}
    assert devices == {1}                                   # never the current device 0
    assert {e[1] for e in fake.calls("malloc")} == {1}
    assert fake.peak[0] == 2 * MB


def test_quadratic_law_on_cuda(fake_cuda):
    fake_cuda()
    sizes = (128, 256, 512, 1024)
    res = scale(pairwise, sizes=sizes, device="cuda", repeats=1)
    assert [p.peak_bytes for p in res.points] == [32 * T + 4 * T * T for T in sizes]
    assert res.memory_fit.exponent == pytest.approx(2.0, abs=0.1)


def test_target_is_judged_against_free_device_memory(fake_cuda):
    fake = fake_cuda(total=80 * GB, other=45 * GB, baseline=1 * MB)
    free = fake.free_bytes()
    assert free == 35 * GB - 1 * MB
    res = scale(linear_4096, sizes=SIZES, target=10_000_000, device="cuda", repeats=1)
    t = res.target
    assert t.device_bytes == 80 * GB                        # total from mem_get_info
    assert t.device_free_bytes == free                      # free from mem_get_info
    assert t.meta_peak_bytes == 4096 * 10_000_000 + 4       # the meta run at the target (the sum's 4 bytes)
    assert t.predicted_bytes == pytest.approx(4096e7, rel=1e-3)
    assert t.fits is False                                  # 41 GB > 35 GB free (though < 80 GB total)
    assert t.max_size_that_fits == pytest.approx(free / 4096, rel=1e-3)
    assert fake.calls("mem_get_info") == [("mem_get_info", 0)]

    fits = scale(linear_4096, sizes=SIZES, target=5_000_000, device="cuda", repeats=1, meta=False).target
    assert fits.fits is True and fits.peak_bytes == pytest.approx(4096 * 5e6, rel=1e-3)
    assert fits.max_size_that_fits == pytest.approx(free / 4096, rel=1e-3)


def test_default_budget_is_half_the_free_memory_and_a_size_over_it_never_runs(fake_cuda):
    fake = fake_cuda(total=24 * MB, other=4 * MB, baseline=1 * MB)
    free = fake.free_bytes()
    sizes = (256, 512, 1024, 2048, 4096)                    # 1, 2, 4, 8.4, 16.8 MB
    res = scale(linear_4096, sizes=sizes, device="cuda", repeats=1)
    assert res.budget_bytes == free // 2 == 9_500_000
    assert [p.size for p in res.points] == [256, 512, 1024, 2048]
    assert [s["kind"] for s in res.skipped] == ["budget"]
    assert res.skipped[0]["size"] == 4096 and "exceeds the budget of 9.5 MB" in res.skipped[0]["reason"]
    assert 4096 not in _harness_sizes(fake)                 # skipped without running
    assert max(fake.peak.values()) - 1 * MB <= res.budget_bytes


def test_explicit_budget_on_cuda_skips_before_running(fake_cuda):
    fake = fake_cuda()
    res = scale(pairwise, sizes=(128, 256, 512, 1024), device="cuda", repeats=1, budget_bytes=300_000)
    assert [p.size for p in res.points] == [128, 256]       # 69 kB, 270 kB
    assert [(s["size"], s["kind"]) for s in res.skipped] == [(512, "budget"), (1024, "stopped")]
    assert not {512, 1024} & set(_harness_sizes(fake))      # never run over the budget


def test_out_of_memory_on_cuda_is_caught_reported_and_stops_the_grid(fake_cuda):
    fake = fake_cuda(total=512 * MB, baseline=2 * MB)
    res = scale(workspace_jump, sizes=SIZES, device="cuda", repeats=1)
    assert [p.size for p in res.points] == [256, 512]
    assert [(s["size"], s["kind"]) for s in res.skipped] == [(1024, "oom"), (2048, "stopped")]
    assert "out of memory: OutOfMemoryError: CUDA out of memory" in res.skipped[0]["reason"]
    assert "ran out of memory" in res.skipped[1]["reason"]
    assert _harness_sizes(fake).count(1024) == 1 and 2048 not in _harness_sizes(fake)
    # the failed run's tensors were released before the cache was emptied, and nothing leaked
    stats = fake.stats_log()
    oom_run = stats.index(("harness", "workspace_jump", 1024, "cuda"))
    after = [e for e in stats[oom_run:] if e[0] == "empty_cache"]
    assert after and after[0][1] == {0: 2 * MB}
    assert fake.allocated[0] == 2 * MB
    (tr021,) = res.findings()
    assert tr021.rule == "TR021" and tr021.title == "Out of memory at T=1,024"
    # the process goes on: the same device measures again
    again = scale(linear_4096, sizes=(256, 512), device="cuda", repeats=1, meta=False)
    assert [p.peak_bytes for p in again.points] == [4096 * 256, 4096 * 512]


# ---------------------------------------------------------------------------------- rendering


@pytest.fixture
def cuda_result(fake_cuda):
    fake_cuda(total=80 * GB, other=45 * GB)
    return scale(linear_4096, sizes=SIZES, target=10_000_000, device="cuda", repeats=1, name="model.py:step")


def test_text_of_a_cuda_result_names_the_device_and_the_verdict(cuda_result):
    text = str(cuda_result)
    assert text.splitlines()[0] == "Scaling of model.py:step on cuda (memory budget 17.5 GB)"
    verdict = next(line for line in text.splitlines() if line.startswith("verdict: "))
    assert verdict == f"verdict: {cuda_result.memory_fit.big_o()} memory: 41 GB at T=10,000,000 — does not fit " \
                      "in 80 GB (35 GB free); largest T that fits ≈ 8,540,000"
    assert cuda_result.memory_fit.big_o() in ("O(T)", "O(T^1.00)")
    for T in SIZES:
        assert f"{T:>10,}" in text
    (tr020,) = cuda_result.findings()
    assert tr020.rule == "TR020" and tr020.title == "Memory at T=10,000,000 does not fit on cuda"
    assert tr020.evidence["device_bytes"] == 80 * GB


def test_json_of_a_cuda_result_round_trips(cuda_result):
    data = json.loads(cuda_result.dumps())
    assert data["device"] == "cuda"
    assert data["target"]["device_bytes"] == 80 * GB and data["target"]["device_free_bytes"] == 35 * GB
    assert data["target"]["fits"] is False
    assert [p["peak_bytes"] for p in data["points"]] == [4096 * T for T in SIZES]
    back = ScalingResult.from_json(json.dumps(data))
    assert back.device == "cuda" and back.verdict() == cuda_result.verdict()
    assert "does not fit in 80 GB (35 GB free)" in back.verdict()


# ---------------------------------------------------------------------------------- CLI

HARNESS_FILE = f'''\
import sys

import torch


def linear_4096(T, device="cpu"):
    on_gpu = torch.device(device).type == "cuda"
    x = torch.ones(T, 1024, device="cpu" if on_gpu else device)
    if on_gpu:
        sys.modules["{FAKE_MODULE}"].ALLOC.track(x, device)
    return x.mul_(2).sum()
'''


@pytest.mark.parametrize("device", ["cuda", "auto"])
@pytest.mark.parametrize("target, rc, fits", [(10_000_000, 1, False), (1_000_000, 0, True)])
def test_cli_scale_on_cuda_json(fake_cuda, tmp_path, capsys, device, target, rc, fits):
    fake = fake_cuda(total=80 * GB, other=45 * GB)
    path = tmp_path / "model.py"
    path.write_text(HARNESS_FILE)
    code = top_cli.main(["scale", f"{path}:linear_4096", "--device", device, "--sizes", "256,512,1024",
                         "--repeats", "1", "--target", str(target), "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == rc
    assert data["device"] == "cuda"
    assert [p["peak_bytes"] for p in data["points"]] == [4096 * 256, 4096 * 512, 4096 * 1024]
    assert data["budget_bytes"] == 35 * GB // 2
    assert data["target"]["device_bytes"] == 80 * GB and data["target"]["device_free_bytes"] == 35 * GB
    assert data["target"]["fits"] is fits
    assert len(fake.calls("reset_peak_memory_stats")) == 3


# ---------------------------------------------------------------------------------- the sync check


def _reads_sync_mode(T, device="cpu"):
    _fake().modes_seen.append(torch.cuda.get_sync_debug_mode())
    x = torch.ones(T, 4, device="cpu")
    total = 0.0
    for i in range(12):
        total += x[i].sum().item()  # SYNC-ITEM
    return x.sum() + total


def _raises(T, device="cpu"):
    _fake().modes_seen.append(torch.cuda.get_sync_debug_mode())
    raise RuntimeError("the harness failed")


def _line_of(fn, marker):
    import inspect

    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, text in enumerate(lines) if marker in text)


@pytest.mark.parametrize("before", [0, 2])
def test_sync_check_warns_during_the_run_and_restores_the_mode(fake_cuda, before):
    fake = fake_cuda()
    fake.sync_mode = before
    findings = check_syncs(CheckContext(fn=_reads_sync_mode, size=16, device="cuda"))
    assert fake.modes_seen == [1]                           # "warn" while the harness ran
    assert fake.sync_mode == before
    assert fake.calls("set_sync_debug_mode") == [("set_sync_debug_mode", 1), ("set_sync_debug_mode", before)]
    (f,) = findings
    assert f.rule == "TR011" and f.severity == "high" and f.evidence == {
        "kind": ".item()", "count": 12, "source": "total += x[i].sum().item()  # SYNC-ITEM"}
    assert f.path == __file__ and f.line == _line_of(_reads_sync_mode, "SYNC-ITEM")


def test_sync_check_restores_the_mode_when_the_harness_raises(fake_cuda):
    fake = fake_cuda()
    fake.sync_mode = 2
    with pytest.raises(RuntimeError, match="the harness failed"):
        check_syncs(CheckContext(fn=_raises, size=4, device="cuda"))
    assert fake.modes_seen == [1] and fake.sync_mode == 2


def test_sync_check_on_cpu_leaves_the_mode_alone(fake_cuda):
    fake = fake_cuda()
    check_syncs(CheckContext(fn=_reads_sync_mode, size=16, device="cpu"))
    assert fake.modes_seen == [0] and not fake.calls("set_sync_debug_mode")


def test_sync_check_synchronizes_the_checked_device(fake_cuda):
    fake = fake_cuda(devices=2, current=0)
    check_syncs(CheckContext(fn=_reads_sync_mode, size=16, device="cuda:1"))
    assert fake.calls("synchronize") == [("synchronize", 1)]


# An op whose kernel syncs: like torch's CUDA kernels under set_sync_debug_mode("warn"), it warns from
# C++, so Python attributes the warning to the innermost Python frame, the one that called the kernel
# (torch's OpOverload.__call__), never to the user's line (stacklevel=2 from a Python kernel is that frame).
_LIB = torch.library.Library("trl_fake_cuda", "DEF")
_LIB.define("host_read(Tensor x) -> Tensor")


def _host_read_kernel(x):
    if torch.cuda.get_sync_debug_mode() == 1:
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=2)
    return x.clone()


_LIB.impl("host_read", _host_read_kernel, "CPU")


def _syncing_op(T, device="cpu"):
    x = torch.ones(T, device="cpu")
    for _ in range(3):
        x = torch.ops.trl_fake_cuda.host_read(x)  # TORCH-SYNC
    return x.sum()


def test_torch_sync_warnings_are_reported_at_the_users_line(fake_cuda):
    fake_cuda()
    findings = check_syncs(CheckContext(fn=_syncing_op, size=8, device="cuda"))
    (f,) = findings
    assert f.evidence["kind"] == "synchronizing CUDA call" and f.evidence["count"] == 3
    assert f.path == __file__ and f.line == _line_of(_syncing_op, "TORCH-SYNC")
