"""Command line: ``worker run``, ``worker classify TEXT...``, ``worker eval TSV``."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from worker.engines.loading import load_classifier
from worker.errors import WorkerError
from worker.evaluation import DEFAULT_REVIEW_BELOW, DEFAULT_THRESHOLDS
from worker.logs import configure_logging
from worker.settings import Settings, load_settings

log = logging.getLogger("worker")

# How far past WORKER_SHUTDOWN_TIMEOUT_S the process may run after SIGTERM before it is ended anyway.
SHUTDOWN_MARGIN_S = 3.0

# The four example sentences of the document this project started from (its `pipeline()` example), in its order.
SEED_SENTENCES = (
    "이 영화 정말 재밌다!",
    "연기도 별로고 스토리도 엉망이네",
    "배우들 연기력이 대단하다",
    "시간 낭비했다 다신 안 봄",
)


class SignalWatcher:
    """SIGTERM/SIGINT: the first one asks for a clean stop, a second one ends the process at once.

    Python runs signal handlers on the main thread between bytecodes, and the main thread may be
    inside librdkafka for a long time. The C part of the handler writes every signal to a wakeup
    file descriptor right away, so a thread reading it can act whatever the main thread does.
    """

    def __init__(self, on_first: Callable[[], None], on_second: Callable[[], None]) -> None:
        self._on_first = on_first
        self._on_second = on_second
        self._seen = 0

    def install(self) -> None:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: None)  # the watcher thread does the work
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._sockets = (reader, writer)  # kept alive for the life of the process
        threading.Thread(target=self._watch, args=(reader,), name="signals", daemon=True).start()

    def _watch(self, reader: socket.socket) -> None:
        while True:
            for _ in reader.recv(64):
                self._seen += 1
                (self._on_first if self._seen == 1 else self._on_second)()


def cmd_run(settings: Settings) -> int:
    from worker.app import Worker, overrun_handler
    from worker.endpoints import MetricsServer
    from worker.errors import EXIT_FATAL, EXIT_UNFINISHED
    from worker.health import Health
    from worker.metrics import WorkerMetrics
    from worker.watchdog import Watchdog, exit_line, hard_exit

    # Tokenization runs on the loop thread beside inference; the tokenizer's own thread pool would
    # compete with torch for the cores (measured: 582 vs 511 messages/s end to end on 2 cores).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    metrics = WorkerMetrics()
    health = Health(metrics)
    watchdog = Watchdog(on_overrun=overrun_handler(health))
    worker: Worker | None = None
    stopped = threading.Event()

    def first_signal() -> None:
        if worker is None:
            log.info("stop requested during start-up; nothing was consumed")
            hard_exit(0)
        stopped.set()
        worker.request_stop()
        # The structured shutdown keeps to WORKER_SHUTDOWN_TIMEOUT_S; this is the backstop.
        watchdog.arm_exit(time.monotonic() + settings.shutdown_timeout_s + SHUTDOWN_MARGIN_S, "the shutdown", EXIT_UNFINISHED)

    def second_signal() -> None:
        log.warning("second signal: exiting now")
        hard_exit(130)

    SignalWatcher(first_signal, second_signal).install()
    watchdog.start()
    server = None
    if settings.metrics_port:
        server = MetricsServer(settings.metrics_host, settings.metrics_port, metrics.registry, health)
        server.start()
    log.info("starting", extra={"fields": {"settings": settings.masked_dump()}})
    classifier = load_classifier(settings)
    classifier.warm_up()
    freeze_startup_heap()
    metrics.describe_model(classifier)
    log.info("model ready", extra={"fields": {"labels": classifier.labels, **classifier.info}})
    worker = Worker(settings, classifier, metrics, health, watchdog=watchdog)
    clean = worker.run()
    log.info("stopped", extra={"fields": {"clean": clean, "exit_code": worker.exit_code}})
    fatal = worker.fatal
    if fatal is not None and server is not None:
        # Let monitoring see why (/readyz 503 with the reason, worker_blocked=1) before the restart.
        stopped.wait(settings.fatal_linger_s)
    if server is not None:
        server.stop()
    # Exit without running the Kafka clients' destructors: with an unreachable broker they can
    # block for minutes, and everything that matters was committed or abandoned above.
    hard_exit(worker.exit_code, exit_line(EXIT_FATAL, f"{fatal.reason}: {fatal.detail}") if fatal else None)
    return worker.exit_code  # not reached


def freeze_startup_heap() -> None:
    """Exclude everything allocated during start-up from garbage collection.

    torch, transformers and the engines leave a few hundred thousand long-lived objects behind; a
    full collection walks all of them (measured 120-130 ms on 2 vCPUs) and runs whenever enough new
    objects have survived, which put those pauses into the p99 latency of whatever window was in
    flight. Frozen objects are never scanned, so the collections that remain only see what the loop
    itself allocates (the documented use of ``gc.freeze``).
    """
    gc.collect()
    gc.freeze()


def cmd_classify(settings: Settings, texts: Sequence[str], as_json: bool) -> int:
    from worker.app import rules_for
    from worker.engines.base import classify_encoded, is_multi_label, to_prediction
    from worker.engines.labels import KOREAN_LABELS

    classifier = load_classifier(settings)
    rules = rules_for(settings, classifier)  # the thresholds the worker would apply
    multi_label = is_multi_label(classifier)
    texts = list(texts) or list(SEED_SENTENCES)
    encodings = classifier.encode(texts)
    outcome = classify_encoded(classifier, encodings, settings.sub_batch_max_tokens)
    for text, encoding, probs in zip(texts, encodings, outcome.probabilities):
        prediction = to_prediction(probs, classifier.labels, encoding, multi_label)
        flagged = rules.flagged(prediction.probabilities) if multi_label else ()
        if as_json:
            extra = {"labels": list(flagged)} if multi_label else {}
            print(json.dumps({"text": text, **prediction.__dict__, **extra}, ensure_ascii=False))
        elif multi_label:
            print(f"{multi_label_line(flagged, prediction.probabilities, prediction.label)}: {text}")
        else:
            print(f"{KOREAN_LABELS.get(prediction.label, prediction.label)} ({prediction.score:.2f}): {text}")
    return 0


def multi_label_line(flagged: Sequence[str], probabilities: dict[str, float], most_probable: str) -> str:
    """Every category at or above its threshold with its probability, or (none) and the most probable one."""
    if flagged:
        return ", ".join(f"{c} ({probabilities[c]:.2f})" for c in flagged)
    return f"(none; most probable {most_probable} {probabilities[most_probable]:.2f})"


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    from worker.datasets import read_nsmc
    from worker.evaluation import format_report, score_rows, summarize

    if args.plots:
        from worker.plots import pyplot

        pyplot()  # a missing matplotlib fails here, not after the long run
    rows = read_nsmc(args.tsv, args.limit)
    classifier = load_classifier(settings)
    classifier.warm_up()
    scored = score_rows(classifier, rows, args.batch_messages, settings.sub_batch_max_tokens)
    report = summarize(scored, args.thresholds, args.review_below)
    report["model"] = classifier.info
    selection = getattr(classifier, "selection", None)
    if selection is not None:
        report["engine_selection"] = selection.to_json()
    text = json.dumps(report, ensure_ascii=False, indent=2)
    print(text if args.json else format_report(report))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    if args.plots:
        from worker.plots import write_eval_plots

        for path in write_eval_plots(scored, report, args.plots, classifier.info.get("model", "")):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _thresholds(value: str) -> tuple[float, ...]:
    try:
        thresholds = tuple(sorted(float(part) for part in value.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {value!r}") from None
    if not thresholds or not all(0 <= t <= 1 for t in thresholds):
        raise argparse.ArgumentTypeError(f"thresholds must lie in [0, 1]: {value!r}")
    return thresholds


def _probability(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.5 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0.5, 1] (a binary model's winning score): {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker",
        description="Real-time Korean comment classification on Kafka. Configure with WORKER_* environment variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="consume, classify and publish until SIGTERM/SIGINT")
    classify = commands.add_parser(
        "classify", help="classify the given texts and print one line each (a multi-label model: every category "
        "at or above its threshold, WORKER_LABEL_THRESHOLDS)")
    classify.add_argument(
        "texts", nargs="*", help="texts to classify (default: the four example sentences of the seed document)"
    )
    classify.add_argument("--json", action="store_true", help="print one JSON object per text")
    evaluate = commands.add_parser(
        "eval",
        help="accuracy, threshold table, calibration (ECE) and throughput on an NSMC-format TSV",
        description="Classify a labelled TSV and report accuracy, a threshold table for flagging the 'negative' "
        "class (precision, recall, share flagged, share sent to review), the expected calibration error, and "
        "optionally charts.",
    )
    evaluate.add_argument("tsv", type=Path, help="file with columns id, document, label (tab separated, header row)")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N rows")
    evaluate.add_argument("--batch-messages", type=int, default=1024, help="texts per length-sorted window")
    evaluate.add_argument("--output", type=Path, default=None, help="also write the report as JSON here")
    evaluate.add_argument("--json", action="store_true", help="print the JSON report instead of the tables")
    evaluate.add_argument(
        "--thresholds",
        type=_thresholds,
        default=DEFAULT_THRESHOLDS,
        help="comma-separated thresholds on P(negative) for the table (default: 0.50,0.55,...,0.95,0.96,...,0.99)",
    )
    evaluate.add_argument(
        "--review-below",
        type=_probability,
        default=DEFAULT_REVIEW_BELOW,
        help="review band: texts whose winning score (either label) is below this go to human review "
        f"(default {DEFAULT_REVIEW_BELOW})",
    )
    evaluate.add_argument(
        "--plots", type=Path, default=None, metavar="DIR", help="write PNG charts here (needs matplotlib)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        if args.command == "run":
            return cmd_run(settings)
        if args.command == "classify":
            return cmd_classify(settings, args.texts, args.json)
        return cmd_eval(settings, args)
    except WorkerError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
