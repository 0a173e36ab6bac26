"""The JupyterLab sidebar, end to end: a real JupyterLab server from the venv, real Debian
Chromium driven by Playwright, a real kernel running `%%sage_pipeline` with an unbounded source.
"""

from __future__ import annotations

import json
import os
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
]


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
    home = tmp_path_factory.mktemp("lab_home")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
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


def test_sidebar_lists_a_running_job_and_stops_it(page: Page) -> None:
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
    expect(sidebar.locator(".sage-jp-StopAll")).to_be_enabled()

    job.locator("button.sage-jp-Job-stop").click()
    expect(job).to_have_attribute("data-state", "STOPPED")
    expect(job.locator(".sage-jp-State")).to_have_text("STOPPED")
    expect(service).to_have_attribute("data-state", "cleaned")
    expect(job.locator("button.sage-jp-Job-stop")).to_be_disabled()
    expect(sidebar.locator(".sage-jp-StopAll")).to_be_disabled()

    _run_cell(page, 3)
    output = page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".jp-OutputArea-output")
    expect(output).to_contain_text("kernel sees STOPPED cleanup ok True")


def test_sidebar_reconnects_after_a_kernel_restart(page: Page, lab: Lab) -> None:
    sidebar = _open_sidebar(page)
    _run_cell(page, 0)
    message = sidebar.locator(".sage-jp-Sidebar-message")
    expect(message).to_have_text("No jobs in this kernel yet.")
    kernel_line = sidebar.locator(".sage-jp-Sidebar-kernel")
    expect(kernel_line).to_contain_text("kernel pid")
    first_pid = kernel_line.inner_text().rsplit(" ", 1)[-1]

    (session,) = lab.api("/api/sessions")
    lab.api(f"/api/kernels/{session['kernel']['id']}/restart", method="POST")
    expect(message).to_contain_text("run %load_ext sage_jupyter in this notebook")
    _wait_kernel_idle(page)

    _run_cell(page, 0)
    expect(message).to_have_text("No jobs in this kernel yet.")
    expect(kernel_line).to_contain_text("kernel pid")
    assert kernel_line.inner_text().rsplit(" ", 1)[-1] != first_pid
