"""Notebook-surface costs, measured through a real kernel in one run.

(a) `%%sage_pipeline --autostop --wait` of a 10-record thread pipeline against the same
    pipeline submitted with plain `env.submit(autostop=True)` in the same kernel: the
    median cell round trip of each, and the difference (target: under 50 ms added).
(b) a 1,000,000-record pipeline under the magic: widget comm update messages per second
    of the job's run (target: about 10 per second at most).
(c) Stop while another cell runs (`time.sleep(S)`): seconds from the stop request to the
    job's `ended_at`, sent as JupyterLab sends it, on a kernel subshell, (1) over a
    "sage_jupyter" comm the frontend opened (the sidebar's, and the widget's Stop through
    the labextension; target: under 2 s) and (2) as a click on the widget's own Button comm,
    which ipykernel routes to the busy main shell (it waits for the cell).

Usage: python benchmarks/bench_notebook.py [--repeat N] [--records N] [--sleep S] [--json]
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import threading
import time
import uuid
from typing import Any

from jupyter_client import KernelManager

SETUP = '''
%load_ext sage_jupyter
from sage_jupyter import LocalEnvironment, MapFunction
class Double(MapFunction):
    def execute(self, x):
        return 2 * x
'''

MAGIC = '''%%sage_pipeline small --autostop --wait -o small
out = []
env.from_batch(range(10)).map(Double).sink(out.append)
'''

PLAIN = '''env = LocalEnvironment("small")
out = []
env.from_batch(range(10)).map(Double).sink(out.append)
small = env.submit(autostop=True)
'''

# A per-record transform of a few microseconds (JSON encoding), so the run lasts long
# enough (seconds) for a rate to mean something.
BIG = '''%%sage_pipeline big --autostop --wait -o big
import json
env.from_batch(range({records})).map(lambda x: json.dumps({{"id": x, "v": [x, x]}})).sink(lambda s: None)
'''


class Client:
    """A kernel with every iopub message recorded by a reader thread."""

    def __init__(self) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - closed at shutdown
                return
            msg["t"] = time.perf_counter()
            self.messages.append(msg)

    def run(self, code: str) -> tuple[float, str]:
        """Execute a cell; return its round trip in seconds and its msg_id."""
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code)
        while True:
            reply = self.kc.get_shell_msg(timeout=300)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        dt = time.perf_counter() - t0
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"cell failed: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")
        return dt, msg_id

    def value(self, expr: str) -> str:
        _, msg_id = self.run(f"print({expr})")
        time.sleep(0.1)
        return "".join(m["content"]["text"] for m in list(self.messages)
                       if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id).strip()

    def send(self, msg_type: str, content: dict[str, Any], subshell_id: str | None = None) -> str:
        """Send a shell message without waiting (on a subshell, as JupyterLab sends comms)."""
        msg = self.kc.session.msg(msg_type, content)
        if subshell_id is not None:
            msg["header"]["subshell_id"] = subshell_id
        self.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def subshell(self) -> str:
        msg = self.kc.session.msg("create_subshell_request", {})
        self.kc.control_channel.send(msg)
        while True:
            reply = self.kc.get_control_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return str(reply["content"]["subshell_id"])

    def wait_reply(self, msg_id: str, timeout: float = 300) -> None:
        while self.kc.get_shell_msg(timeout=timeout)["parent_header"].get("msg_id") != msg_id:
            pass

    def close(self) -> None:
        self._stop.set()
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def overhead(client: Client, repeat: int) -> dict[str, float]:
    for code in (MAGIC, PLAIN):  # warm up imports and first-use costs
        client.run(code)
    magic, plain = [], []
    for _ in range(repeat):  # interleaved, so load on the machine hits both alike
        magic.append(client.run(MAGIC)[0])
        plain.append(client.run(PLAIN)[0])
    m, p = statistics.median(magic), statistics.median(plain)
    return {"magic_wait_cell_ms": round(m * 1000, 2), "plain_submit_cell_ms": round(p * 1000, 2),
            "magic_added_ms": round((m - p) * 1000, 2), "magic_added_target_ms": 50}


def update_rate(client: Client, records: int) -> dict[str, float]:
    start = len(client.messages)
    client.run(BIG.format(records=records))
    time.sleep(0.3)  # the last updates may trail the reply
    elapsed = float(client.value("big.status().elapsed_s"))
    done = client.value("big.status().records_in")
    updates = [m for m in client.messages[start:] if m["msg_type"] == "comm_msg"
               and m["content"]["data"].get("method") == "update"]
    views = [m for m in updates if "value" in m["content"]["data"]["state"]]  # the status HTML
    per_s = len(updates) / elapsed if elapsed > 0 else float("nan")
    return {"big_records": int(done), "big_elapsed_s": round(elapsed, 3), "widget_updates": len(updates),
            "status_view_updates": len(views), "widget_updates_per_s": round(per_s, 2),
            "widget_updates_target_per_s": 10}


UNBOUNDED = '''%%sage_pipeline {name} -o {name}
import time
from sage_jupyter import SourceFunction
class Ticks(SourceFunction):
    def execute(self):
        time.sleep(0.01)
        return 1
env.from_source(Ticks).sink(lambda x: None)
'''


def _stop_while_busy(client: Client, name: str, sleep: float, stop: Any) -> float:
    """Start an unbounded job, run `time.sleep(sleep)`, call `stop(job_id)` once the sleeping
    cell runs; seconds from the request to the job's ended_at (read after the sleep)."""
    client.run(UNBOUNDED.format(name=name))
    job_id = client.value(f"{name}.job_id")
    sleeping = client.send("execute_request", {"code": f"time.sleep({sleep})", "silent": False})
    while not any(m["msg_type"] == "status" and m["content"]["execution_state"] == "busy"
                  and m["parent_header"].get("msg_id") == sleeping for m in list(client.messages)):
        time.sleep(0.01)
    asked = time.time()
    stop(job_id)
    client.wait_reply(sleeping)
    return float(client.value(f"{name}.status().ended_at")) - asked


def busy_stop(client: Client, sleep: float) -> dict[str, float]:
    subshell = client.subshell()
    comm_id = uuid.uuid4().hex
    client.send("comm_open", {"comm_id": comm_id, "target_name": "sage_jupyter", "data": {}}, subshell)

    def over_sage_comm(job_id: str) -> None:
        client.send("comm_msg", {"comm_id": comm_id, "data": {"action": "stop", "job_id": job_id}}, subshell)

    def click_widget(job_id: str) -> None:
        button = next(m["content"]["comm_id"] for m in list(client.messages) if m["msg_type"] == "comm_msg"
                      and f"sage-stop-job-{job_id}" in m["content"]["data"].get("state", {}).get("_dom_classes", []))
        client.send("comm_msg", {"comm_id": button, "data": {"method": "custom", "content": {"event": "click"}}},
                    subshell)

    client.run("import time")
    fast = _stop_while_busy(client, "busy_a", sleep, over_sage_comm)
    widget = _stop_while_busy(client, "busy_b", sleep, click_widget)
    return {"busy_cell_sleep_s": sleep, "busy_stop_sage_comm_s": round(fast, 3),
            "busy_stop_sage_comm_target_s": 2, "busy_stop_widget_comm_s": round(widget, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="cells measured per variant")
    parser.add_argument("--records", type=int, default=1_000_000, help="records of the big pipeline")
    parser.add_argument("--sleep", type=float, default=5.0, help="seconds the busy cell of (c) sleeps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    client = Client()
    try:
        client.run(SETUP)
        results = {**overhead(client, args.repeat), **update_rate(client, args.records),
                   **busy_stop(client, args.sleep)}
    finally:
        client.close()
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
