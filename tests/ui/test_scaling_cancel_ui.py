"""Real-browser test of cancelling a scaling probe: JupyterLab + Debian chromium (Python Playwright).

Opens a small notebook whose harness hangs at large sizes, measures it in the Scaling tab, presses
Cancel while the kernel is stuck in the harness, and checks that the panel shows the run as
cancelled (partial points kept, no spinner, Run usable again), that the server's
``DELETE probes/<id>`` interrupted the kernel, that the kernel is alive with the notebook's
namespace intact, and that a new run afterwards completes.
"""
from __future__ import annotations

import json
import re
import time

import pytest

pytestmark = [pytest.mark.ui, pytest.mark.slow]

NOTEBOOK = "slow_harness.ipynb"
HANG_S = 120  # the real run at T >= 1024 sleeps this long: only an interrupt ends it in time
SETTINGS = {"targetSize": 400_000, "probeTimeBudget": 60, "probeSizes": [16, 32]}
CELLS = [
    "import time\n\nimport torch\n\nMARKER = 'namespace intact'",
    "def harness_slow(T):\n"
    '    """Sums a (T, 256) tensor; the real run at T >= 1024 hangs (the meta-device prediction does not)."""\n'
    "    x = torch.ones(T, 256)\n"
    "    if x.device.type != 'meta' and T >= 1024:\n"
    f"        time.sleep({HANG_S})\n"
    "    return x.sum()",
]

# The notebook panel and its kernel, read through the app (exposed for tests).
KERNEL_JS = """() => {
  const nb = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.sessionContext);
  const kernel = nb && nb.sessionContext.session && nb.sessionContext.session.kernel;
  const code = nb ? Array.from(nb.content.model.cells).filter(c => c.type === 'code') : [];
  return {status: kernel ? kernel.status : null,
          ran: code.length > 0 && code.every(c => c.executionCount !== null)};
}"""

# Run ``code`` in the notebook's kernel (not in a cell) and return its stdout.
EXECUTE_JS = """async (code) => {
  const nb = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.sessionContext);
  const kernel = nb.sessionContext.session.kernel;
  let out = '';
  const future = kernel.requestExecute({code, silent: false, store_history: false});
  future.onIOPub = msg => {
    if (msg.header.msg_type === 'stream') { out += msg.content.text; }
    if (msg.header.msg_type === 'error') { out += msg.content.ename + ': ' + msg.content.evalue; }
  };
  const reply = await future.done;
  return {status: reply.content.status, out};
}"""


def _write_notebook(path):
    nb = {
        "cells": [{"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "source": src,
                   "execution_count": None, "outputs": []} for i, src in enumerate(CELLS)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory, ui):
    src = _write_notebook(tmp_path_factory.mktemp("nb") / NOTEBOOK)
    with ui.running_lab(tmp_path_factory.mktemp("lab"), SETTINGS, log_name="ui-cancel-server.log",
                        files=(src,)) as info:
        yield info


@pytest.fixture
def page(lab, ui):  # function scope: Playwright's loop must stop before pytest-jupyter's loop closes
    with ui.browser_page(last_screenshot="ui-cancel-last.png", width=1600, height=1000) as pg:
        yield pg


def _start(page, panel, sizes):
    panel.locator("select.jp-TorchReview-function").select_option("harness_slow")
    panel.locator("input.jp-TorchReview-sizes").fill(", ".join(map(str, sizes)))
    with page.expect_response(lambda r: "/torchreview-lab/probes" in r.url and r.request.method == "POST") as info:
        panel.get_by_role("button", name="Run", exact=True).click()
    assert info.value.status == 201, info.value.text()
    assert info.value.request.post_data_json["sizes"] == sizes
    return info.value.json()["id"]


def test_cancel_running_probe_then_run_again(lab, page, ui):
    from playwright.sync_api import expect

    ui.open_notebook(page, lab, NOTEBOOK)
    page.wait_for_function(f"() => ({KERNEL_JS})().status === 'idle'", timeout=60_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(f"() => {{ const s = ({KERNEL_JS})(); return s.ran && s.status === 'idle'; }}",
                           timeout=60_000)
    panel = ui.open_panel(page)
    with page.expect_response(lambda r: "/torchreview-lab/functions" in r.url) as info:
        panel.get_by_role("tab", name="Scaling").click()
    assert info.value.status == 200, info.value.text()
    assert "harness_slow" in [f["name"] for f in info.value.json()["functions"]]

    run_button = panel.locator(".jp-TorchReview-runButton")
    cancel_button = panel.locator(".jp-TorchReview-cancelButton")
    spinners = panel.locator(".jp-TorchReview-spinner")
    run = panel.locator('.jp-TorchReview-run[data-function="harness_slow"]')
    points = run.locator("tr.jp-TorchReview-point")

    # Start: T = 16 and 32 are measured at once, then the kernel hangs in the harness at T = 4096.
    probe_id = _start(page, panel, [16, 32, 4096])
    expect(points).to_have_count(2, timeout=30_000)
    expect(run).to_have_attribute("data-state", "running")
    expect(run.locator(".jp-TorchReview-pendingRow .jp-TorchReview-spinner")).to_be_visible()
    expect(panel.locator(".jp-TorchReview-tab-scaling .jp-TorchReview-spinner")).to_be_visible()
    expect(run_button).to_be_disabled()
    expect(run_button).to_have_text("Running…")
    expect(cancel_button).to_be_enabled()
    assert page.evaluate(f"() => ({KERNEL_JS})().status") == "busy"

    # Cancel: the server interrupts the kernel and answers with the cancelled probe.
    started = time.monotonic()
    with page.expect_response(lambda r: r.url.split("?")[0].endswith(f"/torchreview-lab/probes/{probe_id}")
                              and r.request.method == "DELETE") as info:
        cancel_button.click()
    assert info.value.status == 200, info.value.text()
    cancelled = info.value.json()
    assert cancelled["state"] == "cancelled" and cancelled["error"] is None, cancelled
    assert [p["size"] for p in cancelled["points"]] == [16, 32]
    expect(run).to_have_attribute("data-state", "cancelled")
    assert time.monotonic() - started < HANG_S / 4  # interrupted, not waited out

    # The panel: no spinner anywhere, the points measured so far kept, Run usable, Cancel not.
    expect(spinners).to_have_count(0)
    expect(run.locator(".jp-TorchReview-runState")).to_have_text("cancelled")
    expect(points).to_have_count(2)
    expect(run.locator(".jp-TorchReview-probeError")).to_have_count(0)
    expect(panel.locator(".jp-TorchReview-scaling")).to_have_attribute("data-running", "false")
    expect(run_button).to_be_enabled()
    expect(run_button).to_have_text("Run")
    expect(cancel_button).to_be_disabled()
    expect(panel.locator(".jp-TorchReview-status.jp-mod-error")).to_have_count(0)
    page.screenshot(path=str(ui.ARTIFACTS / "ui-cancel.png"))

    # The kernel survived the interrupt, with the notebook's namespace intact.
    page.wait_for_function(f"() => ({KERNEL_JS})().status === 'idle'", timeout=15_000)
    reply = page.evaluate(EXECUTE_JS, "print(MARKER, callable(harness_slow), torch.ones(3).sum().item())")
    assert reply == {"status": "ok", "out": "namespace intact True 3.0\n"}, reply

    # A new run afterwards completes, and replaces the cancelled curve.
    _start(page, panel, [16, 32])
    expect(run).to_have_attribute("data-state", "done", timeout=60_000)
    expect(panel.locator(".jp-TorchReview-run")).to_have_count(1)
    expect(points).to_have_count(2)
    expect(run.locator(".jp-TorchReview-runState")).to_have_text(re.compile(r"^done in \d+\.\d s$"))
    expect(run.locator(".jp-TorchReview-verdict")).to_contain_text("at T=400,000")
    expect(spinners).to_have_count(0)
    expect(run_button).to_be_enabled()
    expect(cancel_button).to_be_disabled()
    assert page.evaluate(f"() => ({KERNEL_JS})().status") == "idle"
    assert not page.errors, page.errors
