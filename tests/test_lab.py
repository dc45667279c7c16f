"""What a JupyterLab user sees: the explorer in a real browser (headless Chromium driven by Playwright).

JupyterLab is started from the project's environment on a temporary copy of notebook 06 with
``interactive = True``; Chromium opens it, runs every cell, and the test checks that the sliders, the schedule map
and the images render, moves the FORA interval slider with the keyboard and checks that the status line, the images
and the map change. Screenshots go to ``runs/lab-test/`` (paths printed), with the time to render and per update.

Playwright cannot download its browser here: the system Chromium (Debian package ``chromium``) is used through
``executable_path``; ``GOC_CHROMIUM`` names another binary. Without one the test is skipped with a reason.
"""

from __future__ import annotations

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

from goc_utils import paths

CHROMIUM = os.environ.get("GOC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = paths.RUNS_DIR / "lab-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _interactive_copy(folder: Path) -> Path:
    nb = json.loads((paths.NOTEBOOKS_DIR / "06_threshold_explorer.ipynb").read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]).replace("interactive: bool = False", "interactive: bool = True")
            assert "interactive: bool = True" in source
            cell["source"] = source.splitlines(True)
    target = folder / "explorer.ipynb"
    target.write_text(json.dumps(nb))
    return target


@pytest.fixture
def lab(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's chromium package (apt-get install chromium) or set GOC_CHROMIUM")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    _interactive_copy(tmp_path)
    port, token = _free_port(), secrets.token_hex(8)
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=os.environ | {"MPLBACKEND": "Agg"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        pytest.fail(f"JupyterLab did not start; see {tmp_path / 'lab.log'}")
    yield f"{base}/lab/tree/explorer.ipynb?token={token}"
    server.terminate()
    server.wait(timeout=30)


def test_the_explorer_in_jupyterlab_in_a_real_browser(lab):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(lab)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for(timeout=120_000)  # the kernel is up
        page.locator(".jp-Notebook .jp-Cell").first.click()
        started = time.monotonic()
        for _ in range(3):  # Run > Run All Cells through the command palette (retried if the palette was not ready)
            page.keyboard.press("Control+Shift+c")
            palette = page.locator(".lm-CommandPalette-input")
            palette.wait_for(state="visible", timeout=30_000)
            palette.fill("Run All Cells")
            page.locator(".lm-CommandPalette-item.lm-mod-active", has_text="Run All Cells").wait_for(timeout=30_000)
            page.keyboard.press("Enter")
            try:
                page.wait_for_function(
                    "[...document.querySelectorAll('.jp-InputPrompt')].some(e => /\\[[0-9*]+\\]/.test(e.innerText))",
                    timeout=30_000,
                )
                break
            except Exception:  # noqa: BLE001 - nothing started: try again
                page.keyboard.press("Escape")
        panels = page.locator("img.widget-image")  # images; schedule map; error along the trajectory
        page.wait_for_function("document.querySelectorAll('img.widget-image').length >= 3", timeout=300_000)
        page.wait_for_function(
            "[...document.querySelectorAll('img.widget-image')].every(i => i.naturalWidth > 0)", timeout=300_000
        )
        render_s = time.monotonic() - started
        news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's "notified about news?" toast
        if news.count():
            news.first.click()
        status = page.locator(".widget-html", has_text="theoretical speedup").first
        status.wait_for(timeout=60_000)
        output = page.locator(".jp-OutputArea-output", has=page.locator("img.widget-image")).first
        output.scroll_into_view_if_needed()
        assert output.screenshot(path=str(SHOTS / "explorer_rendered.png"))
        sliders = page.locator(".widget-hslider")
        assert sliders.count() >= 4  # interval, range, threshold, weight
        before = {"status": status.inner_text(), "srcs": [panels.nth(i).get_attribute("src") for i in range(3)]}
        assert "reused 50.0%" in before["status"]  # the default: the paper's FORA-50 + GOC

        handle = page.locator(".widget-hslider", has_text="FORA interval").locator(".noUi-handle").first
        handle.focus()
        started = time.monotonic()
        page.keyboard.press("ArrowRight")  # interval 2 -> 3: released at once (continuous_update=False)
        page.wait_for_function(
            "([old]) => { const s = [...document.querySelectorAll('.widget-html')].map(e => e.innerText).join(' ');"
            " return s.includes('theoretical speedup') && !s.includes(old); }",
            arg=[before["status"].split("·")[0].strip()],
            timeout=120_000,
        )
        page.wait_for_function(
            "([old]) => [...document.querySelectorAll('img.widget-image')].slice(0, 3)"
            ".every((img, i) => img.src !== old[i])",
            arg=[before["srcs"]],
            timeout=120_000,
        )
        update_s = time.monotonic() - started
        after = status.inner_text()
        output.screenshot(path=str(SHOTS / "explorer_after_slider.png"))
        browser.close()
    assert after != before["status"] and "reused 65.0%" in after  # FORA interval 3: 13 of 20 steps reused
    print(f"\nrendered in {render_s:.1f} s, one slider update in {update_s:.1f} s; screenshots: "
          f"{SHOTS / 'explorer_rendered.png'}, {SHOTS / 'explorer_after_slider.png'}")  # fmt: skip
