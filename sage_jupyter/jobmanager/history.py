"""The JobManager's job history: name, options, state, timestamps, final status and cleanup
report of the last jobs, in SQLite under the state directory, so a restarted daemon still
lists them. Jobs that were running when the daemon died are marked FAILED on the next start.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import IO, Any

from ..runtime.job import JobState, JobStatus
from . import protocol
from .protocol import JobOptions

KEEP_JOBS = 1000
DB_NAME = "jobmanager.sqlite3"
LOCK_NAME = "jobmanager.lock"
RESTARTED = "jobmanager restarted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    options TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL,
    ended_at REAL,
    status TEXT NOT NULL
)
"""


class StateDirError(RuntimeError):
    """The state directory cannot be used (not writable, or another daemon holds it)."""


def default_state_dir() -> Path:
    """`$XDG_DATA_HOME/sage_jupyter`, else `~/.local/share/sage_jupyter`."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sage_jupyter"


class JobHistory:
    """The last KEEP_JOBS jobs, on disk (`state_dir`) or in memory only (`None`).

    One daemon per state directory (a lock file says so); written on each state change of a
    job, from the dispatcher's threads; read from an in-memory copy of the past jobs.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._lockfile: IO[str] | None = None
        self.path: Path | None = None
        if state_dir is None:
            self._db = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            self.path = Path(state_dir) / DB_NAME
            self._lockfile = _lock_state_dir(Path(state_dir))
            try:
                self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StateDirError(f"--state-dir {state_dir}: cannot open {DB_NAME}: {exc}") from None
        self._db.execute(_SCHEMA)
        self._past: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._mark_unfinished_failed()
        for job_id, options, status in self._db.execute("SELECT job_id, options, status FROM jobs ORDER BY seq"):
            self._past[job_id] = _reply(json.loads(status), json.loads(options))

    def _mark_unfinished_failed(self) -> None:
        """Jobs a previous daemon was running when it died: they did not end cleanly."""
        now = time.time()
        rows = self._db.execute("SELECT job_id, state, status FROM jobs").fetchall()
        for job_id, state, raw in rows:
            if JobState(state).terminal:
                continue
            status = json.loads(raw)
            status["state"] = JobState.FAILED.value
            status["ended_at"] = now
            if not status.get("error"):
                status["error"] = {"where": "jobmanager", "type": "JobManagerRestarted", "message": RESTARTED,
                                   "traceback": ""}
            self._db.execute("UPDATE jobs SET state = ?, ended_at = ?, status = ? WHERE job_id = ?",
                             (JobState.FAILED.value, now, json.dumps(status), job_id))

    def save(self, snapshot: JobStatus, options: JobOptions) -> None:
        """Insert or update one job's row, and keep only the last KEEP_JOBS rows."""
        status = protocol.to_wire(snapshot)
        row = (snapshot.job_id, snapshot.name, json.dumps(options.to_dict()), snapshot.state.value,
               snapshot.created_at, snapshot.ended_at, json.dumps(status))
        with self._lock:
            if self._closed:  # a status published after shutdown closed the history
                return
            self._db.execute(
                "INSERT INTO jobs (job_id, name, options, state, created_at, ended_at, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
                "state = excluded.state, ended_at = excluded.ended_at, status = excluded.status", row)
            # seq numbers have gaps (an upsert may use one up): count rows, not numbers
            self._db.execute("DELETE FROM jobs WHERE seq < (SELECT MIN(seq) FROM "
                             "(SELECT seq FROM jobs ORDER BY seq DESC LIMIT ?))", (KEEP_JOBS,))
            self._past[snapshot.job_id] = _reply(status, options.to_dict())
            self._past.move_to_end(snapshot.job_id)
            while len(self._past) > KEEP_JOBS:
                self._past.popitem(last=False)

    def reply(self, job_id: str) -> dict[str, Any] | None:
        """The job's last stored status, as a status reply, or None."""
        with self._lock:
            return self._past.get(job_id)

    def replies(self) -> list[dict[str, Any]]:
        """Every stored job, oldest first, as status replies."""
        with self._lock:
            return list(self._past.values())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
        if self._lockfile is not None:
            self._lockfile.close()  # releases the lock
            self._lockfile = None


def _reply(status: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    return {"version": 0, "settled": JobState(status["state"]).terminal, "status": status,
            "cancel_on_disconnect": bool(options.get("cancel_on_disconnect", False)), "disconnected": False,
            "options": options}


def _lock_state_dir(state_dir: Path) -> IO[str]:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        lockfile = open(state_dir / LOCK_NAME, "a+", encoding="utf-8")
    except OSError as exc:
        raise StateDirError(f"--state-dir {state_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lockfile.seek(0)
        holder = lockfile.read().strip() or "another process"
        lockfile.close()
        raise StateDirError(f"--state-dir {state_dir} is in use by another sage-jobmanager ({holder}); "
                            "give each daemon its own --state-dir") from None
    lockfile.seek(0)
    lockfile.truncate()
    lockfile.write(f"pid {os.getpid()}\n")
    lockfile.flush()
    return lockfile
