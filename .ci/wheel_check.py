"""Checks of a built and installed sage-jupyter, run by .ci/wheel_check with the fresh venv's Python
from a temp directory. Each subcommand is one step; any failed check exits non-zero, saying what.

  dist    the wheel ships the labextension as shared data; the sdist carries its TypeScript sources
  plain   the wheel alone: imported from the venv, a pipeline runs, Ray and the daemon name their extras
  kernel  + ipykernel: %load_ext, %%sage_pipeline --autostop --wait, its widget and the sidebar comm
  lab     + the jupyter extra: `jupyter labextension list` shows it enabled OK; a notebook runs (nbclient)
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import subprocess
import sys
import tarfile
import textwrap
import uuid
import zipfile
from pathlib import Path
from typing import Any

EXTENSION = "sage-jupyter"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CELL_TIMEOUT = 120.0  # s for one cell, so a hang fails the check instead of CI


class CheckFailed(Exception):
    """One expectation about the built package did not hold."""


def expect(condition: object, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def package_version(repo: Path) -> str:
    """The one version: labextension/package.json's."""
    version = json.loads((repo / "labextension" / "package.json").read_text())["version"]
    assert isinstance(version, str)
    return version


# ---- dist ----------------------------------------------------------------------------------


def check_dist(args: argparse.Namespace) -> None:
    names = zipfile.ZipFile(args.wheel).namelist()
    shared = [n for n in names if f".data/data/share/jupyter/labextensions/{EXTENSION}/" in n]
    for needed in ("install.json", "package.json", "static/style.js"):
        expect(any(n.endswith(f"/{EXTENSION}/{needed}") for n in shared),
               f"the wheel lacks share/jupyter/labextensions/{EXTENSION}/{needed}: {shared}")
    expect(any(re.search(r"/static/remoteEntry\.[0-9a-f]+\.js$", n) for n in shared),
           f"the wheel lacks the built extension's static/remoteEntry.*.js: {shared}")
    expect("sage_jupyter/py.typed" in names, "the wheel lacks sage_jupyter/py.typed (PEP 561)")
    expect(not any(n.startswith("sage_jupyter/labextension/") for n in names),
           "the wheel also ships the build inside the Python package")
    members = tarfile.open(args.sdist).getnames()
    root = members[0].split("/")[0]
    for needed in ("labextension/package.json", "labextension/package-lock.json", "labextension/tsconfig.json",
                   "labextension/install.json", "labextension/src/index.ts", "labextension/style/index.css",
                   "pyproject.toml", "README.md"):
        expect(f"{root}/{needed}" in members, f"the sdist lacks {needed}")
    expect(not any("/node_modules/" in m or m.startswith(f"{root}/sage_jupyter/labextension") for m in members),
           "the sdist carries node_modules or a prebuilt extension: a wheel from it would not prove the sources")
    print(f"dist: ok ({len(shared)} extension files in the wheel, {len(members)} files in the sdist)")


# ---- plain ---------------------------------------------------------------------------------


def check_installed(args: argparse.Namespace) -> None:
    """sage_jupyter comes from the venv, not from the source tree, at the one version."""
    import sage_jupyter

    here = Path(sage_jupyter.__file__).resolve()
    expect(here.is_relative_to(Path(args.venv).resolve()), f"sage_jupyter imported from {here}, not the venv")
    repo = Path(args.repo).resolve()
    leaks = [p for p in sys.path if p and Path(p).resolve().is_relative_to(repo)]
    expect(not leaks, f"the source tree is on sys.path: {leaks}")
    expect(sage_jupyter.__version__ == package_version(repo),
           f"__version__ {sage_jupyter.__version__!r} is not package.json's {package_version(repo)!r}")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=CELL_TIMEOUT)


def check_plain(args: argparse.Namespace) -> None:
    check_installed(args)
    from sage_jupyter import LocalEnvironment

    out: list[int] = []
    env = LocalEnvironment("wheel_check")
    env.from_batch(range(100)).map(lambda x: x * 2).sink(out.append)
    job = env.submit(autostop=True)
    expect(job.state.value == "FINISHED" and out == [2 * x for x in range(100)], f"plain pipeline: {job.state}")

    for module in ("ray", "tornado"):  # truly absent, so the messages below are the real ones
        expect(run_python(f"import {module}").returncode != 0, f"{module} is installed without its extra")
    result = run_python("""
        from sage_jupyter import LocalEnvironment
        env = LocalEnvironment("needs_ray", backend="ray")
        env.from_batch(range(3)).sink(print)
        env.submit(autostop=True)
    """)
    expect(result.returncode == 1 and "pip install 'sage-jupyter[ray]'" in result.stderr,
           f"backend='ray' without Ray did not name the ray extra:\n{result.stderr}")
    daemon = subprocess.run([str(Path(args.venv) / "bin" / "sage-jobmanager"), "--port", "0"], capture_output=True,
                            text=True, timeout=CELL_TIMEOUT)
    expect(daemon.returncode == 1 and "pip install 'sage-jupyter[jobmanager]'" in daemon.stderr,
           f"sage-jobmanager without tornado did not name the jobmanager extra:\n{daemon.stderr}")
    print("plain: ok (pipeline ran from the venv; ray and jobmanager extras named when missing)")


# ---- kernel --------------------------------------------------------------------------------


class Kernel:
    """A kernel of the venv (its own kernelspec), every iopub message kept."""

    def __init__(self, name: str, cwd: str) -> None:
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name=name)
        self.km.start_kernel(cwd=cwd)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.messages: list[dict[str, Any]] = []

    def _until_idle(self, msg_id: str, what: str) -> list[dict[str, Any]]:
        """The iopub messages up to the kernel's idle after request `msg_id`."""
        start = len(self.messages)
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=CELL_TIMEOUT)
            except queue.Empty:
                raise CheckFailed(f"no idle within {CELL_TIMEOUT:g} s after:\n{what}") from None
            self.messages.append(msg)
            if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                    and msg["parent_header"].get("msg_id") == msg_id):
                return self.messages[start:]

    def open_comm(self, target: str) -> list[dict[str, Any]]:
        """Open a comm to `target` as a frontend does; return the kernel's messages on it."""
        comm_id = uuid.uuid4().hex
        msg = self.kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": target, "data": {}})
        self.kc.shell_channel.send(msg)
        messages = self._until_idle(msg["header"]["msg_id"], f"comm_open {target}")
        return [m["content"]["data"] for m in messages
                if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id]

    def run(self, code: str) -> list[dict[str, Any]]:
        """Execute a cell; return the iopub messages up to its idle. Fails on an error reply."""
        msg_id = self.kc.execute(code)
        messages = self._until_idle(msg_id, code)
        reply = self.kc.get_shell_msg(timeout=CELL_TIMEOUT)
        while reply["parent_header"].get("msg_id") != msg_id:  # a reply to something else (none expected)
            reply = self.kc.get_shell_msg(timeout=CELL_TIMEOUT)
        if reply["content"]["status"] != "ok":
            trace = "\n".join(reply["content"].get("traceback", []))
            raise CheckFailed(f"cell failed:\n{code}\n{strip_ansi(trace)}")
        return messages

    def stdout(self, messages: list[dict[str, Any]]) -> str:
        return "".join(m["content"]["text"] for m in messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


PIPELINE_CELL = """\
%%sage_pipeline wheel_check --autostop --wait -o job
from sage_jupyter import MapFunction

class Double(MapFunction):
    def execute(self, x):
        print(f"record {x}")
        return 2 * x

out = []
env.from_batch(range(5)).map(Double).sink(out.append)
"""


def check_kernel(args: argparse.Namespace) -> None:
    kernel = Kernel(args.kernel, cwd=str(Path.cwd()))
    try:
        info = json.loads(kernel.stdout(kernel.run(
            "import json, sys, sage_jupyter\n"
            "print(json.dumps({'file': sage_jupyter.__file__, 'python': sys.executable}))")))
        expect(Path(info["file"]).resolve().is_relative_to(Path(args.venv).resolve()),
               f"the kernel imported sage_jupyter from {info['file']}, not the venv")
        kernel.run("%load_ext sage_jupyter")
        messages = kernel.run(PIPELINE_CELL)
        views = [m["content"]["data"][WIDGET_VIEW]["model_id"] for m in messages
                 if m["msg_type"] in ("display_data", "execute_result") and WIDGET_VIEW in m["content"]["data"]]
        expect(views, "the pipeline cell displayed no widget view")
        opened = {m["content"]["comm_id"]: m["content"]["data"].get("state", {}) for m in kernel.messages
                  if m["msg_type"] == "comm_open" and m["content"].get("target_name") == "jupyter.widget"}
        expect(views[0] in opened, f"no jupyter.widget comm was opened for the displayed model {views[0]}")
        expect(any("text/plain" in m["content"]["data"] for m in messages if m["msg_type"] == "display_data"),
               "the widget's display has no text/plain fallback")
        on_wire = json.dumps([m["content"] for m in messages if m["msg_type"] in ("comm_msg", "comm_open")])
        expect("record 4" in on_wire, "a stage's print did not reach the job's output widget over the comm")
        result = json.loads(kernel.stdout(kernel.run(
            "from sage_jupyter.jupyter import widget_of\n"
            "print(json.dumps({'state': job.state.value, 'out': out, 'model': widget_of(job).view.model_id,\n"
            "                  'services_clean': job.cleanup_report.ok}))")))
        expect(result["state"] == "FINISHED" and result["out"] == [0, 2, 4, 6, 8], f"the job ended as {result}")
        expect(result["model"] == views[0], "the displayed widget is not the job's widget")
        # The sidebar's side in the kernel: the "sage_jupyter" comm answers its opening with the jobs.
        answers = kernel.open_comm("sage_jupyter")
        listed = {j.get("name"): j.get("state") for a in answers for j in a.get("jobs", [])}
        expect(listed.get("wheel_check") == "FINISHED", f"the sidebar comm listed {answers}")
        kernel.run("%unload_ext sage_jupyter")
    finally:
        kernel.shutdown()
    print(f"kernel: ok (widget {views[0][:8]} displayed with its comm; job FINISHED; output routed; "
          "sidebar comm lists the job)")


# ---- lab -----------------------------------------------------------------------------------


def check_lab(args: argparse.Namespace) -> None:
    venv = Path(args.venv).resolve()
    shared = venv / "share" / "jupyter" / "labextensions" / EXTENSION
    for needed in ("install.json", "package.json", "static"):
        expect((shared / needed).exists(), f"{shared / needed} was not installed")
    listing = subprocess.run([str(venv / "bin" / "jupyter"), "labextension", "list"], capture_output=True,
                             text=True, timeout=CELL_TIMEOUT)
    text = strip_ansi(listing.stdout + listing.stderr)
    version = package_version(Path(args.repo))
    line = re.search(rf"^\s*{EXTENSION} v(\S+) enabled\s+OK\b.*$", text, re.MULTILINE)
    expect(listing.returncode == 0 and line,
           f"`jupyter labextension list` does not show {EXTENSION} enabled OK:\n{text}")
    assert line is not None
    expect(line.group(1) == version, f"labextension version {line.group(1)} is not {version}")
    # Extensions are listed indented under the directory they were found in.
    section = [s for s in text[:line.start()].splitlines() if s.strip() and not s[0].isspace()][-1].strip()
    expect(Path(section).resolve().is_relative_to(venv), f"the extension listed comes from {section}, not the venv")

    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(args.notebook, as_version=4)  # type: ignore[no-untyped-call]  # nbformat is untyped
    NotebookClient(book, kernel_name=args.kernel, timeout=180, startup_timeout=60,
                   resources={"metadata": {"path": str(Path.cwd())}}).execute()
    views = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if WIDGET_VIEW in o.get("data", {})]
    expect(views, f"{Path(args.notebook).name} showed no widget")
    print(f"lab: ok ({line.group(0).strip()}; {Path(args.notebook).name} ran through nbclient)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["dist", "plain", "kernel", "lab"])
    parser.add_argument("--repo", required=True, help="the source tree (must not be importable)")
    parser.add_argument("--venv", required=True, help="the fresh venv holding the installed wheel")
    parser.add_argument("--wheel")
    parser.add_argument("--sdist")
    parser.add_argument("--kernel", help="kernelspec name of the venv's kernel")
    parser.add_argument("--notebook")
    args = parser.parse_args()
    steps = {"dist": check_dist, "plain": check_plain, "kernel": check_kernel, "lab": check_lab}
    try:
        steps[args.step](args)
    except CheckFailed as exc:
        print(f"wheel check, {args.step}: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
