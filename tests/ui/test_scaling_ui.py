"""Real-browser test of the Scaling tab: JupyterLab + Debian chromium (Python Playwright).

Opens the demo notebook in its own ``jupyter lab``, runs all cells in the notebook's kernel, then
in the TorchReview panel's Scaling tab measures ``harness_exact`` and ``harness_streaming`` at
T = 256 … 2048 in that kernel. Checks the plotly chart (measured points, the fitted exponent in the
legend, the device-memory line, two overlaid curves), the verdicts, the probe finding (TR020, "does
not fit") in the findings list with its evidence, the measured evidence on the static memory
finding, and that the chart follows the theme. A second test starts the measurement from the static
finding's "Measure scaling" (fresh page, same kernel). Screenshots go to ``test-artifacts/``
(``TORCHREVIEW_UPDATE_SCREENSHOT=1`` also refreshes ``docs/screenshot-scaling.png``).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ui, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SIZES = [256, 512, 1024, 2048]
TARGET = 400_000
# probeTimeBudget bounds a probe (the meta-device run at the target gets what is left, ≤ 10 s).
SETTINGS = {"targetSize": TARGET, "probeTimeBudget": 60, "probeSizes": [128, 256]}

# The notebook panel and its kernel, read through the app (exposed for tests).
KERNEL_JS = """() => {
  const nb = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.sessionContext);
  const kernel = nb && nb.sessionContext.session && nb.sessionContext.session.kernel;
  const cells = nb ? Array.from(nb.content.model.cells) : [];
  const code = cells.filter(c => c.type === 'code');
  return {status: kernel ? kernel.status : null,
          ran: code.length > 0 && code.every(c => c.executionCount !== null),
          counts: code.map(c => c.executionCount)};
}"""

# The memory chart's traces as plotly holds them (``el.data``), and its legend's text.
CHART_JS = """(sel) => {
  const el = document.querySelector(sel);
  if (!el || !el.data) { return null; }
  return {traces: el.data.map(t => ({name: t.name, role: t.meta && t.meta.role, fn: t.meta && t.meta.function,
                                     x: Array.from(t.x || []), y: Array.from(t.y || []),
                                     showlegend: t.showlegend !== false})),
          legend: Array.from(el.querySelectorAll('.legendtext')).map(n => n.textContent),
          points: el.querySelectorAll('.scatterlayer .trace .points path.point').length,
          paper: el._fullLayout ? el._fullLayout.paper_bgcolor : null,
          font: el._fullLayout ? el._fullLayout.font.color : null};
}"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory, ui):
    with ui.running_lab(tmp_path_factory.mktemp("lab"), SETTINGS, log_name="ui-scaling-server.log") as info:
        yield info


@pytest.fixture
def page(lab, ui):  # function scope: Playwright's loop must stop before pytest-jupyter's loop closes
    with ui.browser_page(last_screenshot="ui-scaling-last.png", width=1600, height=1000) as pg:
        yield pg


def _run_all_cells(page):
    page.wait_for_function(f"() => ({KERNEL_JS})().status === 'idle'", timeout=60_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(f"() => {{ const s = ({KERNEL_JS})(); return s.ran && s.status === 'idle'; }}",
                           timeout=60_000)


def _measure(page, panel, function, sizes):
    panel.locator(f'select.jp-TorchReview-function option[value="{function}"]').wait_for(state="attached")
    panel.locator("select.jp-TorchReview-function").select_option(function)
    panel.locator("input.jp-TorchReview-sizes").fill(", ".join(map(str, sizes)))
    with page.expect_response(lambda r: "/torchreview-lab/probes" in r.url and r.request.method == "POST") as info:
        panel.get_by_role("button", name="Run", exact=True).click()
    assert info.value.status == 201, info.value.text()
    sent = info.value.request.post_data_json
    started = time.monotonic()
    selector = f'.jp-TorchReview-run[data-function="{function}"]'
    page.wait_for_selector(f'#torchreview-panel {selector}:not([data-state="running"])', timeout=90_000)
    run = panel.locator(selector)
    elapsed = time.monotonic() - started
    assert run.get_attribute("data-state") == "done", run.inner_text()
    return sent, run, elapsed


def _chart(page, which="memory"):
    return page.evaluate(CHART_JS, f".jp-TorchReview-chart-{which}")


def test_scaling_tab_measures_and_overlays(lab, page, ui):
    t0 = time.monotonic()
    ui.open_notebook(page, lab)
    _run_all_cells(page)
    panel = ui.open_panel(page)
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    ui.widen_right_sidebar(page, 620)

    # The Scaling tab lists the kernel's functions of T, harness-like first, with their signature.
    with page.expect_response(lambda r: "/torchreview-lab/functions" in r.url) as info:
        panel.get_by_role("tab", name="Scaling").click()
    assert info.value.status == 200, info.value.text()
    names = [f["name"] for f in info.value.json()["functions"]]
    assert names[:2] == ["harness_exact", "harness_streaming"], names
    options = panel.locator("select.jp-TorchReview-function option")
    assert options.first.inner_text() == "harness_exact(T)"
    # Settings are the form's defaults: target, sizes; the plotly chunk is not loaded before a chart.
    assert panel.locator("input.jp-TorchReview-target").input_value() == str(TARGET)
    assert panel.locator("input.jp-TorchReview-sizes").input_value() == "128, 256"
    assert not page.evaluate("() => !!document.querySelector('.js-plotly-plot')")

    # harness_exact: the materialised edge tensor. Points arrive, then the fit and the verdict.
    sent, run, exact_s = _measure(page, panel, "harness_exact", SIZES)
    assert sent["function"] == "harness_exact" and sent["sizes"] == SIZES and sent["target"] == TARGET
    assert sent["time_budget"] == SETTINGS["probeTimeBudget"] and sent["device"] == "auto"
    assert sent["budget_fraction"] == 0.5 and sent["isolated"] is False and sent["checks"] is False
    assert run.locator("tr.jp-TorchReview-point").count() == len(SIZES)
    verdict = run.locator(".jp-TorchReview-verdict").inner_text()
    assert re.search(r"O\(T\^1\.0\d\) memory: .* at T=400,000 — does not fit in", verdict), verdict
    page.wait_for_function(f"() => ({CHART_JS})('.jp-TorchReview-chart-memory')?.legend.length >= 2")
    chart = _chart(page)
    measured = [t for t in chart["traces"] if t["role"] == "measured"]
    assert len(measured) == 1 and measured[0]["x"] == SIZES and all(y > 0 for y in measured[0]["y"])
    assert chart["points"] >= len(SIZES)  # plotly drew the markers
    legend = [s for s in chart["legend"] if s.startswith("harness_exact")]
    assert legend and re.fullmatch(r"harness_exact\s+O\(T\^1\.0\d\)", legend[0]), chart["legend"]
    device = [t for t in chart["traces"] if t["role"] == "device"]
    assert device and device[0]["name"] == "device memory" and "device memory" in chart["legend"]
    device_bytes = device[0]["y"][0]
    fit = next(t for t in chart["traces"] if t["role"] == "fit" and t["fn"] == "harness_exact")
    assert max(fit["x"]) == pytest.approx(TARGET) and fit["y"][-1] > device_bytes  # the exact curve crosses the line
    crossing = next(x for x, y in zip(fit["x"], fit["y"]) if y > device_bytes)
    assert crossing < TARGET
    assert [t for t in chart["traces"] if t["role"] == "target-fit"]
    assert page.locator(".jp-TorchReview-chart-memory .annotation-text", has_text="target T=400,000").count() == 1
    time_chart = _chart(page, "time")
    assert [t["x"] for t in time_chart["traces"] if t["role"] == "measured"] == [SIZES]

    # harness_streaming: O(K·C) state; its curve is overlaid on the same chart and stays below.
    sent, run, streaming_s = _measure(page, panel, "harness_streaming", SIZES)
    verdict = run.locator(".jp-TorchReview-verdict").inner_text()
    assert re.search(r"at T=400,000 — fits in", verdict), verdict
    page.wait_for_function(
        f"() => ({CHART_JS})('.jp-TorchReview-chart-memory')?.legend.some(s => s.startsWith('harness_streaming'))"
    )
    chart = _chart(page)
    measured = {t["fn"]: t for t in chart["traces"] if t["role"] == "measured"}
    assert set(measured) == {"harness_exact", "harness_streaming"} and all(t["x"] == SIZES for t in measured.values())
    stream_fit = next(t for t in chart["traces"] if t["role"] == "fit" and t["fn"] == "harness_streaming")
    assert max(stream_fit["y"]) < device_bytes
    assert any(re.fullmatch(r"harness_streaming\s+O\(T\^[01]\.\d\d\)|harness_streaming\s+O\(1\)", s)
               for s in chart["legend"]), chart["legend"]

    # Screenshot: the chart with both curves.
    page.mouse.move(0, 0)
    panel.evaluate("el => el.scrollTop = 0")
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "ui-scaling.png"))
    panel.screenshot(path=str(ARTIFACTS / "ui-scaling-panel-only.png"))
    if os.environ.get("TORCHREVIEW_UPDATE_SCREENSHOT"):
        shutil.copy(ARTIFACTS / "ui-scaling.png", ROOT / "docs" / "screenshot-scaling.png")

    # The chart follows the theme: dark theme, new background.
    light = chart["paper"]
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function(
        f"() => {{ const c = ({CHART_JS})('.jp-TorchReview-chart-memory'); return c && c.paper !== {light!r}; }}",
        timeout=15_000,
    )
    dark = _chart(page)
    assert dark["paper"] != light and dark["font"] != chart["font"]
    page.screenshot(path=str(ARTIFACTS / "ui-scaling-dark.png"))
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})")

    # The probe finding joins the findings list, with its evidence, and jumps to the harness.
    panel.get_by_role("tab", name="Findings").click()
    probe_row = panel.locator('.jp-TorchReview-finding[data-rule="TR020"][data-dynamic="true"]')
    probe_row.wait_for()
    assert "does not fit" in probe_row.inner_text()
    probe_row.locator(".jp-TorchReview-row").click()
    evidence = probe_row.locator(".jp-TorchReview-evidence")
    evidence.wait_for()
    text = evidence.inner_text()
    assert "O(T^1.0" in text and "at the target" in text and "device memory" in text, text

    # Review: the static memory finding in edge_potentials (reached by harness_exact) shows what
    # was measured, and offers to measure again.
    with page.expect_response(lambda r: "/torchreview-lab/review" in r.url):
        panel.get_by_role("button", name="Review", exact=True).click()
    static = panel.locator('.jp-TorchReview-finding[data-rule="TR101"]')
    static.wait_for()
    measured_line = static.locator(".jp-TorchReview-measured")
    measured_line.wait_for()
    assert re.search(r"measured O\(T\^1\.0\d\) with harness_exact, .* at T=400,000 — does not fit in",
                     measured_line.inner_text()), measured_line.inner_text()
    assert static.locator(".jp-TorchReview-measureButton").inner_text() == "Measure again"
    page.screenshot(path=str(ARTIFACTS / "ui-scaling-findings.png"))
    assert not page.errors, page.errors
    total = time.monotonic() - t0
    print(f"\nharness_exact {exact_s:.1f} s, harness_streaming {streaming_s:.1f} s, test body {total:.1f} s")


def test_measure_scaling_from_static_finding(lab, page, ui):
    """The static memory finding (TR101 in edge_potentials) offers "Measure scaling": the panel picks
    the harness that reaches it, switches to the Scaling tab with the run, and the finding shows
    what was measured once the run is done."""
    from playwright.sync_api import expect

    ui.open_notebook(page, lab)
    _run_all_cells(page)
    panel = ui.open_panel(page)
    panel.get_by_role("tab", name="Findings").click()
    # After a review the panel lists the kernel's functions quietly: the finding offers a measurement.
    with page.expect_response(lambda r: "/torchreview-lab/functions" in r.url) as listed:
        with page.expect_response(lambda r: "/torchreview-lab/review" in r.url):
            panel.get_by_role("button", name=re.compile(r"^Review( again)?$")).click()
    assert listed.value.status == 200, listed.value.text()
    static = panel.locator('.jp-TorchReview-finding[data-rule="TR101"]:not([data-dynamic])')
    button = static.locator(".jp-TorchReview-measureButton")
    expect(button).to_have_text("Measure scaling")
    expect(static.locator(".jp-TorchReview-measured")).to_have_count(0)

    with page.expect_response(lambda r: "/torchreview-lab/probes" in r.url and r.request.method == "POST") as info:
        button.click()
    assert info.value.status == 201, info.value.text()
    sent = info.value.request.post_data_json
    assert sent["function"] == "harness_exact" and sent["sizes"] == SETTINGS["probeSizes"], sent
    assert sent["target"] == TARGET

    # The Scaling tab opens on the run, which completes.
    expect(panel.locator(".jp-TorchReview-body")).to_have_attribute("data-tab", "scaling")
    expect(panel.locator("select.jp-TorchReview-function")).to_have_value("harness_exact")
    run = panel.locator('.jp-TorchReview-run[data-function="harness_exact"]')
    expect(run).to_have_attribute("data-state", "done", timeout=90_000)
    expect(run.locator("tr.jp-TorchReview-point")).to_have_count(len(SETTINGS["probeSizes"]))
    expect(run.locator(".jp-TorchReview-verdict")).to_contain_text("at T=400,000")
    verdict = run.locator(".jp-TorchReview-verdict").inner_text()
    expect(panel.locator(".jp-TorchReview-spinner")).to_have_count(0)

    # Back on the Findings tab, the static finding carries the measurement as evidence.
    panel.get_by_role("tab", name="Findings").click()
    measured = static.locator(".jp-TorchReview-measured")
    expect(measured).to_have_attribute("data-state", "done")
    expect(measured).to_have_text(re.compile(r"^measured O\(T\^\d\.\d\d\) with harness_exact, .* at T=400,000 — "
                                             r"(does not fit|fits) in "))
    fits = "does not fit" not in measured.inner_text()
    assert ("does not fit" in verdict) == (not fits), verdict
    expect(button).to_have_text("Measure again")
    expect(button).to_be_enabled()
    # ... and the probe's own finding joins the list when the measurement says it does not fit.
    if not fits:
        expect(panel.locator('.jp-TorchReview-finding[data-rule="TR020"][data-dynamic="true"]')).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "ui-measure-finding.png"))
    assert not page.errors, page.errors
