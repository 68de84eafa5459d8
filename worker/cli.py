"""Command line: ``worker run``, ``worker classify TEXT...``, ``worker eval FILE``, ``worker replay``."""

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
from typing import Any, Callable, Sequence

from worker.engines.base import Classifier
from worker.engines.loading import load_classifier, load_shadow_classifier
from worker.errors import ConfigError, WorkerError
from worker.evaluation import DEFAULT_REVIEW_BELOW, DEFAULT_THRESHOLDS
from worker.logs import configure_logging
from worker.settings import Settings, load_settings, otel_environment

log = logging.getLogger("worker")

# How far past WORKER_SHUTDOWN_TIMEOUT_S the process may run after SIGTERM before it is ended anyway.
SHUTDOWN_MARGIN_S = 3.0
# What the spans left at exit may take to reach the collector (within SHUTDOWN_MARGIN_S: the backstop waits no longer).
TRACING_FLUSH_S = 2.0

# The four example sentences of the document this project started from (its `pipeline()` example), in its order.
SEED_SENTENCES = (
    "이 영화 정말 재밌다!",
    "연기도 별로고 스토리도 엉망이네",
    "배우들 연기력이 대단하다",
    "시간 낭비했다 다신 안 봄",
)


class SignalWatcher:
    """SIGTERM/SIGINT: the first one asks for a clean stop, a second one ends the process at once.
    SIGHUP: reload the rules file (``on_hangup``), nothing else.

    Python runs signal handlers on the main thread between bytecodes, and the main thread may be
    inside librdkafka for a long time. The C part of the handler writes every signal's number to a
    wakeup file descriptor right away, so a thread reading it can act whatever the main thread does.
    """

    def __init__(self, on_first: Callable[[], None], on_second: Callable[[], None],
                 on_hangup: Callable[[], None] = lambda: None) -> None:
        self._on_first = on_first
        self._on_second = on_second
        self._on_hangup = on_hangup
        self._seen = 0

    def install(self) -> None:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda signum, frame: None)  # the watcher thread does the work
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._sockets = (reader, writer)  # kept alive for the life of the process
        threading.Thread(target=self._watch, args=(reader,), name="signals", daemon=True).start()

    def _watch(self, reader: socket.socket) -> None:
        while True:
            received = reader.recv(64)
            if not received:
                return  # the writing end is closed: no signal can come any more
            for signum in received:
                if signum == signal.SIGHUP:
                    self._on_hangup()
                    continue
                self._seen += 1
                (self._on_first if self._seen == 1 else self._on_second)()


def cmd_run(settings: Settings) -> int:
    from worker.app import Worker, overrun_handler
    from worker.endpoints import MetricsServer
    from worker.errors import EXIT_FATAL, EXIT_UNFINISHED
    from worker.health import Health
    from worker.metrics import WorkerMetrics
    from worker.tracing import build_tracing
    from worker.watchdog import Watchdog, exit_line, hard_exit

    # Tokenization runs on the loop thread beside inference; the tokenizer's own thread pool would
    # compete with torch for the cores (measured: 582 vs 511 messages/s end to end on 2 cores).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tracing = build_tracing(otel_environment(), settings.group_id)  # a no-op unless OTEL_* asks for traces
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

    def hangup() -> None:
        if worker is None:  # the rules file is read once the model is loaded, so there is nothing to reload yet
            log.info("SIGHUP during start-up: the rules file is read when the worker starts")
            return
        worker.request_reload()

    SignalWatcher(first_signal, second_signal, hangup).install()
    watchdog.start()
    server = None
    if settings.metrics_port:
        server = MetricsServer(settings.metrics_host, settings.metrics_port, metrics.registry, health)
        server.start()
    log.info("starting", extra={"fields": {"settings": settings.masked_dump()}})
    if settings.routes_file is not None:
        from worker.rules_file import read_rules

        read_rules(settings.routes_file, settings.reserved_topics)  # a bad file fails now, not after the model loads
    classifier = load_classifier(settings)
    classifier.warm_up()
    freeze_startup_heap()
    metrics.describe_model(classifier)
    log.info("model ready", extra={"fields": {"labels": classifier.labels, **classifier.info}})
    shadow = shadow_classifier(settings, metrics)
    try:
        worker = Worker(settings, classifier, metrics, health, watchdog=watchdog, tracing=tracing, shadow=shadow)
        clean = worker.run()
    except ConfigError as exc:
        # A route the model cannot serve, or a client property librdkafka refused at start; nothing was
        # consumed. hard_exit: a client already created must not hold the exit up in its destructor, and
        # the interpreter's teardown (native libraries report leaks there) must not follow the last line.
        hard_exit(2, f"worker: error: {exc}")
        return 2  # not reached
    tracing.shutdown(TRACING_FLUSH_S)
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


def shadow_classifier(settings: Settings, metrics: Any) -> Any:
    """The shadow model, loaded and warmed up; None without one, or (one line, the metric set) when it cannot load:
    the shadow decides nothing, so it never keeps the primary from serving."""
    if settings.shadow_model is None:
        return None
    try:
        shadow = load_shadow_classifier(settings)
        assert shadow is not None
        shadow.warm_up()
    except Exception as exc:  # noqa: BLE001 - whatever the shadow does, the primary serves
        reason = f"could not load {settings.shadow_model}: {type(exc).__name__}: {exc}"[:500]
        metrics.shadow_disabled.info({"reason": reason})
        log.error("shadow model switched off: %s; the primary goes on", reason)
        return None
    log.info("shadow model ready", extra={"fields": {"labels": shadow.labels, "topic": settings.shadow_topic,
                                                     **shadow.info}})
    return shadow


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
    from worker.datasets import is_multi_label_file

    if args.plots:
        from worker.plots import pyplot

        pyplot()  # a missing matplotlib fails here, not after the long run
    if is_multi_label_file(args.tsv):
        return _eval_multi_label(settings, args)
    from worker.datasets import read_nsmc
    from worker.evaluation import format_report, score_rows, summarize

    rows = read_nsmc(args.tsv, args.limit)
    classifier = load_classifier(settings)
    if getattr(classifier, "multi_label", False) or len(classifier.labels) != 2:
        raise WorkerError(
            f"{args.tsv} is binary NSMC data (id, document, label) but the model has the categories "
            f"{', '.join(classifier.labels)}; give multi-label data (JSONL, or TSV id, document, labels: "
            "docs/moderation.md)"
        )
    classifier.warm_up()
    try:
        scored = score_rows(classifier, rows, args.batch_messages, settings.sub_batch_max_tokens)
    except ValueError as exc:  # the model does not fit the evaluation (e.g. not binary)
        raise ConfigError(f"worker eval: {exc}") from None
    report = summarize(scored, args.thresholds or DEFAULT_THRESHOLDS, args.review_below)
    _finish_eval(classifier, report, args, format_report)
    if args.plots:
        from worker.plots import write_eval_plots

        for path in write_eval_plots(scored, report, args.plots, classifier.info.get("model", "")):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _eval_multi_label(settings: Settings, args: argparse.Namespace) -> int:
    from worker.datasets import read_multi_label
    from worker.evaluation.multilabel import (
        DEFAULT_GRID,
        check_categories,
        format_multi_label_report,
        score_multi_label,
        summarize_multi_label,
    )

    rows = read_multi_label(args.tsv, args.limit)
    classifier = load_classifier(settings)
    check_categories(rows, classifier.labels, args.tsv)
    thresholds = _label_thresholds_in_force(settings, args.label_thresholds, classifier.labels)
    multi_label = bool(getattr(classifier, "multi_label", False))
    if not multi_label:
        print(
            "worker eval: note: the model is single-label (softmax): its categories compete for one winner, "
            "so each category's probability is read as is",
            file=sys.stderr,
        )
    classifier.warm_up()
    scored = score_multi_label(classifier, rows, args.batch_messages, settings.sub_batch_max_tokens)
    report = summarize_multi_label(scored, thresholds, args.thresholds or DEFAULT_GRID, args.target_precision)
    report["model_multi_label"] = multi_label
    _finish_eval(classifier, report, args, format_multi_label_report)
    if args.plots:
        from worker.plots import write_multi_label_plots

        for path in write_multi_label_plots(scored, report, args.plots, classifier.info.get("model", "")):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _finish_eval(
    classifier: Classifier,
    report: dict[str, Any],
    args: argparse.Namespace,
    format_report: Callable[[dict[str, Any]], str],
) -> None:
    """The model's description in the report; print it (tables or --json) and write --output."""
    report["model"] = classifier.info
    selection = getattr(classifier, "selection", None)
    if selection is not None:
        report["engine_selection"] = selection.to_json()
    text = json.dumps(report, ensure_ascii=False, indent=2)
    print(text if args.json else format_report(report))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")


def _label_thresholds_in_force(
    settings: Settings, override: dict[str, float] | None, categories: Sequence[str]
) -> dict[str, float]:
    """Each category's configured threshold: --label-thresholds, else WORKER_LABEL_THRESHOLDS where the settings
    have it (a mapping category -> threshold), else 0.5."""
    unknown = sorted(set(override or {}) - set(categories))
    if unknown:
        raise WorkerError(
            f"--label-thresholds: unknown category {unknown[0]!r}; the model's categories are {', '.join(categories)}"
        )
    configured = getattr(settings, "label_thresholds", None) or {}
    thresholds = {name: float(configured[name]) for name in categories if name in configured}
    thresholds.update(override or {})
    return thresholds


def _category_thresholds(value: str) -> dict[str, float]:
    """``insult=0.7,spam=0.6``: a threshold per category."""
    thresholds: dict[str, float] = {}
    for part in value.split(","):
        name, equals, number = part.partition("=")
        try:
            threshold = float(number)
        except ValueError:
            threshold = -1.0
        if not equals or not name.strip() or not 0 <= threshold <= 1:
            raise argparse.ArgumentTypeError(f"expected category=threshold[,...] with thresholds in [0, 1]: {part!r}")
        thresholds[name.strip()] = threshold
    return thresholds


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from worker.errors import ConfigError
    from worker.kafka_io.replay_clients import ReplayClients
    from worker.replay import ReplayRun, Selection, describe, parse_time
    from worker.watchdog import Watchdog

    now = datetime.now(timezone.utc)
    try:
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else None
    except ValueError as exc:
        raise ConfigError(f"worker replay: --since/--until: {exc}") from None
    if since is not None and until is not None and since >= until:
        raise ConfigError("worker replay: --since must be before --until")
    to_topic = args.to or settings.input_topic
    if to_topic == settings.dlq_topic:
        raise ConfigError(f"worker replay: --to {to_topic} is the dead-letter topic itself")
    selection = Selection(
        reasons=frozenset(args.reason or ()),
        partitions=frozenset(args.partition or ()),
        since=since,
        until=until,
        # Without --to, only dead letters of this worker's input go back to it.
        source_topic=None if args.to else settings.input_topic,
        include_cut=args.include_cut,
        limit=args.limit,
    )
    watchdog = Watchdog()
    watchdog.start()
    run = ReplayRun(ReplayClients(settings, watchdog), settings.dlq_topic, to_topic, selection,
                    dry_run=args.dry_run, timeout_s=args.timeout)
    code, tally = run.run()
    for line in describe(tally, to_topic, args.dry_run):
        print(line)
    if code:
        print(f"worker: error: the replay did not finish: {tally.first_failure}; "
              f"{tally.delivered} of {tally.replayed} replayed records delivered", file=sys.stderr)
    watchdog.stop()
    return code


def _whole_number(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {value!r}")
        return number

    return parse


def _reason(value: str) -> str:
    from worker.wire.types import DEAD_LETTER_REASONS

    if value not in DEAD_LETTER_REASONS:
        raise argparse.ArgumentTypeError(f"unknown reason {value!r}; choose from {', '.join(DEAD_LETTER_REASONS)}")
    return value


def _thresholds(value: str) -> tuple[float, ...]:
    try:
        thresholds = tuple(sorted(float(part) for part in value.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {value!r}") from None
    if not thresholds or not all(0 <= t <= 1 for t in thresholds):
        raise argparse.ArgumentTypeError(f"thresholds must lie in [0, 1]: {value!r}")
    return thresholds


def _number_between(low: float, high: float, low_included: bool = True, why: str = "") -> Callable[[str], float]:
    """An argparse type: a number in [low, high], or (low, high] when ``low_included`` is False."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not (low <= number if low_included else low < number) or number > high:
            bounds = f"{'[' if low_included else '('}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must lie in {bounds}{why}: {value!r}")
        return number

    return parse


_probability = _number_between(0.5, 1, why=" (a binary model's winning score)")
_target_precision = _number_between(0, 1, low_included=False)
_seconds = _number_between(0, 3600, low_included=False)


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
        help="accuracy, threshold table, calibration (ECE) and throughput on labelled data (binary or multi-label)",
        description="Classify a labelled file and report how to set thresholds. Binary (NSMC) data: accuracy, a "
        "threshold table for flagging the 'negative' class (precision, recall, share flagged, share sent to "
        "review), the expected calibration error. Multi-label data (a set of categories per text): per category "
        "precision, recall, F1 and share flagged per threshold, the lowest threshold reaching --target-precision, "
        "the calibration error, and a micro/macro summary. Optionally charts.",
    )
    evaluate.add_argument(
        "tsv",
        type=Path,
        metavar="FILE",
        help="binary: TSV with columns id, document, label (tab separated, header row); multi-label: TSV with "
        "columns id, document, labels (comma-separated categories, empty for a clean text), or .jsonl with "
        '{"text": ..., "labels": [...]} per line',
    )
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N rows")
    evaluate.add_argument("--batch-messages", type=int, default=1024, help="texts per length-sorted window")
    evaluate.add_argument("--output", type=Path, default=None, help="also write the report as JSON here")
    evaluate.add_argument("--json", action="store_true", help="print the JSON report instead of the tables")
    evaluate.add_argument(
        "--thresholds",
        type=_thresholds,
        default=None,
        help="comma-separated thresholds for the table: on P(negative) for binary data (default: "
        "0.50,0.55,...,0.95,0.96,...,0.99), on each category's probability for multi-label data "
        "(default: 0.05,0.10,...,0.95)",
    )
    evaluate.add_argument(
        "--review-below",
        type=_probability,
        default=DEFAULT_REVIEW_BELOW,
        help="binary data: texts whose winning score (either label) is below this go to human review "
        f"(default {DEFAULT_REVIEW_BELOW})",
    )
    evaluate.add_argument(
        "--target-precision",
        type=_target_precision,
        default=0.9,
        help="multi-label data: report per category the lowest threshold (0.001 grid) whose precision reaches "
        "this (default 0.9)",
    )
    evaluate.add_argument(
        "--label-thresholds",
        type=_category_thresholds,
        default=None,
        metavar="CATEGORY=T,...",
        help="multi-label data: the thresholds to report the summary at (default: WORKER_LABEL_THRESHOLDS "
        "where set, else 0.5 per category)",
    )
    evaluate.add_argument(
        "--plots", type=Path, default=None, metavar="DIR", help="write PNG charts here (needs matplotlib)"
    )
    replay = commands.add_parser(
        "replay",
        help="put dead letters back into a topic (the input topic by default); never deletes any",
        description="Read WORKER_DLQ_TOPIC from its beginning to where it ends now (no consumer group joined, "
        "nothing committed or deleted) and produce the original key, value and headers of the selected dead "
        "letters, byte for byte, with an idempotent producer. Connection settings are the worker's WORKER_* "
        "variables. Without --to, dead letters of WORKER_INPUT_TOPIC go back to it, each into the partition "
        "it came from.",
    )
    replay.add_argument("--reason", action="append", type=_reason, metavar="KIND",
                        help="only dead letters with this worker.error.kind (repeatable), e.g. missing_text")
    replay.add_argument("--partition", action="append", type=_whole_number(0), metavar="N",
                        help="only dead letters from this source partition (worker.source.partition; repeatable)")
    replay.add_argument("--since", metavar="TIME",
                        help="only dead letters that failed at or after TIME (worker.failed.at): ISO 8601 "
                        "(UTC without a zone) or a time ago: 90s, 30m, 2h, 7d")
    replay.add_argument("--until", metavar="TIME", help="only dead letters that failed before TIME (as --since)")
    replay.add_argument("--limit", type=_whole_number(1), metavar="N", help="replay at most N dead letters, oldest first")
    replay.add_argument("--to", metavar="TOPIC",
                        help="write to TOPIC, dead letters of any source topic (default: WORKER_INPUT_TOPIC, "
                        "only dead letters that came from it)")
    replay.add_argument("--include-cut", action="store_true",
                        help="also replay cut copies (dead letters whose value, headers or key were cut to fit): "
                        "what they kept, not the original")
    replay.add_argument("--dry-run", action="store_true",
                        help="say what would be replayed (per reason and source partition, a few samples); "
                        "produce nothing")
    replay.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                        help="give up when the cluster does not answer for this long at any step (default 30)")
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
        if args.command == "replay":
            return cmd_replay(settings, args)
        return cmd_eval(settings, args)
    except WorkerError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
