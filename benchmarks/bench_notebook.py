"""Notebook-surface costs, measured through a real kernel in one run.

(a) `%%sage_pipeline --autostop --wait` of a 10-record thread pipeline against the same
    pipeline submitted with plain `env.submit(autostop=True)` in the same kernel: the
    median cell round trip of each, and the difference (target: under 50 ms added).
(b) a 1,000,000-record pipeline under the magic: widget comm update messages per second
    of the job's run (target: about 10 per second at most).

Usage: python benchmarks/bench_notebook.py [--repeat N] [--records N] [--json]
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import threading
import time
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="cells measured per variant")
    parser.add_argument("--records", type=int, default=1_000_000, help="records of the big pipeline")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    client = Client()
    try:
        client.run(SETUP)
        results = {**overhead(client, args.repeat), **update_rate(client, args.records)}
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
