"""Helpers shared by the real-browser tests: a ``jupyter lab`` of our own on a free loopback port
(temporary root, settings and runtime dirs) and a headless Debian chromium driven by Playwright."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "notebooks" / "semimarkov_demo.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def need_chromium():
    if os.access(CHROMIUM, os.X_OK):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing on CI: `make install` installs it (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); on CI this test runs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_lab(tmp: Path, settings: dict, log_name: str = "ui-server.log", files=(DEMO,)):
    """Start ``jupyter lab`` with ``files`` in a fresh root and the panel's ``settings``; yield
    ``{"base", "token", "root"}``; stop it afterwards."""
    need_chromium()
    root = tmp / "root"
    root.mkdir()
    for f in files:
        shutil.copy(f, root / f.name)
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
    }
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.expose_app_in_browser=True",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    # No "get notified about Jupyter news?" toast over the screenshots.
    news = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    # The panel's own settings, as a user would set them.
    ours = tmp / "settings" / "torchreview-lab"
    ours.mkdir(parents=True)
    (ours / "plugin.jupyterlab-settings").write_text(json.dumps(settings))
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / log_name, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}: see {ARTIFACTS / log_name}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("jupyter lab did not answer /api/status within 60 s")
            time.sleep(0.2)
        yield {"base": base, "token": token, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@contextlib.contextmanager
def browser_page(last_screenshot: str = "ui-last.png", width: int = 1440, height: int = 900):
    """A Playwright page in headless Debian chromium; page errors collect in ``page.errors``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        errors = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.errors = errors
        try:
            yield pg
        finally:
            try:
                pg.screenshot(path=str(ARTIFACTS / last_screenshot))
            except Exception:  # noqa: BLE001 - best effort after a failure
                pass
            context.close()
            browser.close()


def widen_right_sidebar(page, width):
    """Drag the handle between the main area and the right sidebar (for the screenshots)."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle:not(.lm-mod-hidden)").last
    box = handle.bounding_box()
    panel_box = page.locator("#torchreview-panel").bounding_box()
    if not box or not panel_box or panel_box["width"] >= width:
        return
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - (width - panel_box["width"]), y, steps=8)
    page.mouse.up()
    page.wait_for_timeout(300)


def open_notebook(page, lab, name=DEMO.name):
    """Open the notebook in the Lab and wait for its cells and for the panel's commands."""
    page.goto(f"{lab['base']}/lab/tree/{name}?token={lab['token']}")
    n_cells = len(json.loads((lab["root"] / name).read_text(encoding="utf-8"))["cells"])
    page.wait_for_function(
        f"() => document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length === {n_cells}", timeout=60_000
    )
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.commands.hasCommand('torchreview:review')")


def open_panel(page):
    tab = page.locator('.lm-TabBar-tab[data-id="torchreview-panel"]')
    panel = page.locator("#torchreview-panel")
    if not panel.is_visible():
        tab.click()
    panel.wait_for(state="visible")
    return panel


@pytest.fixture(scope="session")
def ui():
    """The helpers above for the test modules (no package here to import them from)."""
    import types

    return types.SimpleNamespace(
        ROOT=ROOT, DEMO=DEMO, ARTIFACTS=ARTIFACTS, running_lab=running_lab, browser_page=browser_page,
        widen_right_sidebar=widen_right_sidebar, open_notebook=open_notebook, open_panel=open_panel,
    )
