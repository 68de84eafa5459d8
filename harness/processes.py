"""`worker run` as a real process: its environment, starting, waiting, stopping, and a restarting supervisor."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.paths import REPO
from harness.probes import endpoint_json

# The contract of `worker run` (README "exit codes"), stated here on its own so that tests check the worker
# against it rather than against the worker's own constants.
FATAL_EXIT = 4  # fatal at run time; the orchestrator restarts the worker
FATAL_LINE_PREFIX = "worker: fatal: "


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a worker's metrics server, a Prometheus)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_env(bootstrap: str, topics: dict[str, str], model: Path | str, group: str | None = None) -> dict[str, str]:
    """The WORKER_* variables naming the broker, the topics (``topics``: input, output, dlq), the group
    (default ``group-<input topic>``) and the model."""
    return {
        "WORKER_BOOTSTRAP_SERVERS": bootstrap,
        "WORKER_INPUT_TOPIC": topics["input"],
        "WORKER_OUTPUT_TOPIC": topics["output"],
        "WORKER_DLQ_TOPIC": topics["dlq"],
        "WORKER_GROUP_ID": group or f"group-{topics['input']}",
        "WORKER_MODEL": str(model),
    }


def worker_env(bootstrap: str, topics: dict[str, str], model_dir: Path | str, **extra: str) -> dict[str, str]:
    """A test's worker: none of this process's WORKER_* variables, CPU float32, a short shutdown and session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(connection_env(bootstrap, topics, model_dir))
    env.update(
        {
            "WORKER_DEVICE": "cpu",
            "WORKER_DTYPE": "float32",
            "WORKER_METRICS_PORT": "0",
            "WORKER_SHUTDOWN_TIMEOUT_S": "20",
            # A SIGKILLed member holds its partitions until its session times out; keep that short.
            "WORKER_KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
            "WORKER_KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if "WORKER_ENGINE_CACHE_DIR" in os.environ:  # the test session's (tests/conftest.py): exports made once per session
        env["WORKER_ENGINE_CACHE_DIR"] = os.environ["WORKER_ENGINE_CACHE_DIR"]
    env.update(extra)
    return env


def start_worker_process(
    env: dict[str, str],
    log_path: Path,
    module: str = "worker.cli",
    args: Sequence[str] = ("run",),
    truncate: bool = False,
    own_session: bool = False,
) -> subprocess.Popen:
    """`worker run` as a real process (the console script's module), stdout and stderr to ``log_path``
    (appended to, or ``truncate``d first). `module` names another entry point (a fault-injecting wrapper)
    that is run the same way. ``own_session``: a Ctrl-C on the caller's terminal does not reach it."""
    with open(log_path, "wb" if truncate else "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, cwd=str(REPO), stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )


def wait_exit(process: subprocess.Popen, timeout_s: float) -> int | None:
    """The exit code, or None if the process is still running after `timeout_s`."""
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def seconds_to_exit(process: subprocess.Popen, timeout_s: float) -> float | None:
    """Seconds until the process exits, or None if it is still running after `timeout_s`."""
    started = time.monotonic()
    return None if wait_exit(process, timeout_s) is None else time.monotonic() - started


def terminate(process: subprocess.Popen, timeout_s: float = 30) -> tuple[int | None, float]:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL. Returns (exit code, or None if it had to be killed;
    seconds from the signal to the exit)."""
    started = time.monotonic()
    if process.poll() is not None:
        return process.returncode, 0.0
    process.terminate()
    code = wait_exit(process, timeout_s)
    if code is None:
        process.kill()
        process.wait(30)
    return code, time.monotonic() - started


def check_running(process: subprocess.Popen, log_path: Path) -> None:
    """RuntimeError, naming the exit code and the log, once the process has exited."""
    if process.poll() is not None:
        raise RuntimeError(f"the worker exited ({process.returncode}); see {log_path}")


def wait_ready(process: subprocess.Popen, port: int, timeout_s: float, log_path: Path,
               assigned: bool = False, interval_s: float = 0.05) -> float:
    """Seconds until the worker's /readyz answers 200 (with ``assigned``: and names assigned partitions).
    RuntimeError if the process exits first or the time runs out."""
    started = time.time()
    while time.time() < started + timeout_s:
        check_running(process, log_path)
        status, body = endpoint_json(port, "/readyz")
        if status == 200 and (not assigned or body.get("assigned_partitions", 0) > 0):
            return time.time() - started
        time.sleep(interval_s)
    raise RuntimeError(f"the worker was not ready after {timeout_s:.0f} s; see {log_path}")


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MB (Linux /proc), None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def last_line(log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class Exit:
    code: int | None  # None: killed by the supervisor's stop after its deadline
    seconds_alive: float
    last_line: str
    log: Path


class Supervisor:
    """Runs `worker run` the way an orchestrator would: restarts it whenever it exits non-zero, up to
    `max_restarts` times (the contract's code for that is 4; `unexpected_exits` lists the others, so a
    test can count losses and duplicates across a restart and still fail on a wrong exit code).
    Each run logs to its own file."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "worker", max_restarts: int = 5) -> None:
        self.env = env
        self.log_dir = log_dir
        self.name = name
        self.max_restarts = max_restarts
        self.exits: list[Exit] = []
        self.starts = 0
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._supervise, name=f"supervisor-{name}", daemon=True)

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    @property
    def process(self) -> subprocess.Popen | None:
        return self._process

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                log = self.log_dir / f"{self.name}-{self.starts}.log"
                process = start_worker_process(self.env, log)
                self._process = process
                self.starts += 1
            started = time.monotonic()
            code = process.wait()
            self.exits.append(Exit(code, time.monotonic() - started, last_line(log), log))
            if code == 0 or self.restarts >= self.max_restarts:
                return

    def gone(self) -> str | None:
        """Why the supervised worker is gone for good, or None while it runs (or is being restarted)."""
        if self._thread.is_alive() or self._stopping:
            return None
        last = self.exits[-1] if self.exits else None
        if last is None:
            return f"{self.name} never started"
        return f"{self.name} exited {last.code} after {self.restarts} restarts: {last.last_line[-300:]}"

    def stop(self, timeout_s: float = 60) -> tuple[int | None, float]:
        """Stop supervising and SIGTERM the running worker (SIGKILL after `timeout_s`).
        Returns its (exit code, seconds to exit); (last code, 0) if none was running."""
        with self._lock:
            self._stopping = True
            process = self._process
        result: tuple[int | None, float] = (self.exits[-1].code if self.exits else None, 0.0)
        if process is not None and process.poll() is None:
            result = terminate(process, timeout_s)
        self._thread.join(timeout_s + 30)
        return result

    def unexpected_exits(self) -> list[str]:
        """Restarted exits that broke the contract: a code other than 4, or 4 without the fatal last line.
        (The last exit is the caller's to judge: it may be the test's own stop.)"""
        problems = []
        for e in self.exits[:-1]:
            if e.code != FATAL_EXIT:
                problems.append(f"{e.log.name}: exited {e.code}, not {FATAL_EXIT} (restarted): {e.last_line!r}")
            elif not e.last_line.startswith(FATAL_LINE_PREFIX):
                problems.append(f"{e.log.name}: exit 4 without a '{FATAL_LINE_PREFIX}' last line: {e.last_line!r}")
        return problems

    def logs(self, tail_chars: int = 4000) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail_chars:]}"
            for p in sorted(self.log_dir.glob(f"{self.name}-*.log"))
        )
