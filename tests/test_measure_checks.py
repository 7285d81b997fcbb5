"""Each runtime check finds its planted bug at the user's line and stays quiet on the fixed code."""
import pytest
import torch

from measure_cases import buggy, good_gradcheck
from torchreview_lab.findings import CATEGORIES, Finding
from torchreview_lab.measure import CheckResult, check, compare
from torchreview_lab.measure.rules import RULES


def _only(res, rule):
    return [f for f in res if f.rule == rule]


CASES = [
    # (check name, rule, buggy harness, marker of the line, fixed harness)
    ("device", "TR010", buggy.device_bug, "device", buggy.device_ok),
    ("syncs", "TR011", buggy.sync_bug, "sync-item", buggy.sync_ok),
    ("grads", "TR012", buggy.grad_detach_bug, "detach", buggy.grad_ok),
    ("grads", "TR012", buggy.grad_unused_bug, None, buggy.grad_ok),
    ("nonfinite", "TR013", buggy.nan_bug, "nan", buggy.nan_ok),
    ("graph_breaks", "TR014", buggy.graph_break_bug, "graph-break", buggy.graph_ok),
    ("leaks", "TR015", buggy.leak_bug, None, buggy.leak_ok),
    ("gradcheck", "TR016", buggy.gradcheck_bug, "gradcheck", good_gradcheck.gradcheck_ok),
]


@pytest.mark.parametrize("name, rule, bug, marker, fixed", CASES, ids=[f"{c[0]}-{c[2].__name__}" for c in CASES])
def test_check_finds_planted_bug_and_is_quiet_on_fix(name, rule, bug, marker, fixed):
    res = check(bug, size=16, checks=[name])
    found = _only(res, rule)
    assert found, f"{rule} missed the bug in {bug.__name__}: {res}"
    f = found[0]
    assert f.path.endswith("buggy.py")  # the user's file, not torch's or ours
    if marker is not None:
        assert f.line == buggy.line_of(marker)
    assert f.category == RULES[rule].category and f.category in CATEGORIES
    assert f.problem and f.evidence
    quiet = check(fixed, size=16, checks=[name])
    assert not _only(quiet, rule), f"{rule} false positive on {fixed.__name__}: {quiet}"


def test_sync_counts_per_call_site():
    res = check(buggy.sync_bug, size=16, checks=["syncs"])
    by_line = {f.line: f for f in res}
    item = by_line[buggy.line_of("sync-item")]
    assert item.evidence["count"] == 5 and item.severity == "medium"
    assert by_line[buggy.line_of("sync-bool")].evidence["kind"] == "bool(tensor)"


def test_gradient_findings_name_the_parameters():
    res = check(buggy.grad_unused_bug, size=8, checks=["grads"])
    (f,) = res
    assert f.evidence["no_grad"] == ["TwoHeads.unused.weight", "TwoHeads.unused.bias"]
    detach = check(buggy.grad_detach_bug, size=8, checks=["TR012"])[0]
    assert detach.severity == "critical" and "detached at" in detach.problem


def test_leak_reports_growth_per_call():
    res = check(buggy.leak_bug, size=16, checks=["leaks"])
    (f,) = res
    assert f.evidence["growth_per_call_bytes"] >= 16 * 16 * 4
    buggy._HISTORY.clear()


def test_device_check_with_make_inputs_form():
    def make_inputs(T):
        return (torch.randn(T, 8),)

    def step(x):
        return (x * torch.ones(x.shape[0], 8)).sum()

    res = check(step, size=8, checks=["device"], make_inputs=make_inputs)
    assert [f.rule for f in res] == ["TR010"]


def test_device_check_skips_without_device_argument():
    res = check(buggy.sync_bug, size=8, checks=["device"])
    assert not res and any("TR010 device check skipped" in n for n in res.notes)


def test_check_result_renders_and_round_trips():
    res = check(buggy.nan_bug, size=8, checks=["nonfinite", "syncs"])
    assert isinstance(res, list) and all(isinstance(f, Finding) for f in res)
    text = str(res)
    assert "TR013" in text and "buggy.py" in text
    assert "<table>" in res._repr_html_()
    back = CheckResult.from_json(res.to_json())
    assert [f.to_json() for f in back] == [f.to_json() for f in res]


def test_a_failing_check_becomes_a_note():
    def explodes(T):
        raise RuntimeError("boom")

    res = check(explodes, size=4, checks=["syncs", "nonfinite"])
    assert not res and len(res.notes) == 2 and "boom" in res.notes[0]


def test_unknown_check_name():
    with pytest.raises(ValueError, match="unknown check"):
        check(buggy.grad_ok, checks=["nope"])


def test_checks_leave_no_state_behind():
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    state = torch.random.get_rng_state()
    check(buggy.gradcheck_bug, size=8)
    assert torch.equal(state, torch.random.get_rng_state())
    assert _get_current_dispatch_mode() is None and not _get_current_function_mode_stack()
    assert "apply" not in buggy.BadSquare.__dict__  # the recording wrapper was removed
    assert not torch.nn.modules.module._global_forward_pre_hooks


# ---- compare
def ref_cumsum_window(x, w):
    c = torch.cumsum(x, dim=-1)
    out = c.clone()
    out[..., w:] = c[..., w:] - c[..., :-w]
    return out


def fast_window_ok(x, w):
    return torch.nn.functional.conv1d(x.unsqueeze(1), torch.ones(1, 1, w, dtype=x.dtype),
                                      padding=w - 1).squeeze(1)[..., : x.shape[-1]]


def fast_window_bug(x, w):  # wrong at T < w: drops the partial windows
    c = torch.cumsum(x, dim=-1)
    out = torch.zeros_like(c)
    out[..., w:] = c[..., w:] - c[..., :-w]
    out[..., w - 1:w] = c[..., w - 1:w]
    return out


def make_window(T, K=3):
    return (torch.randn(K, T, dtype=torch.float64), 2)


def test_compare_agrees_on_equivalent_implementations():
    res = compare(ref_cumsum_window, fast_window_ok, make_window,
                  sizes=[1, 2, 7, {"T": 1, "K": 1}, {"T": 5, "K": 2}])
    assert res.ok, str(res)
    assert len(res.cases) == 10 and not res.findings()


def test_compare_finds_disagreement_at_edge_sizes():
    res = compare(ref_cumsum_window, fast_window_bug, make_window, sizes=[1, 2, 7])
    assert not res.ok
    (f,) = res.findings()
    assert f.rule == "TR017" and f.line > 1 and f.path.endswith("test_measure_checks.py")
    assert res.failures[0].size == 1
    assert "disagree" in str(res)


def test_compare_checks_gradients():
    def a(x):
        return (x ** 2).sum(-1)

    def b(x):  # same values, gradient cut
        return (x.detach() ** 2).sum(-1) + 0 * x.sum(-1)

    res = compare(a, b, lambda T: torch.randn(T, 3), sizes=[1, 4])
    assert not res.ok and res.failures[0].what.startswith("gradient")


def test_device_check_finds_module_left_on_cpu():
    from torch import nn

    def not_moved(T, device="cpu"):
        model = nn.Linear(8, 1)
        x = torch.randn(T, 8, device=device)
        return model(x).sum()

    def moved(T, device="cpu"):
        model = nn.Linear(8, 1).to(device)
        x = torch.randn(T, 8, device=device)
        return model(x).sum()

    (f,) = check(not_moved, size=8, checks=["device"])
    assert f.rule == "TR010" and "stays on the CPU" in f.title
    assert f.evidence["source"] == "model = nn.Linear(8, 1)"
    assert f.fix.after == "model = Net().to(x.device)"
    assert not check(moved, size=8, checks=["device"])


def _branchy_step(x, w):
    y = x @ w
    if y.sum() > 0:  # data-dependent branch: a graph break
        y = y * 2
    return y.sum()


def test_graph_break_check_with_make_inputs_traces_the_computation_alone():
    step = _branchy_step
    def make_inputs(T):
        return torch.randn(T, 4), torch.randn(4, 2, requires_grad=True)

    res = check(step, size=8, checks=["graph_breaks"], make_inputs=make_inputs)
    assert [f.rule for f in res] == ["TR014"]
    assert not any("building inputs" in n for n in res.notes)


def test_graph_break_check_keeps_the_users_compiled_functions():
    """torch._dynamo.explain resets dynamo: every function the user compiled would recompile. The check
    traces in its own region instead, finds the break again on a second run, and leaves the user's
    compiled entry in place."""
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    step = _branchy_step
    def make_inputs(T):
        return torch.ones(T, 4), torch.ones(4, 2)

    compiled = torch.compile(step, backend=counting_backend)
    x, w = make_inputs(8)
    compiled(x, w)
    n = len(compiles)
    assert n >= 1
    for _ in range(2):
        res = check(step, size=8, checks=["graph_breaks"], make_inputs=make_inputs)
        assert [f.rule for f in res] == ["TR014"]
        assert not any("reset" in note for note in res.notes)
    compiled(x, w)
    assert len(compiles) == n  # still cached: nothing was thrown away


def test_device_check_points_at_the_factory_of_a_derived_cpu_tensor():
    import inspect

    def positions(T, device="cpu"):
        x = torch.randn(T, 4, device=device)
        pos = torch.arange(T).float()[:, None] * 2  # the factory without device=, then derived on the CPU
        return (x + pos).sum()

    def fixed(T, device="cpu"):
        x = torch.randn(T, 4, device=device)
        pos = torch.arange(T, device=x.device).float()[:, None] * 2
        return (x + pos).sum()

    (f,) = check(positions, size=8, checks=["device"])
    assert f.title == "torch.arange() without device= creates a CPU tensor"
    assert f.line == inspect.getsourcelines(positions)[1] + 2
    assert f.evidence["op"] == "add"
    assert not check(fixed, size=8, checks=["device"])
