"""The JupyterLab sidebar and the job widget, end to end: a real JupyterLab server from the
venv (serving this checkout's build of the extension), real Debian Chromium driven by
Playwright, real kernels running `%%sage_pipeline`; JupyterLab and Notebook 7, light and dark.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = [pytest.mark.browser, pytest.mark.kernel]

VENV_BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
UI_TIMEOUT_MS = 60_000  # two shared cores: Lab's first load and a kernel start can be slow
expect.set_options(timeout=UI_TIMEOUT_MS)

CELLS = [
    "%load_ext sage_jupyter",
    """%%sage_service window
from sage_jupyter import BaseService

class Window(BaseService):
    def push(self, x):
        return x""",
    """%%sage_pipeline ticker -o ticker
import time
from sage_jupyter import SourceFunction, MapFunction

class Ticks(SourceFunction):
    def execute(self):
        time.sleep(0.01)
        return 1

class Smooth(MapFunction):
    def execute(self, x):
        return self.call_service["window"].push(x)

env.from_source(Ticks).map(Smooth).sink(lambda x: None)""",
    """deadline = time.monotonic() + 60
while not ticker.state.terminal and time.monotonic() < deadline:
    time.sleep(0.1)
print("kernel sees", ticker.state.value, "cleanup ok", ticker.cleanup_report.ok)""",
    """time.sleep(6)
print("slept")""",
    """%%sage_pipeline fragile --autostop --services ""
def parse(x):
    if x == 2:
        raise ValueError(f"cannot parse record {x}")
    return x

env.from_batch(range(5)).map(parse).sink(lambda x: None)""",
]
# Stop while another cell sleeps: one job stopped by its widget's button, one by the sidebar.
BUSY_CELLS = [
    "%load_ext sage_jupyter",
    """%%sage_pipeline by_widget -o by_widget
import time
from sage_jupyter import SourceFunction

class Ticks(SourceFunction):
    def execute(self):
        time.sleep(0.01)
        return 1

env.from_source(Ticks).sink(lambda x: None)""",
    """%%sage_pipeline by_sidebar -o by_sidebar
env.from_source(Ticks).sink(lambda x: None)""",
    """time.sleep(30)
slept_until = time.time()""",
    """print("ended", by_widget.state.value, by_widget.status().ended_at,
      by_sidebar.state.value, by_sidebar.status().ended_at, slept_until)""",
]
BUSY_NB7_CELLS = [BUSY_CELLS[0], BUSY_CELLS[1], "time.sleep(15)\nslept_until = time.time()",
                  'print("ended", by_widget.state.value, by_widget.status().ended_at, slept_until)']
NB7_CELLS = [
    "%load_ext sage_jupyter",
    """%%sage_pipeline quick --autostop --wait
env.from_batch(range(10)).map(lambda x: x * 2).sink(lambda x: None)""",
]
# WCAG contrast of every visible badge's text on its background (semi-transparent text is
# blended first), computed from the colours the browser rendered.
CONTRAST_JS = """(selector) => {
  const rgb = c => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  return Array.from(document.querySelectorAll(selector)).filter(e => e.offsetParent !== null).map(e => {
    const style = getComputedStyle(e);
    const bg = rgb(style.backgroundColor);
    let fg = rgb(style.color);
    if (fg.length === 4) { fg = fg.slice(0, 3).map((v, i) => v * fg[3] + bg[i] * (1 - fg[3])); }
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    return { state: e.dataset.state || e.textContent, ratio: (hi + 0.05) / (lo + 0.05),
             bg: style.backgroundColor, fg: style.color, bgAlpha: bg.length === 4 ? bg[3] : 1 };
  });
}"""


def _notebook(cells: list[str]) -> dict[str, Any]:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {},
                   "outputs": [], "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    def __init__(self, url: str, token: str, proc: subprocess.Popen[bytes]) -> None:
        self.url, self.token, self.proc = url, token, proc

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
        return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab_root")
    (root / "sidebar.ipynb").write_text(json.dumps(_notebook(CELLS)))
    (root / "nb7.ipynb").write_text(json.dumps(_notebook(NB7_CELLS)))
    (root / "busy.ipynb").write_text(json.dumps(_notebook(BUSY_CELLS)))
    (root / "busy7.ipynb").write_text(json.dumps(_notebook(BUSY_NB7_CELLS)))
    home = tmp_path_factory.mktemp("lab_home")
    # Serve the build of this checkout (the one sage_jupyter is imported from): a data dir of
    # our own comes first on Jupyter's path, ahead of whatever the venv links.
    import sage_jupyter

    build = Path(sage_jupyter.__file__).parent / "labextension"
    assert (build / "package.json").is_file(), f"build labextension/ first (npm run build): no {build}"
    (home / "data" / "labextensions").mkdir(parents=True)
    (home / "data" / "labextensions" / "sage-jupyter").symlink_to(build, target_is_directory=True)
    env = {**os.environ, "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_PREFER_ENV_PATH": "0",
           "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws")}
    port, token = _free_port(), secrets.token_hex(16)
    log = open(home / "lab.log", "wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "jupyter"), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (home / "lab.log").read_text()
            try:
                server.api("/api/status")
                break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not answer in 90 s"
                time.sleep(0.3)
        yield server
    finally:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for child in children:  # kernels run in their own sessions: make sure none is left
            if child.is_running():
                child.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser: Browser, lab: Lab) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{lab.url}/lab/tree/sidebar.ipynb?reset&token={lab.token}")
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(len(CELLS), timeout=UI_TIMEOUT_MS)
    _wait_kernel_idle(page)
    try:
        yield page
    finally:
        for session in lab.api("/api/sessions"):  # each test starts from a fresh kernel
            lab.api(f"/api/sessions/{session['id']}", method="DELETE")
        context.close()


def _wait_kernel_idle(page: Page) -> None:
    indicator = page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator")
    expect(indicator).to_have_attribute("data-status", "idle", timeout=UI_TIMEOUT_MS)


def _run_cell(page: Page, index: int) -> None:
    """Click into a cell's editor and run it with Shift+Enter, as a user does."""
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")


def _open_sidebar(page: Page) -> Any:
    page.locator('.jp-SideBar.jp-mod-left li[data-id="sage-jupyter-sidebar"]').click()
    sidebar = page.locator("#sage-jupyter-sidebar")
    expect(sidebar).to_be_visible()
    return sidebar


def _cell(page: Page, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def _contrasts(page: Page, selector: str) -> list[dict[str, Any]]:
    found = page.evaluate(CONTRAST_JS, selector)
    assert found, f"no visible {selector} to measure"
    return found


def _assert_readable(page: Page, theme: str) -> None:
    """Every state badge of the sidebar and of the widgets: text contrast >= 4.5:1."""
    for selector in ("#sage-jupyter-sidebar .sage-jp-State", ".jp-OutputArea .sage-badge"):
        for badge in _contrasts(page, selector):
            assert badge["bgAlpha"] == 1, f"{theme}: {selector} {badge} has no solid background"
            assert badge["ratio"] >= 4.5, f"{theme}: {selector} {badge} contrast {badge['ratio']:.2f}:1"


def _set_theme(page: Page, theme: str) -> None:
    page.locator(".lm-MenuBar-itemLabel").get_by_text("Settings", exact=True).click()
    page.locator(".lm-Menu-itemLabel").get_by_text("Theme", exact=True).hover()
    page.locator(".lm-Menu-itemLabel").get_by_text(theme, exact=True).click()
    expect(page.locator("body")).to_have_attribute("data-jp-theme-name", theme)


def test_sidebar_follows_a_job_by_pushes_stops_clears_and_links_its_cell(page: Page) -> None:
    listing = subprocess.run([str(VENV_BIN / "jupyter"), "labextension", "list"],
                             capture_output=True, text=True, timeout=120)
    line = next((ln for ln in (listing.stdout + listing.stderr).splitlines() if "sage-jupyter" in ln), "")
    assert "enabled" in line and "OK" in line, listing.stdout + listing.stderr

    sidebar = _open_sidebar(page)
    expect(sidebar.locator(".sage-jp-Sidebar-message")).to_contain_text(
        "run %load_ext sage_jupyter in this notebook")

    for index in range(3):
        _run_cell(page, index)
    job = sidebar.locator('li.sage-jp-Job[data-job-name="ticker"]')
    expect(job).to_have_attribute("data-state", "RUNNING")
    service = job.locator('li.sage-jp-Service[data-service-name="window"]')
    expect(service).to_have_attribute("data-state", "running")
    expect(service).to_contain_text("thread")
    expect(job.locator(".sage-jp-Job-meta")).to_contain_text("records in -> out")
    expect(sidebar.locator(".sage-jp-StopAll")).to_be_enabled()
    expect(page.locator(".jp-OutputArea .sage-badge").first).to_be_visible()
    _assert_readable(page, "JupyterLab Light")

    # the job's row leads to the cell that started it
    _cell(page, 4).locator(".cm-content").click()
    job.locator(".sage-jp-Job-name").click()
    expect(_cell(page, 2)).to_have_class(re.compile(r"\bjp-mod-active\b"))

    # pushes carry no busy/idle: while a cell sleeps the kernel stays busy in the toolbar
    indicator = page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator")
    _run_cell(page, 4)
    expect(indicator).to_have_attribute("data-status", "busy")
    seen = set()
    for _ in range(16):  # about 4 s of the 6 s the cell sleeps, while the ticker's rows update
        seen.add(indicator.get_attribute("data-status"))
        page.wait_for_timeout(250)
    assert seen == {"busy"}, f"the execution indicator showed {seen} while a cell ran"
    expect(_cell(page, 4).locator(".jp-OutputArea-output")).to_contain_text("slept")

    job.locator("button.sage-jp-Job-stop").click()
    expect(job).to_have_attribute("data-state", "STOPPED")
    expect(job.locator(".sage-jp-State").first).to_have_text("STOPPED")
    expect(service).to_have_attribute("data-state", "cleaned")
    expect(job.locator("button.sage-jp-Job-stop")).to_have_count(0)  # no Stop on an ended job
    expect(sidebar.locator(".sage-jp-StopAll")).to_be_disabled()
    _run_cell(page, 3)
    expect(_cell(page, 3).locator(".jp-OutputArea-output")).to_contain_text("kernel sees STOPPED cleanup ok True")

    # a failing job: only its failing stage is red, its traceback starts at the user's frame
    _run_cell(page, 5)
    failed = sidebar.locator('li.sage-jp-Job[data-job-name="fragile"]')
    expect(failed).to_have_attribute("data-state", "FAILED")
    expect(failed.locator(".sage-jp-Job-error")).to_contain_text("ValueError: cannot parse record 2")
    output = _cell(page, 5).locator(".jp-OutputArea-output")
    traceback = output.locator(".sage-traceback")
    expect(traceback).to_have_count(1)
    expect(traceback).to_be_visible()
    first_frame = traceback.inner_text().split("File ", 1)[1].splitlines()[0]
    assert "in parse" in first_frame and "sage_jupyter" not in first_frame, traceback.inner_text()
    expect(output.locator('.sage-graph [data-stage="map:parse"][data-state="FAILED"]')).to_have_count(1)
    expect(output.locator('.sage-graph [data-state="FAILED"]')).to_have_count(1)  # the other stages are not red
    _assert_readable(page, "JupyterLab Light")

    _set_theme(page, "JupyterLab Dark")
    try:
        _assert_readable(page, "JupyterLab Dark")
    finally:
        _set_theme(page, "JupyterLab Light")

    sidebar.locator(".sage-jp-ClearFinished").click()
    expect(sidebar.locator("li.sage-jp-Job")).to_have_count(0)
    expect(sidebar.locator(".sage-jp-Sidebar-message")).to_have_text("No jobs in this kernel yet.")
    expect(sidebar.locator(".sage-jp-ClearFinished")).to_be_disabled()


def test_notebook7_shows_the_job_and_saves_its_fallback(browser: Browser, lab: Lab) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(f"{lab.url}/notebooks/nb7.ipynb?token={lab.token}")
        expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(len(NB7_CELLS))
        _wait_kernel_idle(page)
        for index in range(len(NB7_CELLS)):
            _run_cell_until_counted(page, index)
        output = _cell(page, 1).locator(".jp-OutputArea-output")
        expect(output.locator('.sage-badge[data-state="FINISHED"]').first).to_be_visible()
        expect(output.locator(".sage-job")).to_contain_text("records in -> out: 10 -> 10")
        expect(output.locator(".sage-job")).to_contain_text("avg")
        _assert_readable_in(page, ".jp-OutputArea .sage-badge", "Notebook 7")
        page.keyboard.press("Control+s")
        deadline = time.monotonic() + 60
        while True:
            saved = lab.api("/api/contents/nb7.ipynb")["content"]["cells"][1]["outputs"]
            bundles = [o.get("data", {}) for o in saved if o.get("output_type") == "display_data"]
            if any("FINISHED" in "".join(b.get("text/html", "")) for b in bundles):
                break
            assert time.monotonic() < deadline, f"the saved notebook has no final job display: {saved}"
            time.sleep(0.5)
        final = next(b for b in bundles if "FINISHED" in "".join(b.get("text/html", "")))
        assert "Job 'quick'" in "".join(final["text/plain"]) and "FINISHED" in "".join(final["text/plain"])
    finally:
        for session in lab.api("/api/sessions"):
            lab.api(f"/api/sessions/{session['id']}", method="DELETE")
        context.close()


def _run_cell_until_counted(page: Page, index: int) -> None:
    """Run a cell in Notebook 7 and see its execution count; a dialog that Notebook 7 may
    show on a fresh page (it swallows the keystroke) is accepted, then the cell runs again."""
    prompt = _cell(page, index).locator(".jp-InputPrompt")
    for _ in range(3):
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            dialog.locator(".jp-Dialog-button.jp-mod-accept").first.click()
            expect(dialog).to_have_count(0)
        _run_cell(page, index)
        try:
            expect(prompt).to_have_text(f"[{index + 1}]:", timeout=15_000)
            return
        except AssertionError:
            continue
    expect(prompt).to_have_text(f"[{index + 1}]:")


def _assert_readable_in(page: Page, selector: str, where: str) -> None:
    for badge in _contrasts(page, selector):
        assert badge["ratio"] >= 4.5, f"{where}: {badge} contrast {badge['ratio']:.2f}:1"


def test_sidebar_reconnects_after_a_kernel_restart(page: Page, lab: Lab) -> None:
    sidebar = _open_sidebar(page)
    _run_cell(page, 0)
    message = sidebar.locator(".sage-jp-Sidebar-message")
    expect(message).to_have_text("No jobs in this kernel yet.")
    kernel_line = sidebar.locator(".sage-jp-Sidebar-kernel")
    expect(kernel_line).to_contain_text("kernel pid")
    first_pid = kernel_line.inner_text().rsplit(" ", 1)[-1]

    # Restart as a user does, from the notebook's toolbar (a restart through the REST API
    # tells the page nothing until the new process happens to publish on iopub).
    page.locator('.jp-NotebookPanel-toolbar [data-jp-item-name="restart"] button').click()
    page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").click()
    expect(message).to_contain_text("run %load_ext sage_jupyter in this notebook")
    _wait_kernel_idle(page)

    _run_cell(page, 0)
    expect(message).to_have_text("No jobs in this kernel yet.")
    expect(kernel_line).to_contain_text("kernel pid")
    assert kernel_line.inner_text().rsplit(" ", 1)[-1] != first_pid


def test_widget_stop_and_sidebar_stop_while_another_cell_sleeps(browser: Browser, lab: Lab) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(f"{lab.url}/lab/tree/busy.ipynb?reset&token={lab.token}")
        expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(len(BUSY_CELLS))
        _wait_kernel_idle(page)
        sidebar = _open_sidebar(page)
        for index in range(3):
            _run_cell(page, index)
        rows = {name: sidebar.locator(f'li.sage-jp-Job[data-job-name="{name}"]')
                for name in ("by_widget", "by_sidebar")}
        for row in rows.values():
            expect(row).to_have_attribute("data-state", "RUNNING")
        stop = _cell(page, 1).locator("button.sage-stop")
        expect(stop).to_be_enabled()
        expect(_cell(page, 1).locator(".sage-stop-hint")).to_have_text("")  # the fast path is there: no warning

        indicator = page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator")
        _run_cell(page, 3)
        expect(indicator).to_have_attribute("data-status", "busy")
        clicks = {"by_widget": time.time()}
        stop.click()
        expect(rows["by_widget"]).to_have_attribute("data-state", "STOPPED")
        expect(stop).to_be_disabled()
        clicks["by_sidebar"] = time.time()
        rows["by_sidebar"].locator("button.sage-jp-Job-stop").click()
        expect(rows["by_sidebar"]).to_have_attribute("data-state", "STOPPED")
        assert indicator.get_attribute("data-status") == "busy", "the sleeping cell ended before both jobs stopped"

        expect(indicator).to_have_attribute("data-status", "idle", timeout=60_000)  # the sleep ended
        expect(stop).to_have_text("Stop")  # the widget's own comm sent no second, late click
        expect(stop).to_be_disabled()
        _run_cell(page, 4)
        output = _cell(page, 4).locator(".jp-OutputArea-output")
        expect(output).to_contain_text("ended")
        words = output.inner_text().split()
        ended = {"by_widget": (words[1], float(words[2])), "by_sidebar": (words[3], float(words[4]))}
        slept_until = float(words[5])
        for name, (state, ended_at) in ended.items():
            assert state == "STOPPED", f"{name}: {state}"
            assert ended_at < slept_until, f"{name} ended only after the sleeping cell"
            assert ended_at - clicks[name] < 2.0, f"{name}: STOPPED {ended_at - clicks[name]:.2f} s after the click"
    finally:
        for session in lab.api("/api/sessions"):
            lab.api(f"/api/sessions/{session['id']}", method="DELETE")
        context.close()


def test_notebook7_widget_stop_while_another_cell_sleeps(browser: Browser, lab: Lab) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(f"{lab.url}/notebooks/busy7.ipynb?token={lab.token}")
        expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(len(BUSY_NB7_CELLS))
        _wait_kernel_idle(page)
        for index in range(2):
            _run_cell_until_counted(page, index)
        stop = _cell(page, 1).locator("button.sage-stop")
        expect(stop).to_be_enabled()
        expect(_cell(page, 1).locator(".sage-stop-hint")).to_have_text("")
        _run_cell(page, 2)
        expect(_cell(page, 2).locator(".jp-InputPrompt")).to_have_text("[*]:")
        clicked = time.time()
        stop.click()
        expect(_cell(page, 1).locator('.sage-badge[data-state="STOPPED"]').first).to_be_visible()
        expect(_cell(page, 2).locator(".jp-InputPrompt")).to_have_text("[*]:")  # still sleeping
        expect(_cell(page, 2).locator(".jp-InputPrompt")).to_have_text("[3]:", timeout=60_000)
        _run_cell_until_counted(page, 3)
        words = _cell(page, 3).locator(".jp-OutputArea-output").inner_text().split()
        assert words[1] == "STOPPED", words
        assert clicked < float(words[2]) < float(words[3]), "the job ended only after the sleeping cell"
    finally:
        for session in lab.api("/api/sessions"):
            lab.api(f"/api/sessions/{session['id']}", method="DELETE")
        context.close()


WIDGET_CELLS = [
    "%load_ext sage_jupyter",
    """%%sage_pipeline counted --autostop
import time
from sage_jupyter import MapFunction

class Slow(MapFunction):
    def execute(self, x):
        time.sleep(0.01)
        return x * 10

env.from_batch(list(range(600))).map(Slow).sink(lambda x: None)""",
]


def _put_notebook(lab: Lab, name: str, cells: list[str]) -> None:
    body = json.dumps({"type": "notebook", "format": "json", "content": _notebook(cells)}).encode()
    req = urllib.request.Request(f"{lab.url}/api/contents/{name}", data=body, method="PUT",
                                 headers={"Authorization": f"token {lab.token}", "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).close()


def test_widget_progress_bar_and_peek_toggle_update_live(browser: Browser, lab: Lab) -> None:
    _put_notebook(lab, "widget.ipynb", WIDGET_CELLS)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(f"{lab.url}/lab/tree/widget.ipynb?reset&token={lab.token}")
        expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(len(WIDGET_CELLS))
        _wait_kernel_idle(page)
        _run_cell_until_counted(page, 0)  # (a dialog a fresh page may show is accepted)
        _run_cell_until_counted(page, 1)
        output = _cell(page, 1).locator(".jp-OutputArea-output")
        stage = output.locator('.sage-stage-progress[data-stage="map:Slow"]')
        expect(stage).to_contain_text(re.compile(r"[\d,]+ of 600"))
        expect(stage).to_contain_text("ETA")
        bar = stage.locator('[role="progressbar"]')
        first = int(bar.get_attribute("aria-valuenow") or 0)
        expect(bar).not_to_have_attribute("aria-valuenow", str(first))  # the bar moves
        # the peek toggle is a real widget: clicking it shows the stage's newest records, live
        toggle = output.locator(".sage-peek-toggle", has_text="map:Slow")
        toggle.click()
        expect(toggle).to_have_class(re.compile(r"\bmod-active\b"))
        records = output.locator('.sage-peek[data-stage="map:Slow"] pre')
        expect(records).to_contain_text(re.compile(r"\d+0"))
        seen = records.inner_text()
        expect(records).not_to_have_text(seen)  # newer records replaced them
        expect(output.locator('.sage-job .sage-badge[data-state="FINISHED"]').first).to_be_visible(timeout=60_000)
        expect(stage).to_contain_text("600 of 600")
        expect(records).to_contain_text("5990")  # the map's last record
        readable = ".jp-OutputArea .sage-badge, .jp-OutputArea .sage-peek pre"  # badges and peeked records
        _assert_readable_in(page, readable, "JupyterLab Light")
        _set_theme(page, "JupyterLab Dark")
        try:
            _assert_readable_in(page, readable, "JupyterLab Dark")
        finally:
            _set_theme(page, "JupyterLab Light")
    finally:
        for session in lab.api("/api/sessions"):
            lab.api(f"/api/sessions/{session['id']}", method="DELETE")
        context.close()
