"""Real-browser test of the TorchReview panel: JupyterLab + Debian chromium (Python Playwright).

Starts its own ``jupyter lab`` on a free loopback port with a temporary root holding a copy of
the demo notebook, opens the notebook and the panel, reviews, jumps to a finding and switches
standards. Screenshots go to ``test-artifacts/`` (``TORCHREVIEW_UPDATE_SCREENSHOT=1`` also
refreshes ``docs/screenshot-panel.png``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ui, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "notebooks" / "semimarkov_demo.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
BUG_TEXT = "edge = torch.zeros(batch, T, K, C, C)"  # no device=: the device-handling rule flags it
SETTINGS = {"autoReviewOnSave": True, "ignoredRules": ["TR099"],  # TR099: no such rule, just sent along
            "severityOverrides": {"TR201": "low"}}


def _bug_location():
    """(cell index, 1-based line) of the torch.zeros call in the demo notebook."""
    cells = json.loads(DEMO.read_text(encoding="utf-8"))["cells"]
    for i, cell in enumerate(cells):
        lines = "".join(cell["source"]).splitlines()
        for j, line in enumerate(lines):
            if BUG_TEXT in line:
                return i, j + 1
    raise AssertionError(f"{DEMO.name} no longer contains {BUG_TEXT!r}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, ui):
    with ui.running_lab(tmp_path_factory.mktemp("lab"), SETTINGS) as info:
        yield info


@pytest.fixture
def page(lab, ui):  # function scope: Playwright's loop must stop before pytest-jupyter's loop closes
    with ui.browser_page() as pg:
        yield pg


# What the notebook says about itself, read through the app (exposed for tests) and the DOM.
STATE_JS = """() => {
  const app = window.jupyterapp;
  const panel = Array.from(app.shell.widgets('main')).find(w => w.content && w.content.widgets);
  const nb = panel.content;
  const cell = nb.activeCell;
  const pos = cell && cell.editor ? cell.editor.getCursorPosition() : null;
  const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'));
  const activeEl = document.querySelector('.jp-Notebook .jp-Cell.jp-mod-active');
  const domIndex = activeEl ? Number(activeEl.getAttribute('data-windowed-list-index') ?? cells.indexOf(activeEl)) : -1;
  // The DOM caret: the CodeMirror line that holds the selection's focus, in the active cell.
  let domLine = -1;
  const sel = window.getSelection();
  if (activeEl && sel && sel.focusNode) {
    const node = sel.focusNode.nodeType === 1 ? sel.focusNode : sel.focusNode.parentElement;
    const line = node && node.closest('.cm-line');
    if (line && activeEl.contains(line)) {
      domLine = Array.from(line.parentElement.querySelectorAll(':scope > .cm-line')).indexOf(line);
    }
  }
  return {index: nb.activeCellIndex, line: pos ? pos.line : -1, column: pos ? pos.column : -1,
          domIndex, domLine, mode: nb.mode, focused: !!(activeEl && activeEl.contains(document.activeElement))};
}"""


def _review_done(page, standard):
    page.wait_for_selector(f'.jp-TorchReview-body[data-status="done"][data-standard="{standard}"]')


def test_panel_reviews_jumps_and_switches_standard(lab, page, ui):
    cell, line = _bug_location()
    ui.open_notebook(page, lab)

    # The panel lives in the right sidebar: open it from its tab.
    panel = ui.open_panel(page)
    assert "semimarkov_demo.ipynb" in panel.locator(".jp-TorchReview-notebook").inner_text()

    # Review with the research standard; the torch.zeros finding appears at its cell and line.
    assert panel.locator(".jp-TorchReview-standardOption.jp-mod-selected").inner_text() == "Research"
    with page.expect_response(lambda r: "/torchreview-lab/review" in r.url) as resp_info:
        panel.get_by_role("button", name="Review", exact=True).click()
    response = resp_info.value
    assert response.status == 200
    sent = json.loads(response.request.post_data)
    assert sent["standard"] == "research" and sent["path"] == DEMO.name
    assert sent["ignore"] == SETTINGS["ignoredRules"]  # settings are read
    assert sent["severity"] == SETTINGS["severityOverrides"] and sent["select"] == []
    assert {f["severity"] for f in response.json()["findings"] if f["rule"] == "TR201"} == {"low"}
    assert any(BUG_TEXT in c["source"] for c in sent["cells"]), sent["cells"]  # live editor content
    _review_done(page, "research")
    row = panel.locator(f'.jp-TorchReview-finding[data-cell="{cell}"][data-line="{line}"]').first
    row.wait_for(state="visible")
    assert f"cell {cell + 1}" in row.inner_text() and f"line {line}" in row.inner_text()
    research = response.json()
    n_research = research["summary"]["total"]
    assert n_research == panel.locator(".jp-TorchReview-finding").count() > 0
    for sev in ("critical", "high", "medium", "low"):
        chip = panel.locator(f".jp-TorchReview-chip.jp-TorchReview-sev-{sev} .jp-TorchReview-chipCount")
        assert int(chip.inner_text()) == research["summary"]["by_severity"][sev]

    # Jump: the notebook's active cell and cursor move to the finding.
    before = page.evaluate(STATE_JS)
    assert before["index"] != cell
    row.locator(".jp-TorchReview-row").click()
    page.wait_for_function(f"() => ({STATE_JS})().index === {cell} && ({STATE_JS})().line === {line - 1}")
    after = page.evaluate(STATE_JS)
    assert after["domIndex"] == cell, after
    assert after["mode"] == "edit" and after["focused"], after
    assert after["domLine"] == line - 1, after
    finding = next(f for f in research["findings"] if f["cell"] == cell and f["line"] == line)
    assert after["column"] == finding["column"] - 1
    # The row expanded: problem, impact and the fix are shown.
    details = row.locator(".jp-TorchReview-details")
    details.wait_for(state="visible")
    assert finding["problem"].replace("`", "")[:40] in details.inner_text()
    if finding["fix"]:
        assert row.locator(".jp-TorchReview-code-after pre").inner_text().strip() == finding["fix"]["after"].strip()
    page.mouse.move(0, 0)
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    ui.widen_right_sidebar(page, 420)
    panel.screenshot(path=str(ARTIFACTS / "ui-panel-only.png"))
    page.screenshot(path=str(ARTIFACTS / "ui-panel.png"))
    if os.environ.get("TORCHREVIEW_UPDATE_SCREENSHOT"):
        shutil.copy(ARTIFACTS / "ui-panel.png", ROOT / "docs" / "screenshot-panel.png")

    # Production: switching re-reviews with the other standard.
    with page.expect_response(lambda r: "/torchreview-lab/review" in r.url) as resp_info:
        panel.get_by_role("radio", name="Production").click()
    sent = json.loads(resp_info.value.request.post_data)
    assert sent["standard"] == "production"
    _review_done(page, "production")
    production = resp_info.value.json()
    assert production["summary"]["standard"] == "production"
    assert production["summary"]["total"] >= n_research
    assert panel.locator(".jp-TorchReview-finding").count() == production["summary"]["total"]
    assert "production standard" in panel.locator(".jp-TorchReview-status").inner_text()
    page.screenshot(path=str(ARTIFACTS / "ui-panel-production.png"))

    # Export the review as Markdown: a file next to the notebook, opened in the Lab.
    panel.get_by_role("button", name="Export Markdown").click()
    page.locator(".lm-TabBar-tab", has_text="semimarkov_demo.review.md").wait_for()
    report = lab["root"] / "semimarkov_demo.review.md"
    text = report.read_text(encoding="utf-8")
    assert text.startswith("## Summary") and f"`{DEMO.name}` cell {cell + 1}" in text

    # Review on save (enabled in the settings): edit the notebook, save, and the panel re-reviews
    # what was saved, edits included.
    row.locator(".jp-TorchReview-row").click()
    page.wait_for_function(f"() => ({STATE_JS})().index === {cell} && ({STATE_JS})().focused")
    page.keyboard.press("End")
    page.keyboard.type("  # edited in the browser")
    with page.expect_response(lambda r: "/torchreview-lab/review" in r.url) as resp_info:
        page.keyboard.press("Control+s")
    sent = json.loads(resp_info.value.request.post_data)
    assert any("# edited in the browser" in c["source"] for c in sent["cells"])
    saved = json.loads((lab["root"] / DEMO.name).read_text(encoding="utf-8"))
    assert "# edited in the browser" in "".join(saved["cells"][cell]["source"])

    # The command palette runs a review too.
    page.keyboard.press("Control+Shift+C")
    palette = page.locator(".lm-CommandPalette-input")
    palette.wait_for(state="visible")
    palette.fill("TorchReview: Review notebook")
    with page.expect_response(lambda r: "/torchreview-lab/review" in r.url) as resp_info:
        page.locator(".lm-CommandPalette-item", has_text="TorchReview: Review notebook").first.click()
    assert resp_info.value.status == 200
    assert json.loads(resp_info.value.request.post_data)["standard"] == "production"
    assert not page.errors, page.errors
