"""The notebook API: live progress of scale() (ipywidgets, text fallback) and the HTML reprs of
CheckResult and CompareResult. No kernel and no browser: the display is replaced by a recorder."""
import json
import sys
import types

import pytest
import torch

from measure_cases import scaling
from torchreview_lab.findings import Finding, Fix
from torchreview_lab.measure import CheckResult, CompareResult, compare, progress, scale
from torchreview_lab.measure.compare import CompareCase
from torchreview_lab.measure.result import ScalingResult

SIZES = (64, 128, 256, 512)
LINEAR_BYTES = 2 * 64 * 4  # scaling.linear keeps x and x * 2: 512 bytes per T


class Handle:
    """Stands for IPython's DisplayHandle: records the bundle shown and every update."""

    def __init__(self, bundle):
        self.shown = bundle
        self.updates = []

    def update(self, bundle, raw=False):
        assert raw
        self.updates.append(bundle)


@pytest.fixture
def notebook(monkeypatch):
    """Pretend to be in a Jupyter kernel: ``progress="auto"`` turns on; displays are recorded, and
    every view built is kept (``views``)."""
    handles, views = [], []

    def display(bundle):
        handles.append(Handle(bundle))
        return handles[-1]

    class Recorded(progress.ProbeProgress):
        def __init__(self, *a, **kw):
            views.append(self)
            super().__init__(*a, **kw)

    monkeypatch.setattr(progress, "in_kernel", lambda: True)
    monkeypatch.setattr(progress, "_display", display)
    monkeypatch.setattr(progress, "ProbeProgress", Recorded)
    return types.SimpleNamespace(handles=handles, views=views)


def _scale(fn, **kw):
    kw.setdefault("sizes", SIZES)
    kw.setdefault("repeats", 1)
    kw.setdefault("device", "cpu")
    return scale(fn, **kw)


def _closed(view):
    """Every model of the view is closed: the widgets and their layout and style models (each has a
    comm in a kernel), and none is left in ipywidgets' registry."""
    from ipywidgets.widgets.widget import _instances

    models = [view.box, view.bar, view.label, view.log, view.bar.layout, view.bar.style, view.label.style]
    return all(m.comm is None for m in models) and view.model_id not in _instances


# ---------------------------------------------------------------------------------------- progress
def test_widget_moves_per_point_and_per_skip_then_closes(notebook):
    from ipywidgets.widgets.widget import _instances

    before, seen = len(_instances), []
    res = _scale(scaling.linear, budget_bytes=200 * LINEAR_BYTES, on_point=seen.append)  # T=256 is over
    (view,) = notebook.views
    (handle,) = notebook.handles
    # shown as a widget view (with a text line for frontends without widgets), blanked at the end
    assert handle.shown[progress.WIDGET_MIME]["model_id"] == view.model_id
    assert "scaling probe of" in handle.shown["text/plain"] and "T=64 … 512" in handle.shown["text/plain"]
    assert handle.updates[-1] == {"text/plain": ""}
    assert _closed(view) and view.closed and len(_instances) == before  # no model left behind
    # a line per grid size: the measured ones with bytes and time, the skipped ones with the reason
    assert [p.size for p in res.points] == [64, 128]
    assert view.steps[0].startswith("T=64: ") and "kB" in view.steps[0] and "s" in view.steps[0]
    assert view.steps[1].startswith("T=128: ")
    assert view.steps[2].startswith("skipped T=256: predicted") and "exceeds the budget" in view.steps[2]
    assert view.steps[3].startswith("skipped T=512: a smaller size (T=256) was over the memory budget")
    assert len(view.steps) == 4
    assert view.bar.value == view.bar.max == 4 and view.bar.description == "4/4"
    assert view.bar.bar_style == "warning"
    # the runs started were announced: the meta prediction before the first real run, the real runs
    assert "meta run at T=64…" in view.events and "measuring T=64…" in view.events
    assert view.events.index("meta run at T=64…") < view.events.index("measuring T=64…")
    assert "timing the per-call overhead at T=2…" in view.events
    # the user's on_point still gets every point
    assert [p.size for p in seen] == [64, 128]


def test_label_and_bar_update_as_the_probe_goes(notebook, monkeypatch):
    history = []

    def on_point(p):  # when the user's callback runs, the view already shows the point
        (view,) = notebook.views
        history.append((view.bar.value, view.label.value))

    _scale(scaling.linear, sizes=(64, 128, 256), target=100_000, on_point=on_point)
    (view,) = notebook.views
    assert [h[0] for h in history] == [1, 2, 3]
    assert [h[1].split(":")[0] for h in history] == ["T=64", "T=128", "T=256"]
    assert "meta run at T=100,000…" in view.events  # the prediction at the target
    assert "target T=100,000" in notebook.handles[0].shown["text/plain"]
    assert _closed(view)


def test_closes_when_the_harness_raises(notebook):
    def fails_at_128(T):
        if T >= 128 and torch.get_default_device().type != "meta":
            raise RuntimeError("boom")
        return scaling.linear(T)

    res = _scale(fails_at_128)
    (view,) = notebook.views
    assert [s["kind"] for s in res.skipped] == ["error", "stopped", "stopped"]
    assert view.steps[1] == "skipped T=128: the harness raised RuntimeError: boom"
    assert view.bar.bar_style == "danger" and view.bar.value == 4
    assert _closed(view) and notebook.handles[0].updates[-1] == {"text/plain": ""}


def test_closes_on_keyboard_interrupt_in_the_harness(notebook):
    def interrupted_at_128(T):
        if T >= 128:
            raise KeyboardInterrupt
        return scaling.linear(T)

    with pytest.raises(KeyboardInterrupt):
        _scale(interrupted_at_128)
    (view,) = notebook.views
    assert view.steps[0].startswith("T=64: ")
    assert _closed(view) and notebook.handles[0].updates[-1] == {"text/plain": ""}


def test_closes_when_the_cell_ends(notebook, monkeypatch):
    """Safety net: an exception outside the harness leaves scale() without its close(); IPython's
    post_run_cell closes the view."""
    from IPython.core.events import EventManager

    shell = types.SimpleNamespace()
    shell.events = EventManager(shell, {"post_run_cell": lambda result: None})
    monkeypatch.setattr(progress, "_shell", lambda: shell)
    view = progress.ProbeProgress(ScalingResult("f", "cpu"), [64, 128], None)
    assert shell.events.callbacks["post_run_cell"]
    shell.events.trigger("post_run_cell", None)
    assert view.closed and _closed(view)
    assert not shell.events.callbacks["post_run_cell"]
    view.close()  # idempotent


def test_auto_is_off_outside_a_kernel(monkeypatch):
    def display(bundle):
        raise AssertionError("nothing may be displayed outside a kernel")

    monkeypatch.setattr(progress, "_display", display)
    assert not progress.in_kernel()
    assert progress.probe_progress("auto", ScalingResult("f", "cpu"), [64]) is progress.OFF
    assert progress.probe_progress(True, ScalingResult("f", "cpu"), [64]) is progress.OFF  # no IPython shell
    res = _scale(scaling.linear, sizes=(64, 128))
    assert [p.size for p in res.points] == [64, 128]
    # the off view leaves the harness and on_point untouched
    assert progress.OFF.wrap(scaling.linear) is scaling.linear and progress.OFF.chain(None) is None


@pytest.mark.parametrize("shell_class, expected", [("ZMQInteractiveShell", True),
                                                    ("TerminalInteractiveShell", False)])
def test_in_kernel_means_a_zmq_shell(monkeypatch, shell_class, expected):
    shell = type(shell_class, (), {})()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert progress.in_kernel() is expected


def test_bad_progress_value_is_an_error():
    with pytest.raises(ValueError, match="progress must be"):
        _scale(scaling.linear, sizes=(64,), progress="yes")


def test_kernel_side_probe_stays_silent(notebook, capsys):
    from torchreview_lab import kernel_side

    kernel_side.run_probe({"lin": scaling.linear}, json.dumps({"function": "lin", "sizes": [64, 128],
                                                               "device": "cpu"}))
    assert not notebook.views and not notebook.handles
    events = [json.loads(line[len(kernel_side.MARK):])["event"]
              for line in capsys.readouterr().out.split("\n") if line.startswith(kernel_side.MARK)]
    assert events.count("point") == 2 and "result" in events


def test_widget_errors_do_not_change_the_result(notebook, monkeypatch):
    def broken(self, *a, **kw):
        raise RuntimeError("widget gone")

    plain = _scale(scaling.linear, budget_bytes=200 * LINEAR_BYTES, progress=False)
    monkeypatch.setattr(progress.ProbeProgress, "_step", broken)
    monkeypatch.setattr(progress.ProbeProgress, "_status_line", broken)
    seen = []
    res = _scale(scaling.linear, budget_bytes=200 * LINEAR_BYTES, on_point=seen.append)
    (view,) = notebook.views
    assert view.broken and _closed(view)
    assert [p.size for p in res.points] == [p.size for p in plain.points] == [64, 128]
    assert [(s["size"], s["kind"]) for s in res.skipped] == [(s["size"], s["kind"]) for s in plain.skipped]
    assert not any("on_point" in w for w in res.warnings)
    assert [p.size for p in seen] == [64, 128]


def test_a_display_that_fails_means_no_view(notebook, monkeypatch):
    def display(bundle):
        raise RuntimeError("no frontend")

    monkeypatch.setattr(progress, "_display", display)
    res = _scale(scaling.linear, sizes=(64, 128))
    assert [p.size for p in res.points] == [64, 128] and not any("on_point" in w for w in res.warnings)
    (view,) = notebook.views  # built, failed, closed
    assert view.closed and _closed(view)


def test_user_on_point_errors_are_still_reported(notebook):
    def bad(p):
        raise ValueError("mine")

    res = _scale(scaling.linear, sizes=(64, 128), on_point=bad)
    assert any("on_point callback failed: ValueError: mine" in w for w in res.warnings)
    (view,) = notebook.views
    assert len(view.steps) == 2 and _closed(view)


def test_text_fallback_without_ipywidgets(notebook, monkeypatch):
    monkeypatch.setattr(progress, "widgets_available", lambda: False)
    _scale(scaling.linear, budget_bytes=200 * LINEAR_BYTES)
    (view,) = notebook.views
    (handle,) = notebook.handles
    assert view.box is None and progress.WIDGET_MIME not in handle.shown
    texts = [u["text/plain"] for u in handle.updates]
    assert any("[1/4] T=64: " in t for t in texts)
    assert any("[3/4] skipped T=256: predicted" in t for t in texts)
    assert texts[-1] == ""


# -------------------------------------------------------------------------------------------- HTML
def _finding(**kw):
    base = dict(rule="TR013", category="numerical-stability", severity="critical",
                title="log produces Inf", path="model.py", line=12, problem="aten.log returned 8 Inf",
                evidence={"op": "log", "inf": 8, "numel": 40})
    base.update(kw)
    return Finding(**base)


def test_check_result_html_lists_findings_notes_and_seconds():
    res = CheckResult([_finding(), _finding(rule="TR011", category="performance-patterns", severity="medium",
                                            title="host sync in a loop", line=30, problem="12 .item() calls",
                                            fix=Fix(before="x.item()", after="x"))],
                      notes=["TR010 device check skipped: the harness takes no device="],
                      seconds={"nonfinite": 0.5, "syncs": 0.25}, function="step")
    out = res._repr_html_()
    assert "<table>" in out and out.count("<tr>") == 3  # header + 2 findings
    assert out.index("TR013") < out.index("TR011")  # sorted by severity
    for text in ("critical", "medium", "log produces Inf", "model.py:12", "model.py:30", "aten.log returned 8 Inf",
                 "op: log; inf: 8; numel: 40", "x.item()", "device check skipped", "nonfinite 0.50",
                 "syncs 0.25", "2 checks in 0.75 s", "2 findings (1 critical, 1 medium)", "<code>step</code>"):
        assert text in out, text
    assert "border-left:4px solid" in out and "background" not in out
    assert str(res).startswith("Runtime checks of step: 2 finding(s)")  # the text repr is unchanged


def test_check_result_html_escapes_user_text():
    evil = "<script>alert('x')</script>"
    res = CheckResult([_finding(title=evil, problem=evil, path=f"<b>{evil}.py", evidence={"op": evil},
                                fix=Fix(before=evil, after=evil))],
                      notes=[evil], seconds={evil: 0.1}, function=evil)
    out = res._repr_html_()
    assert "<script>" not in out and "<b><script" not in out
    assert out.count("&lt;script&gt;") >= 7


def test_check_result_html_without_findings():
    out = CheckResult([], notes=["TR014 graph_breaks check failed: X"], seconds={"graph_breaks": 0.1})._repr_html_()
    assert "no findings" in out and "<table>" not in out and "graph_breaks check failed" in out


def _window(x, w):
    c = torch.cumsum(x, dim=-1)
    out = c.clone()
    out[..., w:] = c[..., w:] - c[..., :-w]
    return out


def _window_bug(x, w):  # wrong at T=1 only
    out = _window(x, w)
    return out * 2 if x.shape[-1] == 1 else out


def _make(T, K=3):
    return (torch.randn(K, T, dtype=torch.float64), 2)


def test_compare_result_html_shows_cases_errors_and_verdict():
    ok = compare(_window, _window, _make, sizes=[1, {"T": 5, "K": 2}], seeds=(0,))
    assert [c.grad_abs_diff for c in ok.cases] == [0.0, 0.0]  # gradients compared and recorded
    out = ok._repr_html_()
    assert "<table>" in out and out.count("<tr>") == 3
    for text in ("agree on all 2 cases", "(reference)", "<code>T=5, K=2</code>", "outputs: max abs",
                 "gradients: max abs", "pass", "outputs and gradients", "rtol 0.0001, atol 1e-05"):
        assert text in out, text
    bad = compare(_window, _window_bug, _make, sizes=[1, 7], seeds=(0,))
    out = bad._repr_html_()
    assert "1 of 2 cases disagree" in out and out.count(">fail<") == 1 and out.count(">pass<") == 1
    assert "output 0" in out
    assert CompareResult.from_json(bad.to_json()).to_json() == bad.to_json()


def test_compare_result_html_gradient_failure_and_escaping():
    def a(x):
        return (x ** 2).sum(-1)

    def b(x):  # same values, gradient cut
        return (x.detach() ** 2).sum(-1) + 0 * x.sum(-1)

    res = compare(a, b, lambda T: torch.randn(T, 3), sizes=[4], seeds=(0,))
    (case,) = res.cases
    assert case.what == "gradient of input 0" and case.max_abs_diff == 0.0 and case.grad_abs_diff > 0.1
    assert f"max |diff| {case.grad_abs_diff:.3g}" in res.findings()[0].problem  # the failing gradient's diff
    res.cases.append(CompareCase("<script>x</script>", 1, False, "error in b", error="ValueError: <script>"))
    out = res._repr_html_()
    assert "gradient of input 0" in out and f"{case.grad_abs_diff:.3g}" in out
    assert "<script>" not in out and "&lt;script&gt;x&lt;/script&gt;" in out
