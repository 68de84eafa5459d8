"""A local single-node Apache Kafka (KRaft) run by deploy/kafka/kafka.sh: start, stop, kill, freeze."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

from harness.paths import KAFKA_SH

STDERR = 2  # kafka.sh prints the bootstrap address on stdout: keep a caller's stdout (the benchmark's table) its own


def broker_port(offset: int) -> int:
    """Ports of the test brokers: $TEST_KAFKA_PORT (default 19092) plus an offset per broker.

    Below Linux's ephemeral range (32768-60999): a port in it may be taken by one of the many client
    connections the tests open, and the broker then cannot bind it.
    """
    return int(os.environ.get("TEST_KAFKA_PORT", "19092")) + offset


class LocalBroker:
    """A broker on ``port`` (its controller on ``port + 1``) keeping its data in ``data_dir``; ``variant``
    sets kafka.sh's optional KAFKA_* variables (auto-create, SASL listener, ACLs: see deploy/kafka/README.md).

    As a context manager it is started on entry and stopped on exit, whatever happened in between: a
    start that fails half-way may have left a broker running, and a test may have frozen it.
    """

    def __init__(self, port: int, data_dir: Path, variant: dict[str, str] | None = None,
                 stop_deadline_s: float = 300) -> None:
        self.port = port
        self.data_dir = data_dir
        self.bootstrap = f"127.0.0.1:{port}"
        self.variant = dict(variant or {})
        self.stop_deadline_s = stop_deadline_s

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.variant,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.port + 1),
            "KAFKA_DATA_DIR": str(self.data_dir),
        }

    def run(self, *args: str, timeout: float = 300) -> None:
        subprocess.run(["bash", str(KAFKA_SH), *args], env=self._env(), check=True, timeout=timeout, stdout=STDERR)

    def start(self) -> None:
        self.run("start")

    def stop(self) -> None:
        self.run("stop")

    def kill(self) -> None:
        self.run("kill")

    def stop_within(self, deadline_s: float) -> None:
        """Graceful stop (kafka.sh itself SIGKILLs after $KAFKA_STOP_TIMEOUT); if even that hangs, kill."""
        try:
            self.run("stop", timeout=deadline_s)
        except (subprocess.SubprocessError, OSError):
            self.kill()

    def pid(self) -> int:
        return int((self.data_dir / "kafka.pid").read_text().strip())

    def freeze(self) -> None:
        """SIGSTOP the broker: connections stay open and nothing answers (a long GC pause, a hung host)."""
        os.kill(self.pid(), signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid(), signal.SIGCONT)

    def answers(self) -> bool:
        """Whether a broker (this one, or any other) already serves this port."""
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=3)
            return True
        except Exception:  # noqa: BLE001 - any failure means: not serving
            return False

    def __enter__(self) -> LocalBroker:
        try:
            self.start()
        except BaseException:
            self.stop_within(60)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):  # a frozen broker would not stop
            self.thaw()
        self.stop_within(self.stop_deadline_s)


@contextlib.contextmanager
def bootstrap_servers(named: str | None, broker: LocalBroker, reuse: bool = False) -> Iterator[str]:
    """``named`` when the caller names a broker; else ``broker``'s address, started here and stopped after.
    With ``reuse``, a broker already serving its port is used as it is and left running."""
    if named:
        yield named
    elif reuse and broker.answers():
        yield broker.bootstrap
    else:
        with broker:
            yield broker.bootstrap
