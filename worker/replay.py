"""``worker replay``: dead letters back into a topic (the input topic by default).

The dead-letter topic is read from its beginning up to where it ended when the replay began (so
records dead-lettered again while the replay runs are not read again), without joining a group or
committing anything, and nothing is ever deleted from it. Each dead letter is judged
(:func:`judge`): filters (reason, source partition, time, source topic), then whether it holds the
whole original; the original key, value and headers are written byte for byte (:func:`original`)
with an idempotent producer. :func:`replay` runs it against a :class:`ReplayPort`; the selection
and reconstruction logic above it is pure.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TextIO

from tqdm import tqdm

from worker.errors import EXIT_CLEAN, EXIT_UNFINISHED, ConfigError
from worker.kafka_io.port import KafkaCallError
from worker.kafka_io.replay_clients import ReplayPort, TopicSnapshot
from worker.policy import ClientError, ErrorKind
from worker.wire.dead_letters import DeadLetterView, read_dead_letter
from worker.wire.types import Headers, InputRecord

# Why a dead letter was read but not replayed, as the summary counts them (one, several), in this order.
NOT_SELECTED = "not selected by the filters"
OTHER_SOURCE = "from another topic"
CUT_COPY = "cut copy"
NO_ORIGINAL = "minimal"
NOT_A_DEAD_LETTER = "not a dead letter"
SKIP_CAUSES = {
    NOT_SELECTED: ("not selected by the filters", "not selected by the filters"),
    OTHER_SOURCE: ("from another topic than the input", "from other topics than the input"),
    CUT_COPY: ("cut copy (--include-cut replays it)", "cut copies (--include-cut replays them)"),
    NO_ORIGINAL: ("minimal dead letter (no original to replay)", "minimal dead letters (no original to replay)"),
    NOT_A_DEAD_LETTER: ("record without worker.error.kind", "records without worker.error.kind"),
}

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_time(text: str, now: datetime) -> datetime:
    """``2026-12-01T08:00:00Z`` (ISO 8601; without a zone: UTC) or a time ago: ``90s``, ``30m``, ``2h``, ``7d``, ``1w``."""
    match = _RELATIVE.match(text.strip())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or a time ago like 30m, 2h, 7d: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Selection:
    """Which dead letters go back. Empty sets select everything; ``since`` is inclusive, ``until`` exclusive."""

    reasons: frozenset[str] = frozenset()
    partitions: frozenset[int] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    source_topic: str | None = None  # only dead letters from this topic (None: from any)
    include_cut: bool = False
    limit: int | None = None


def failed_at(view: DeadLetterView, letter: InputRecord) -> datetime | None:
    """When the record failed: ``worker.failed.at``, else the dead letter's own timestamp."""
    if view.failed_at:
        try:
            moment = datetime.fromisoformat(view.failed_at)
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    if letter.timestamp_ms is not None:
        return datetime.fromtimestamp(letter.timestamp_ms / 1000, timezone.utc)
    return None


def judge(letter: InputRecord, view: DeadLetterView, selection: Selection) -> str | None:
    """None when the dead letter is to be replayed, else why not (a key of :data:`SKIP_CAUSES`)."""
    if not view.is_dead_letter:
        return NOT_A_DEAD_LETTER
    if selection.reasons and view.reason not in selection.reasons:
        return NOT_SELECTED
    if selection.partitions and view.source_partition not in selection.partitions:
        return NOT_SELECTED
    if selection.since is not None or selection.until is not None:
        moment = failed_at(view, letter)
        if moment is None:
            return NOT_SELECTED
        if selection.since is not None and moment < selection.since:
            return NOT_SELECTED
        if selection.until is not None and moment >= selection.until:
            return NOT_SELECTED
    if selection.source_topic is not None and view.source_topic != selection.source_topic:
        return OTHER_SOURCE
    if view.minimal:
        return NO_ORIGINAL
    if view.cut and not selection.include_cut:
        return CUT_COPY
    return None


def original(letter: InputRecord, view: DeadLetterView) -> tuple[bytes | None, bytes | None, Headers]:
    """The original record's key, value and headers, byte for byte (of a cut copy: what it kept)."""
    return letter.key, letter.value, list(view.original_headers)


def destination_partition(view: DeadLetterView, topic: str, partitions: int) -> int | None:
    """Back into the partition it came from when it goes back to its own topic (so a key stays in
    its partition whichever partitioner first wrote it); else the producer's partitioner decides."""
    if view.source_topic == topic and view.source_partition is not None and 0 <= view.source_partition < partitions:
        return view.source_partition
    return None


@dataclass
class Tally:
    """What a replay did: read, replayed (or would be, in a dry run), skipped by cause, delivered."""

    read: int = 0
    selected: Counter = field(default_factory=Counter)  # (reason, source partition) -> count
    skipped: Counter = field(default_factory=Counter)  # cause -> count
    samples: list[tuple[InputRecord, DeadLetterView]] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0
    first_failure: str | None = None
    stopped_at_limit: bool = False

    @property
    def replayed(self) -> int:
        return sum(self.selected.values())


def _preview(data: bytes | None, size: int = 60) -> str:
    """A short view of a key or value: the text where it is UTF-8, else the bytes."""
    if data is None:
        return "null"
    try:
        text = data.decode("utf-8")
        shown = repr(text[:size]) + ("…" if len(text) > size else "")
    except UnicodeDecodeError:
        shown = repr(data[:size]) + ("…" if len(data) > size else "")
    return f"{shown} ({len(data)} bytes)"


def describe(tally: Tally, to_topic: str, dry_run: bool) -> list[str]:
    """The lines printed at the end: per reason and source partition, samples (dry run), skips."""
    verb = "would replay" if dry_run else "replayed"
    lines = []
    if dry_run:
        lines.append("dry run: nothing was produced")
        if tally.selected:
            lines.append(f"{'reason':<18} {'source partition':>16} {'dead letters':>12}")
            for (reason, partition), count in sorted(tally.selected.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
                lines.append(f"{reason:<18} {'-' if partition is None else partition:>16} {count:>12}")
        for letter, view in tally.samples:
            lines.append(
                f"sample: dead letter {letter.partition}@{letter.offset} {view.reason} from "
                f"{view.source_topic}[{view.source_partition}]@{view.source_offset} failed at {view.failed_at}: "
                f"key {_preview(letter.key, 24)}, value {_preview(letter.value)}, {len(view.original_headers)} headers"
            )
    skipped = ", ".join(
        f"{tally.skipped[cause]} {SKIP_CAUSES[cause][tally.skipped[cause] != 1]}" for cause in SKIP_CAUSES
        if tally.skipped[cause])
    limit = " (stopped at --limit)" if tally.stopped_at_limit else ""
    lines.append(
        f"worker replay: {verb} {tally.replayed} of {tally.read} dead letters read to {to_topic}{limit}"
        + (f"; skipped {skipped}" if skipped else "")
        + ("" if dry_run else f"; delivered {tally.delivered}" + (f", failed {tally.failed}" if tally.failed else ""))
    )
    return lines


@dataclass
class ReplayRun:
    """One replay: read ``dlq_topic``, write what ``selection`` picks to ``to_topic``."""

    port: ReplayPort
    dlq_topic: str
    to_topic: str
    selection: Selection
    dry_run: bool = False
    timeout_s: float = 30.0  # the longest wait for the cluster at any one step
    samples: int = 3
    clock: Callable[[], float] = time.monotonic
    progress: TextIO | None = None  # where the progress bar goes (None: stderr, shown on a terminal only)

    def run(self) -> tuple[int, Tally]:
        """(exit code, tally): 0 when everything selected was replayed (or, dry, described);
        :data:`EXIT_UNFINISHED` when a delivery failed or the cluster stopped answering."""
        tally = Tally()
        code = EXIT_CLEAN
        try:
            snapshot = self._snapshot(self.dlq_topic, "dead-letter")
            partitions = 0
            if not self.dry_run:
                partitions = self.port.partition_count(self.to_topic, self.timeout_s) or 0
                if not partitions:
                    raise ConfigError(f"worker replay: destination topic {self.to_topic!r} does not exist")
            self.port.start_reading(snapshot)
            code = self._copy(snapshot, partitions, tally)
        except KafkaCallError as exc:  # the cluster did not answer, or refused: what was produced is reported
            tally.first_failure = tally.first_failure or str(exc)
            code = EXIT_UNFINISHED
        finally:
            if not self.dry_run:
                code = max(code, self._finish_deliveries(tally))
            self.port.close(self.timeout_s)
        return code, tally

    def _snapshot(self, topic: str, role: str) -> TopicSnapshot:
        snapshot = self.port.snapshot(topic, self.timeout_s)
        if snapshot is None:
            raise ConfigError(f"worker replay: {role} topic {topic!r} does not exist")
        return snapshot

    def _copy(self, snapshot: TopicSnapshot, partitions: int, tally: Tally) -> int:
        bar = tqdm(total=snapshot.records, unit=" dead letters", desc="replay", file=self.progress or sys.stderr,
                   disable=None if self.progress is None else False, dynamic_ncols=True)
        last_read = self.clock()
        with bar:
            while not self.port.done_reading():
                records = self.port.read(500, 0.5)
                now = self.clock()
                if records:
                    last_read = now
                elif now - last_read > self.timeout_s:
                    error = self.port.last_error()
                    tally.first_failure = f"reading {self.dlq_topic} stalled for {self.timeout_s:.0f} s" + (
                        f" ({error})" if error else "")
                    return EXIT_UNFINISHED
                for letter in records:
                    tally.read += 1
                    bar.update(1)
                    view = read_dead_letter(letter.headers)
                    cause = judge(letter, view, self.selection)
                    if cause is not None:
                        tally.skipped[cause] += 1
                        continue
                    if not self.dry_run:
                        self._produce(letter, view, partitions)
                    tally.selected[(view.reason, view.source_partition)] += 1
                    if len(tally.samples) < self.samples:
                        tally.samples.append((letter, view))
                    if self.selection.limit is not None and tally.replayed >= self.selection.limit:
                        tally.stopped_at_limit = True
                        return EXIT_CLEAN
                if not self.dry_run:
                    self._take_reports(tally)
                    if tally.failed:
                        return EXIT_UNFINISHED  # stop producing; what was delivered is reported
                bar.set_postfix(replayed=tally.replayed, skipped=sum(tally.skipped.values()), refresh=False)
            bar.total = bar.n  # the end offsets counted transaction markers too; every record is read
        return EXIT_CLEAN

    def _produce(self, letter: InputRecord, view: DeadLetterView, partitions: int) -> None:
        key, value, headers = original(letter, view)
        partition = destination_partition(view, self.to_topic, partitions)
        deadline = self.clock() + self.timeout_s
        while True:
            try:
                self.port.produce(self.to_topic, partition, key, value, headers, (letter.partition, letter.offset))
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                if self.clock() > deadline:
                    full = ClientError("_QUEUE_FULL", f"the producer's queue stayed full for {self.timeout_s:.0f} s",
                                       ErrorKind.TIMED_OUT)
                    raise KafkaCallError("produce", full) from None
                self.port.serve(0.1)

    def _take_reports(self, tally: Tally) -> None:
        self.port.serve(0)
        for (partition, offset), error in self.port.take_reports():
            if error is None:
                tally.delivered += 1
            else:
                tally.failed += 1
                if tally.first_failure is None:
                    tally.first_failure = f"dead letter {partition}@{offset}: {error}"

    def _finish_deliveries(self, tally: Tally) -> int:
        """Wait for every delivery report; give up after ``timeout_s`` without one."""
        last_change, last_left = self.clock(), -1
        while True:
            left = self.port.flush(1.0)
            self._take_reports(tally)
            if left == 0:
                break
            if left != last_left:
                last_change, last_left = self.clock(), left
            elif self.clock() - last_change > self.timeout_s:
                error = self.port.last_error()
                tally.first_failure = tally.first_failure or (
                    f"{left} records not delivered within {self.timeout_s:.0f} s" + (f" ({error})" if error else ""))
                break
        undelivered = tally.replayed - tally.delivered
        return EXIT_UNFINISHED if undelivered or tally.failed or tally.first_failure else EXIT_CLEAN

