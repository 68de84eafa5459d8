"""Issue 9, points 4 and 5, against real `worker run` processes: a destination nobody can write, a
cluster that refuses the worker's credentials or permissions, a model that breaks after start-up.

What is asserted is the contract in COMMON.md: exit code 4 within a bound, the last stderr line
`worker: fatal: <one-line reason>`, /readyz 503 with a `reason` while fatal (never 200 again),
the gauge worker_blocked{reason} = 1, nothing committed past the first record without a delivered
result, and failures logged at most about once per 10 s rather than per retry.

Every test runs on the `secure_kafka` broker (tests/conftest.py): auto.create.topics.enable=false,
a SASL_PLAINTEXT/PLAIN listener and ACL authorization. The tests' own clients use its PLAINTEXT
listener, whose principal is a super user.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, AdminClient, ResourcePatternType, ResourceType

from harness.clients import consume_all, produce
from harness.offsets import committed_and_end_offsets, end_offsets
from harness.probes import HealthProber, Probe
from harness.processes import (
    FATAL_EXIT,
    FATAL_LINE_PREFIX,
    free_port,
    start_worker_process,
    terminate,
    wait_exit,
    worker_env,
)
from harness.topics import create_acls, fresh_topics
from worker.wire.types import INFERENCE_ERROR

pytestmark = pytest.mark.integration

ACCESS_TIMEOUT_S = 20  # WORKER_ACCESS_FAILURE_TIMEOUT_S in these tests (default 60)
# librdkafka gives a missing topic topic.metadata.propagation.max.ms (30 s) to appear before it
# fails the records; the bound leaves room for that, model loading and a loaded machine.
MISSING_TOPIC_BOUND_S = 120
ACCESS_BOUND_S = ACCESS_TIMEOUT_S + 60  # from process start: start-up, the timeout, a margin
MODEL_BOUND_S = 90
# A worker that stops for a reason writes a handful of start-up lines, one line per failure
# interval and the fatal line; one that retries in a loop writes thousands.
# Lines a worker may log once its model is ready until it exits: loading logs the settings and the engine
# table, which depend on the installation; what must stay bounded is the rest.
MAX_LOG_LINES_SERVING = 15


def serving_lines(run) -> list[str]:
    first = next((i for i, line in enumerate(run.lines) if "INFO worker: model ready" in line), 0)
    return run.lines[first:]
KIND_HEADER = "worker.error.kind"


# --------------------------------------------------------------------------------------------- set-up


def reviews(nsmc_rows, count: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"review-{i}".encode(), doc.encode()) for i, (_, doc, _) in enumerate(nsmc_rows[start:start + count], start)]


EMPTY_FIRST = (b"empty-0", b"")  # dead-lettered as empty_text: the one record a worker may deliver


def sasl_env(username: str, password: str) -> dict[str, str]:
    """Credentials through the WORKER_KAFKA_* pass-through, as a user would set them."""
    return {
        "WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "WORKER_KAFKA_SASL_MECHANISM": "PLAIN",
        "WORKER_KAFKA_SASL_USERNAME": username,
        "WORKER_KAFKA_SASL_PASSWORD": password,
    }


def allow(user: str, resource: ResourceType, name: str, *operations: AclOperation) -> list[AclBinding]:
    return [
        AclBinding(resource, name, ResourcePatternType.LITERAL, f"User:{user}", "*", op, AclPermissionType.ALLOW)
        for op in operations
    ]


# --------------------------------------------------------------------------------------------- running


@dataclass(repr=False)  # pytest prints the repr of what an assert looks at: keep it one line
class Run:
    """A worker process run until it exited or the bound passed (then it was stopped)."""

    rc: int | None  # exit code; None: still running at the bound
    elapsed_s: float  # start to exit, or to the bound
    stopped_rc: int | None  # exit code after terminate (equals rc when it exited by itself; None: killed)
    probes: list[Probe]
    lines: list[str]

    def __repr__(self) -> str:
        return f"Run(rc={self.rc}, elapsed_s={self.elapsed_s:.1f}, {len(self.lines)} log lines)"

    @property
    def last_line(self) -> str:
        return next((line for line in reversed(self.lines) if line.strip()), "")

    @property
    def first_failure(self) -> Probe | None:
        return next((p for p in self.probes if p.failing), None)

    @property
    def blocked(self) -> set[str]:
        return {reason for p in self.probes for reason in p.blocked}

    def timeline(self) -> str:
        """Probe answers folded into spans: `0.0-3.1s readyz=None healthz=None`."""
        spans: list[list] = []
        for p in self.probes:
            state = (p.ready, p.live, p.ready_body.get("reason"), tuple(sorted(p.blocked)))
            if spans and spans[-1][2] == state:
                spans[-1][1] = p.at
            else:
                spans.append([p.at, p.at, state])
        return "; ".join(
            f"{a:.1f}-{b:.1f}s readyz={r} healthz={h}" + (f" reason={why!r}" if why else "")
            + (f" blocked={list(bl)}" if bl else "")
            for a, b, (r, h, why, bl) in spans
        )

    def describe(self) -> str:
        tail = "\n".join(self.lines[-15:])
        return (
            f"exit code {self.rc} after {self.elapsed_s:.1f}s (stopped: {self.stopped_rc}); "
            f"{len(self.lines)} log lines; blocked={sorted(self.blocked)}\n"
            f"endpoints: {self.timeline()}\n--- last log lines ---\n{tail}"
        )


def run_until_exit(env: dict[str, str], log: Path, bound_s: float, module: str = "worker.cli",
                   args: Sequence[str] = ("run",)) -> Run:
    port = free_port()
    env = {**env, "WORKER_METRICS_HOST": "127.0.0.1", "WORKER_METRICS_PORT": str(port)}
    with HealthProber(port, interval_s=0.05) as prober:
        process = start_worker_process(env, log, module, args)
        try:
            rc = wait_exit(process, bound_s)
            elapsed = time.time() - prober.started_at
        finally:
            stopped_rc, _ = terminate(process)
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return Run(rc, elapsed, stopped_rc, prober.samples, lines)


def committed_position(bootstrap: str, names: dict[str, str]) -> int:
    """The input group's committed offset of partition 0; 0 when nothing was committed."""
    committed, _ = committed_and_end_offsets(bootstrap, f"group-{names['input']}", names["input"])
    return max(committed[0], 0)


def end_offset(bootstrap: str, topic: str) -> int:
    return end_offsets(bootstrap, topic)[0]


def assert_fatal(run: Run, pattern: str) -> None:
    """Exit 4, and the last line is the one-line fatal reason matching `pattern`."""
    assert run.rc == FATAL_EXIT, run.describe()
    assert run.last_line.startswith(FATAL_LINE_PREFIX), f"last line is not the fatal reason:\n{run.describe()}"
    assert re.search(pattern, run.last_line, re.IGNORECASE), f"{run.last_line!r} does not match {pattern!r}"


def assert_not_ready_once_failing(run: Run, reasons: set[str]) -> Probe:
    """/readyz turned 503 with a reason, never answered 200 again, and worker_blocked named the reason;
    and throughout, a failing /healthz came with a failing /readyz."""
    live_not_ready = [p for p in run.probes if p.live == 503 and p.ready == 200]
    assert not live_not_ready, f"/healthz 503 while /readyz 200 at {live_not_ready[0].at:.1f}s:\n{run.describe()}"
    first = run.first_failure
    assert first is not None, f"/readyz never answered 503 with a reason:\n{run.describe()}"
    after = [p for p in run.probes if p.at >= first.at]
    assert not any(p.ready == 200 for p in after), f"/readyz 200 again after the failure:\n{run.describe()}"
    assert not any(p.ready == 200 and p.live == 200 for p in after)
    assert run.blocked & reasons, f"worker_blocked never 1 for {sorted(reasons)}:\n{run.describe()}"
    return first


def assert_committed_only_delivered(bootstrap: str, names: dict[str, str], delivered_first: int) -> int:
    """The committed offset does not pass the first record without a delivered result, and what it
    covers was delivered (the leading empty record, dead-lettered)."""
    position = committed_position(bootstrap, names)
    assert position <= delivered_first, f"committed {position}, past the first undelivered record {delivered_first}"
    if position:
        dead = consume_all(bootstrap, names["dlq"], expected=position, timeout_s=30, idle_s=2)
        assert {r.key for r in dead} >= {EMPTY_FIRST[0]}, "committed the empty record, but it is not in the DLQ"
    return position


# --------------------------------------------------------------------------------------------- a. missing topic


def test_missing_destination_topic_ends_the_worker(secure_kafka, tiny_model_dir, nsmc_rows, tmp_path, fault_report):
    bootstrap = secure_kafka.bootstrap
    names = fresh_topics(bootstrap, partitions=1, create=("input", "dlq"))  # the output topic never exists
    produce(bootstrap, names["input"], [EMPTY_FIRST, *reviews(nsmc_rows, 10)])

    run = run_until_exit(worker_env(bootstrap, names, tiny_model_dir), tmp_path / "worker.log", MISSING_TOPIC_BOUND_S)
    first = run.first_failure
    fault_report("missing destination topic", rc=run.rc, exit_s=round(run.elapsed_s, 1),
                 not_ready_at_s=first and round(first.at, 1), log_lines=len(run.lines), blocked=sorted(run.blocked))

    assert_fatal(run, re.escape(names["output"]))
    assert_not_ready_once_failing(run, {"destination_unwritable"})
    assert len(serving_lines(run)) <= MAX_LOG_LINES_SERVING, f"log lines: retrying in a loop?\n{run.describe()}"
    assert names["output"] not in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    assert_committed_only_delivered(bootstrap, names, delivered_first=1)


# --------------------------------------------------------------------------------------------- b. wrong password


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_wrong_password_makes_the_worker_not_ready_then_exit(
    delivery, secure_kafka, tiny_model_dir, nsmc_rows, tmp_path, fault_report
):
    names = fresh_topics(secure_kafka.bootstrap, partitions=1)
    produce(secure_kafka.bootstrap, names["input"], reviews(nsmc_rows, 5))
    password = f"wrong-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        secure_kafka.sasl_bootstrap, names, tiny_model_dir, **sasl_env("worker", password),
        WORKER_DELIVERY=delivery, WORKER_ACCESS_FAILURE_TIMEOUT_S=str(ACCESS_TIMEOUT_S),
    )
    run = run_until_exit(env, tmp_path / "worker.log", ACCESS_BOUND_S)
    # librdkafka's own lines count too (they reach the log through its logger); the settings dump
    # at start names sasl.* properties, so only "authentication" marks a failure line.
    auth_lines = [
        line for line in run.lines if re.search(r"authenticat", line, re.I) and not line.startswith(FATAL_LINE_PREFIX)
    ]
    first = run.first_failure
    fault_report(f"wrong password ({delivery})", rc=run.rc, exit_s=round(run.elapsed_s, 1),
                 not_ready_at_s=first and round(first.at, 1), auth_log_lines=len(auth_lines),
                 log_lines=len(run.lines), blocked=sorted(run.blocked))

    assert_fatal(run, r"authenticat|credential|sasl|password")
    first = assert_not_ready_once_failing(run, {"access_denied"})
    ready_before = [p for p in run.probes if p.ready == 200 and p.at < first.at]
    if ready_before:  # "not-ready at once": at most a moment between serving and the first refusal
        assert first.at - ready_before[0].at <= 5, run.describe()
    fatal_after = run.elapsed_s - first.at
    assert ACCESS_TIMEOUT_S - 5 <= fatal_after <= ACCESS_TIMEOUT_S + 15, (
        f"exited {fatal_after:.1f}s after turning not-ready; WORKER_ACCESS_FAILURE_TIMEOUT_S={ACCESS_TIMEOUT_S}\n"
        + run.describe()
    )
    allowed = int(run.elapsed_s / 10) + 2  # once per 10 s, plus the first and a summary
    assert len(auth_lines) <= allowed, f"{len(auth_lines)} authentication log lines in {run.elapsed_s:.0f}s:\n" + \
        "\n".join(auth_lines[:10])
    assert password not in "\n".join(run.lines)


# --------------------------------------------------------------------------------------------- c. right password


def test_right_password_works_through_the_pass_through_and_is_never_logged(
    secure_kafka, tiny_model_dir, nsmc_rows, tmp_path, fault_report
):
    bootstrap = secure_kafka.bootstrap
    names = fresh_topics(bootstrap, partitions=1)
    # What a deployment grants the worker (least privilege; DESCRIBE_CONFIGS lets it read the topics'
    # max.message.bytes). Kafka 4.1 asks no cluster ACL of an idempotent producer.
    create_acls(bootstrap, [
        *allow("worker", ResourceType.TOPIC, names["input"], AclOperation.READ),
        *allow("worker", ResourceType.TOPIC, names["output"], AclOperation.WRITE, AclOperation.DESCRIBE_CONFIGS),
        *allow("worker", ResourceType.TOPIC, names["dlq"], AclOperation.WRITE, AclOperation.DESCRIBE_CONFIGS),
        *allow("worker", ResourceType.GROUP, f"group-{names['input']}", AclOperation.READ),
    ])
    records = reviews(nsmc_rows, 30)
    produce(bootstrap, names["input"], records)
    password = secure_kafka.users["worker"]
    port = free_port()
    env = worker_env(secure_kafka.sasl_bootstrap, names, tiny_model_dir, **sasl_env("worker", password),
                     WORKER_METRICS_HOST="127.0.0.1", WORKER_METRICS_PORT=str(port))
    log = tmp_path / "worker.log"
    with HealthProber(port, interval_s=0.5) as prober:
        process = start_worker_process(env, log)
        try:
            results = consume_all(bootstrap, names["output"], expected=len(records), timeout_s=120, idle_s=2)
            running = process.poll() is None
            ready_now = prober.samples[-1].ready if prober.samples else None
        finally:
            rc, _ = terminate(process)
    text = log.read_text(encoding="utf-8", errors="replace")
    fault_report("right password", results=len(results), rc=rc, log_lines=len(text.splitlines()))

    assert {r.key for r in results} == {key for key, _ in records}, f"exit {rc}\n{text[-3000:]}"
    assert running and ready_now == 200, f"worker not serving (exit {process.returncode}, /readyz {ready_now})"
    assert rc == 0, text[-3000:]
    assert password not in text, "the SASL password appears in the worker's log"
    assert "**********" in text, "the settings dump should show the password masked"


# --------------------------------------------------------------------------------------------- d. authorization


@pytest.mark.parametrize("dlq_writable", [True, False], ids=["output-denied", "nothing-writable"])
def test_write_denied_ends_the_worker(dlq_writable, secure_kafka, tiny_model_dir, nsmc_rows, tmp_path, fault_report):
    bootstrap = secure_kafka.bootstrap
    names = fresh_topics(bootstrap, partitions=1)
    acls = [
        *allow("reader", ResourceType.TOPIC, names["input"], AclOperation.READ),
        *allow("reader", ResourceType.GROUP, f"group-{names['input']}", AclOperation.READ),
    ]
    if dlq_writable:  # only the output refuses; otherwise the dead letters are refused too
        acls += allow("reader", ResourceType.TOPIC, names["dlq"], AclOperation.WRITE)
    create_acls(bootstrap, acls)
    produce(bootstrap, names["input"], [EMPTY_FIRST, *reviews(nsmc_rows, 10)])
    env = worker_env(secure_kafka.sasl_bootstrap, names, tiny_model_dir, **sasl_env("reader", secure_kafka.users["reader"]),
                     WORKER_ACCESS_FAILURE_TIMEOUT_S=str(ACCESS_TIMEOUT_S))
    run = run_until_exit(env, tmp_path / "worker.log", ACCESS_BOUND_S)
    first = run.first_failure
    fault_report(f"write denied ({'output' if dlq_writable else 'everything'})", rc=run.rc,
                 exit_s=round(run.elapsed_s, 1), not_ready_at_s=first and round(first.at, 1),
                 log_lines=len(run.lines), blocked=sorted(run.blocked))

    assert_fatal(run, rf"authori[sz]|denied|permission|not allowed|{re.escape(names['output'])}")
    assert_not_ready_once_failing(run, {"access_denied", "destination_unwritable"})
    assert len(serving_lines(run)) <= MAX_LOG_LINES_SERVING, f"log lines: retrying in a loop?\n{run.describe()}"
    assert end_offset(bootstrap, names["output"]) == 0
    assert_committed_only_delivered(bootstrap, names, delivered_first=1 if dlq_writable else 0)


# --------------------------------------------------------------------------------------------- e. broken model


def dead_letters(bootstrap: str, topic: str) -> list:
    return consume_all(bootstrap, topic, expected=None, timeout_s=30, idle_s=3)


def test_model_broken_after_start_up_ends_the_worker(secure_kafka, tiny_model_dir, nsmc_rows, tmp_path, fault_report):
    bootstrap = secure_kafka.bootstrap
    names = fresh_topics(bootstrap, partitions=1)
    produce(bootstrap, names["input"], reviews(nsmc_rows, 40))
    env = worker_env(bootstrap, names, tiny_model_dir)
    run = run_until_exit(env, tmp_path / "worker.log", MODEL_BOUND_S, "tests.integration.faulty_model", ["always"])
    dlq = dead_letters(bootstrap, names["dlq"])
    inference_errors = [r for r in dlq if r.headers.get(KIND_HEADER) == INFERENCE_ERROR]
    first = run.first_failure
    fault_report("model broken", rc=run.rc, exit_s=round(run.elapsed_s, 1),
                 not_ready_at_s=first and round(first.at, 1), dead_letters=len(dlq),
                 inference_error_dead_letters=len(inference_errors), log_lines=len(run.lines))

    assert not inference_errors, f"{len(inference_errors)} records dead-lettered for the model's failure\n{run.describe()}"
    assert_fatal(run, r"model|inference|predict")
    assert_not_ready_once_failing(run, {"model_broken"})
    assert committed_position(bootstrap, names) == 0, "committed records the model never classified"
    assert end_offset(bootstrap, names["output"]) == 0


def test_one_poison_text_is_dead_lettered_and_the_rest_classified(
    secure_kafka, tiny_model_dir, nsmc_rows, tmp_path, fault_report
):
    bootstrap = secure_kafka.bootstrap
    names = fresh_topics(bootstrap, partitions=1)
    poison = "이 문장은 모델을 넘어뜨린다 poison-7f3a"
    records = [*reviews(nsmc_rows, 30), (b"poison", poison.encode()), *reviews(nsmc_rows, 30, start=30)]
    produce(bootstrap, names["input"], records)
    port = free_port()
    env = worker_env(bootstrap, names, tiny_model_dir, FAULTY_MODEL_POISON=poison,
                     WORKER_METRICS_HOST="127.0.0.1", WORKER_METRICS_PORT=str(port))
    log = tmp_path / "worker.log"
    with HealthProber(port, interval_s=0.5) as prober:
        process = start_worker_process(env, log, "tests.integration.faulty_model", ["poison"])
        try:
            results = consume_all(bootstrap, names["output"], expected=len(records) - 1, timeout_s=120, idle_s=2)
            dlq = consume_all(bootstrap, names["dlq"], expected=1, timeout_s=30, idle_s=2)
            running = process.poll() is None
            blocked = prober.blocked_reasons()
        finally:
            rc, _ = terminate(process)
    text = log.read_text(encoding="utf-8", errors="replace")
    fault_report("one poison text", results=len(results), dead_letters=len(dlq), rc=rc)

    assert sorted(r.key for r in results) == sorted(k for k, _ in records if k != b"poison"), text[-3000:]
    assert [(r.key, r.headers.get(KIND_HEADER)) for r in dlq] == [(b"poison", INFERENCE_ERROR)]
    assert running and not blocked, f"one poison text stopped the worker (exit {process.returncode}, blocked {blocked})"
    assert rc == 0, text[-3000:]
    assert committed_position(bootstrap, names) == len(records)
