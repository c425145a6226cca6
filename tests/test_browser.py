"""Drive the grid explorer of notebook 07 in a real JupyterLab with headless Chromium.

Starts ``jupyter lab`` on a copy of ``notebooks/`` (fast mode), runs all cells of
``07_grid_activations.ipynb`` through the Run menu, waits for the explorer widgets, clicks a
cell of the clickable grid and checks that the mask image changes. The screenshot of the
explorer goes to pytest's ``tmp_path`` (and, with ``MINISOLO_UPDATE_SCREENSHOT=1``, to
``docs/img/explorer_screenshot.png``).

Needs Debian's Chromium (``apt-get install chromium``) and the ``playwright`` package; the
test is skipped with a message otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "07_grid_activations.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "docs" / "img" / "explorer_screenshot.png"
RUN_TIMEOUT_S = 900  # fast mode takes about a minute on an idle 2-core CPU


def _requirements() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    if shutil.which("jupyter") is None and shutil.which("jupyter-lab") is None:
        return "jupyter lab is not installed"
    if not (ROOT / "notebooks" / NOTEBOOK).is_file():
        return f"notebooks/{NOTEBOOK} has not been built (python tools/build_notebooks.py 07)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture()
def jupyter_lab(tmp_path):
    """A JupyterLab server on a copy of notebooks/ in fast mode; yields (base_url, token)."""
    root = tmp_path / "notebooks"
    shutil.copytree(
        ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "src")
    )
    token = secrets.token_hex(16)
    port = _free_port()
    env = dict(os.environ)
    env.update(
        MINISOLO_FAST="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
    )
    # no news / update prompts: they would cover the page (and reach for the network)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True})
    )
    log_path = tmp_path / "jupyter.log"
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        f"--ServerApp.token={token}",
        "--ServerApp.ip=127.0.0.1",
        "--port", str(port),
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--LabApp.news_url=None",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get_json(f"{base}/api/status?token={token}")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token, log_path
    finally:
        # shut the server (and with it the kernel) down; kill its process group if it hangs
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _kernels_idle(base: str, token: str) -> bool:
    kernels = _get_json(f"{base}/api/kernels?token={token}")
    return bool(kernels) and all(k["execution_state"] == "idle" for k in kernels)


@pytest.mark.skipif(_requirements() is not None, reason=str(_requirements()))
def test_explorer_in_jupyterlab(jupyter_lab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, token, log_path = jupyter_lab
    started = time.perf_counter()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1900})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            # wait until the kernel has started, then Run -> Run All Cells
            deadline = time.monotonic() + 120
            while not _kernels_idle(base, token):
                assert time.monotonic() < deadline, "the kernel did not start"
                time.sleep(1)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            # the explorers appear as the cells run; wait for the three of them, then idle
            explorers = page.locator(".minisolo-explorer")
            deadline = time.monotonic() + RUN_TIMEOUT_S
            idle_since = None
            while True:
                assert time.monotonic() < deadline, (
                    f"notebook did not finish in {RUN_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}"
                )
                errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']")
                assert errors.count() == 0, errors.first.inner_text()
                if explorers.count() >= 3 and _kernels_idle(base, token):
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 3:
                        break
                else:
                    idle_since = None
                time.sleep(1)
            run_seconds = time.perf_counter() - started

            explorer = explorers.first
            explorer.scroll_into_view_if_needed()
            mask_image = explorer.locator("img.minisolo-cell-mask")
            cell_image = explorer.locator("img.minisolo-cell-image")
            mask_image.wait_for(state="visible")
            before_mask = mask_image.get_attribute("src")
            before_cell = cell_image.get_attribute("src")
            buttons = explorer.locator(".minisolo-grid button")
            count = buttons.count()
            side = int(round(count**0.5))
            assert side * side == count and count >= 16, count
            info = explorer.locator(".widget-html-content", has_text="cell (i=").first
            current = info.inner_text()
            # click the top-left cell, or its neighbour when the top-left one is selected
            k = 1 if "cell (i=0, j=0)" in current else 0
            click_start = time.perf_counter()
            buttons.nth(k).click()
            page.wait_for_function(
                "([el, old]) => el.getAttribute('src') !== old",
                arg=[mask_image.element_handle(), before_mask],
                timeout=30_000,
            )
            click_seconds = time.perf_counter() - click_start
            page.wait_for_function(
                "([el, old]) => el.getAttribute('src') !== old",
                arg=[cell_image.element_handle(), before_cell],
                timeout=30_000,
            )
            assert f"cell (i=0, j={k})" in info.inner_text(), info.inner_text()
            selected = explorer.locator(".minisolo-grid button.minisolo-selected")
            assert selected.count() == 1
            assert selected.first.get_attribute("title").startswith(f"cell (0, {k})")

            # a slider moves the selection too
            before_mask = mask_image.get_attribute("src")
            slider = explorer.locator(".widget-slider", has_text="row i").locator(".noUi-handle")
            slider.focus()
            page.keyboard.press("ArrowUp")
            page.wait_for_function(
                "([el, old]) => el.getAttribute('src') !== old",
                arg=[mask_image.element_handle(), before_mask],
                timeout=30_000,
            )
            # the most interesting cell for the screenshot: the best one of the level
            before_mask = mask_image.get_attribute("src")
            explorer.locator("button", has_text="best cell").click()
            try:
                page.wait_for_function(
                    "([el, old]) => el.getAttribute('src') !== old",
                    arg=[mask_image.element_handle(), before_mask],
                    timeout=10_000,
                )
            except Exception:  # the best cell may already be the selected one
                pass
            page.mouse.move(0, 0)  # no hover outline in the picture
            page.wait_for_timeout(1000)  # let the other images of the view update too
            # scroll the explorer to the top of the notebook so all of it is painted
            explorer.evaluate("el => el.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            shot = tmp_path / "explorer_screenshot.png"
            explorer.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000, "the screenshot is (almost) empty"
            if os.environ.get("MINISOLO_UPDATE_SCREENSHOT") == "1":  # refresh the docs picture
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
            print(
                f"\nrun all cells (fast mode) + widgets: {run_seconds:.0f} s; click -> new mask "
                f"image in the browser: {click_seconds * 1000:.0f} ms; screenshot: {shot}"
            )
        finally:
            browser.close()
