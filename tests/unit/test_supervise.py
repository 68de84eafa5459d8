"""worker-supervised: what restarts the worker where no orchestrator does (make run, make demo)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from worker.supervise import Supervisor


def exits_in_turn(tmp_path: Path, *codes: int) -> list[str]:
    """A child that exits with the next of ``codes`` each time it is started."""
    counter = tmp_path / "runs"
    script = (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\n"
        f"sys.exit({list(codes)!r}[n])\n"
    )
    return [sys.executable, "-c", script]


def test_exit_4_and_crashes_are_restarted_until_a_final_exit(tmp_path):
    naps: list[float] = []
    supervisor = Supervisor(exits_in_turn(tmp_path, 4, 1, 4, 0), sleep=naps.append)
    assert supervisor.run() == 0
    assert supervisor.exits == [4, 1, 4, 0]
    assert naps == [1.0, 2.0, 4.0]  # backing off


def test_configuration_errors_and_unfinished_stops_are_not_restarted(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert Supervisor(exits_in_turn(tmp_path / "a", 2), sleep=lambda s: None).run() == 2
    assert Supervisor(exits_in_turn(tmp_path / "b", 3), sleep=lambda s: None).run() == 3


def test_a_restart_loop_gives_up(tmp_path):
    supervisor = Supervisor(exits_in_turn(tmp_path, *[4] * 10), max_restarts=3, sleep=lambda s: None)
    assert supervisor.run() == 4
    assert len(supervisor.exits) == 4


def test_sigterm_is_forwarded_and_the_child_code_returned(tmp_path):
    ready = tmp_path / "ready"
    child = [sys.executable, "-c", (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        f"pathlib.Path({str(ready)!r}).write_text('1')\n"
        "time.sleep(60)\n"
    )]
    supervisor = Supervisor(child, sleep=lambda s: None)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(supervisor.run()))
    thread.start()
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    supervisor.forward(signal.SIGTERM)
    thread.join(30)
    assert result == [0] and supervisor.exits == [0]


def test_the_command_line_runs_worker_run_by_default():
    out = subprocess.run([sys.executable, "-m", "worker.supervise", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "worker run" in out.stdout
