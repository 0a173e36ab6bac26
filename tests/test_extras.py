"""A missing optional part (Ray, tornado) is named with the extra that installs it, where it is used.

Each case runs in a fresh interpreter in which the module cannot be imported: `sys.modules[name] =
None` is Python's own way to make an import fail with ModuleNotFoundError (the wheel check in
.ci/ does the same from a venv where the extras were never installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run_without(module: str, code: str, tmp_path: Path, *,
                extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new interpreter where `module` is unimportable (or shadowed via `extra_path`)."""
    block = f"import sys; sys.modules[{module!r}] = None\n" if extra_path is None else ""
    script = tmp_path / "case.py"
    script.write_text(block + textwrap.dedent(code))
    env = None
    if extra_path is not None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)


PIPELINE = """
    import threading
    from sage_jupyter import LocalEnvironment, BaseService
    from sage_jupyter.runtime.extras import MissingExtraError

    class Cache(BaseService):
        pass

    env = LocalEnvironment("app", backend=BACKEND)
    if REMOTE:
        env.register_service("cache", Cache, remote=True)
    env.from_batch(range(10)).sink(print)
    try:
        env.submit(autostop=True)
    except MissingExtraError as exc:
        assert isinstance(exc, ImportError)
        print("ERROR:", exc)
    print("THREADS:", threading.active_count())
    print("JOB:", env.job)
"""


@pytest.mark.parametrize(("backend", "remote", "feature"), [
    ("ray", False, "backend='ray'"),
    ("thread", True, "service 'cache' (remote=True)"),
])
def test_missing_ray_names_the_ray_extra_and_starts_nothing(tmp_path: Path, backend: str, remote: bool,
                                                            feature: str) -> None:
    code = f"BACKEND = {backend!r}\nREMOTE = {remote!r}\n" + textwrap.dedent(PIPELINE)
    result = run_without("ray", code, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"ERROR: {feature} needs ray, which is not installed: pip install 'sage-jupyter[ray]'" in lines
    assert "THREADS: 1" in lines  # nothing was started before the check
    assert "JOB: None" in lines


def test_missing_ray_is_said_once_in_an_uncaught_error(tmp_path: Path) -> None:
    result = run_without("ray", """
        from sage_jupyter import LocalEnvironment
        env = LocalEnvironment("app", backend="ray")
        env.from_batch(range(3)).sink(print)
        env.submit(autostop=True)
    """, tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("pip install 'sage-jupyter[ray]'") == 1, result.stderr
    assert "MissingExtraError: backend='ray' needs ray" in result.stderr
    assert "ModuleNotFoundError" not in result.stderr  # not a second traceback under the hint


def test_sage_ray_orphans_without_ray_names_the_extra(tmp_path: Path) -> None:
    result = run_without("ray", """
        from sage_jupyter.runtime.ray.cluster import ray_module
        ray_module()
    """, tmp_path)
    assert result.returncode == 1
    assert "pip install 'sage-jupyter[ray]'" in result.stderr


def test_jobmanager_without_tornado_names_the_jobmanager_extra(tmp_path: Path) -> None:
    result = run_without("tornado", """
        import sys
        from sage_jupyter.jobmanager.cli import main
        sys.exit(main(["--port", "0"]))
    """, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "sage-jobmanager: sage-jobmanager (the JobManager daemon) needs tornado, which is not installed: "
        "pip install 'sage-jupyter[jobmanager]'")


def test_client_side_needs_no_tornado(tmp_path: Path) -> None:
    result = run_without("tornado", """
        from sage_jupyter import RemoteEnvironment
        env = RemoteEnvironment("app", "127.0.0.1", 9, token="t")
        print("OK", type(env).__name__)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK RemoteEnvironment" in result.stdout


def test_installed_but_broken_module_keeps_its_own_error(tmp_path: Path) -> None:
    # A `tornado` that is present but fails on an import of its own: installing the extra would not
    # help, so that original error must come through, not the install hint.
    fake = tmp_path / "site"
    (fake / "tornado").mkdir(parents=True)
    (fake / "tornado" / "__init__.py").write_text("import sage_no_such_dependency\n")
    result = run_without("tornado", """
        from sage_jupyter.runtime.extras import require_extra
        require_extra("tornado", "the daemon")
    """, tmp_path, extra_path=fake)
    assert result.returncode == 1
    assert "No module named 'sage_no_such_dependency'" in result.stderr
    assert "sage-jupyter[jobmanager]" not in result.stderr


def test_magic_turns_missing_ray_into_a_usage_error(tmp_path: Path) -> None:
    result = run_without("ray", """
        from IPython.core.interactiveshell import InteractiveShell
        from IPython.core.error import UsageError
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "sage_jupyter")
        try:
            shell.run_cell_magic("sage_pipeline", "demo --autostop --backend ray",
                                 "env.from_batch(range(3)).sink(print)")
        except UsageError as exc:
            print("USAGE:", exc)
        shell.run_line_magic("unload_ext", "sage_jupyter")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("USAGE: %%sage_pipeline demo: backend='ray' needs ray, which is not installed: "
            "pip install 'sage-jupyter[ray]'") in result.stdout.splitlines()


def test_daemon_without_ray_refuses_a_ray_job_naming_the_extra(tmp_path: Path) -> None:
    # A real JobManager whose interpreter cannot import Ray; the client's interpreter can.
    script = tmp_path / "daemon.py"
    script.write_text("import sys; sys.modules['ray'] = None\n"
                      "from sage_jupyter.jobmanager.cli import main\n"
                      "sys.exit(main(['--port', '0', '--token', 'secret']))\n")
    daemon = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path)
    try:
        assert daemon.stdout is not None
        announced = daemon.stdout.readline()  # "sage-jobmanager listening on HOST:PORT (pid N)"
        assert " listening on " in announced, daemon.communicate(timeout=30)[1]
        port = int(announced.split(" on ")[1].split()[0].rsplit(":", 1)[1])
        from sage_jupyter import RemoteEnvironment
        from sage_jupyter.jobmanager import JobManagerError

        env = RemoteEnvironment("needs_ray", "127.0.0.1", port, token="secret")
        env.from_batch(range(3)).sink(print)
        with pytest.raises(JobManagerError) as refused:
            env.submit(autostop=True, backend="ray")
        assert refused.value.code == "backend_unavailable"
        assert "backend='ray' needs ray, which is not installed: pip install 'sage-jupyter[ray]'" in str(refused.value)
    finally:
        daemon.terminate()
        _, errors = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, errors
