"""``worker-supervised``: runs ``worker run`` and starts it again when it exits for a reason a restart cures.

The exit codes are a contract with whatever runs the worker (docs/delivery-guarantees.md): 4 means
"I stopped because something affects everything; start me again" (a fenced producer, a stuck call, a
broken or stuck model), and a process killed by a signal or the kernel's OOM killer needs the same.
Kubernetes and the compose stack restart on their own; ``make run`` and ``make demo`` run the worker
directly, so without this a documented exit 4 would leave them down.

What it does, per exit of the child:

- 0 (stopped cleanly) or 3 (stopped on request with records left to read again): done, the same code;
- 2 (settings or model loading): done, the same code: a restart cannot fix a configuration;
- anything else, or killed by a signal it did not forward: start again after a back-off (1 s, doubling
  to 30 s; reset after a run of a minute), unless it is restarting in a loop (more than
  ``--max-restarts`` within ``--window``), then it gives up with the last code.

SIGTERM and SIGINT are forwarded to the child, and the supervisor exits with the child's code once it
has stopped; a second signal is forwarded too (the worker then ends at once). No torch, no Kafka here:
it only starts and watches a process.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import FrameType

from worker.errors import EXIT_CLEAN, EXIT_UNFINISHED

log = logging.getLogger("worker.supervise")

EXIT_CONFIG = 2
FINAL_EXITS = frozenset({EXIT_CLEAN, EXIT_CONFIG, EXIT_UNFINISHED})
FIRST_BACKOFF_S, MAX_BACKOFF_S, HEALTHY_RUN_S = 1.0, 30.0, 60.0


class Supervisor:
    """Starts ``command`` and restarts it per the module's rules. ``sleep`` and ``clock`` are for tests."""

    def __init__(
        self,
        command: Sequence[str],
        max_restarts: int = 10,
        window_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.command = list(command)
        self.max_restarts = max_restarts
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self.exits: list[int] = []

    def forward(self, signum: int, frame: FrameType | None = None) -> None:
        """Signal handler: stop supervising and pass the signal on (a second one too)."""
        self.stopping = True
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    def run(self) -> int:
        restarts: deque[float] = deque()
        backoff = FIRST_BACKOFF_S
        while True:
            started = self._clock()
            self.child = subprocess.Popen(self.command)
            code = self.child.wait()
            self.exits.append(code)
            if self.stopping or code in FINAL_EXITS:
                return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
            now = self._clock()
            if now - started >= HEALTHY_RUN_S:
                backoff = FIRST_BACKOFF_S
            restarts.append(now)
            while restarts and now - restarts[0] > self.window_s:
                restarts.popleft()
            if len(restarts) > self.max_restarts:
                log.error("worker-supervised: the worker exited %d times in %.0f s (last code %d); giving up",
                          len(restarts), self.window_s, code)
                return code if code > 0 else 1
            log.warning("worker-supervised: the worker exited with code %d; starting it again in %.0f s", code, backoff)
            self._sleep(backoff)
            if self.stopping:
                return code if code > 0 else 1
            backoff = min(MAX_BACKOFF_S, backoff * 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="worker-supervised",
        description="Run `worker run` and start it again after an exit a restart cures (4, a crash, a kill); "
        "stop on 0, 2 or 3. SIGTERM/SIGINT are passed to the worker.",
    )
    parser.add_argument("--max-restarts", type=int, default=10, help="give up after this many restarts within --window")
    parser.add_argument("--window", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("command", nargs="*", help="what to run (default: this Python's `worker run`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    command = args.command or [sys.executable, "-m", "worker.cli", "run"]
    supervisor = Supervisor(command, args.max_restarts, args.window)
    signal.signal(signal.SIGTERM, supervisor.forward)
    signal.signal(signal.SIGINT, supervisor.forward)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
