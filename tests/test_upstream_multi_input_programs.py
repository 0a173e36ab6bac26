"""Programs written as upstream SAGE users write them (only the imports name sage_jupyter), for
connect/comap with two and three inputs, keyby + join, and print(); each runs as a script."""

from __future__ import annotations

import pathlib
import subprocess
import sys

PROGRAMS = pathlib.Path(__file__).resolve().parent / "upstream_programs"


def run_program(name: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(PROGRAMS / name)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_comap_of_two_streams():
    lines = run_program("comap_two_streams.py")
    assert [x for x in lines if x.startswith("temperature")] == [
        "temperature 21.5 C", "temperature 23.0 C", "temperature 19.5 C"]
    assert [x for x in lines if x.startswith("humidity")] == [f"humidity {40 + i} %" for i in range(1, 5)]
    assert lines[-1] == "comap example done"  # autostop returned after every record


def test_comap_of_three_streams():
    lines = run_program("comap_three_streams.py")
    assert sorted(lines[:-1]) == ["planet: mars", "planet: venus", "river: NILE", "tree: hsa", "tree: kao",
                                  "tree: mle"]
    assert lines[-1] == "three-stream comap done"


def test_keyby_and_join():
    lines = run_program("keyed_join.py")
    assert sorted(lines[:-1]) == ["joined: Ada paid 12", "joined: Lin paid 30", "joined: Lin paid 5"]
    assert lines[-1] == "join example done"


def test_print_of_a_stream_and_of_connected_streams():
    lines = run_program("print_stream.py")
    assert sorted(x for x in lines if x.startswith("squares")) == sorted(
        f"squares | n={n}, square={n * n}" for n in range(1, 7))
    assert sorted(x for x in lines if x.startswith("parity")) == sorted(
        f"parity | {'EVEN' if n % 2 == 0 else 'ODD'} -> {n}" for n in range(1, 7))
    assert lines[-1] == "print example done"
