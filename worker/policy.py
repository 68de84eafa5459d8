"""The error policy: what each kind of Kafka error means for a record, a transaction and the worker.

Every error leaves :mod:`worker.kafka_io` as a ``ClientError`` whose :class:`ErrorKind` says what the
worker must do about it (librdkafka's INTRODUCTION.md, "Error: Permanent errors" and "Transactional
Producer / Error handling"); this module turns a kind into an :class:`Action`, and every decision
site asks it:

================  =====================================================================================
kind              what it means
================  =====================================================================================
RETRIABLE         a delivery report: produce again (replay); a transactional call: call it again
TIMED_OUT         a delivery report: produce again (replay from the first unfinished record, in order)
PURGED            a delivery report of an abandoned attempt: produce again (it is being redone anyway)
RECORD            this one record can never be written: replace it by its dead letter
OTHER             neither retriable, abortable nor fatal: treated as RECORD for a delivery
DESTINATION       nobody can write the topic: fatal ``destination_unwritable``
ACCESS            credentials or permissions refused: not ready at once, fatal ``access_denied`` if it
                  lasts (``WORKER_ACCESS_FAILURE_TIMEOUT_S``), fatal at once for a delivery
FATAL             the client is unusable: fatal ``fenced`` (``ClientError.fenced``) or ``kafka_fatal``
================  =====================================================================================

Inside a transaction, an abortable error (``txn_requires_abort``, or producing outside an open
transaction) aborts the transaction and rewinds its input. A dead letter the broker refuses is
replaced by a minimal dead letter; when even that is refused, the topic is the problem: fatal.
A fatal error makes the worker not-ready (``worker_blocked{reason}`` = 1), commit only what was
delivered, and exit with :data:`~worker.errors.EXIT_FATAL`.

No Kafka client here: :mod:`worker.kafka_io` turns librdkafka's errors into :class:`ClientError` and imports
this module, not the other way round.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from worker.errors import EXIT_CLEAN, EXIT_FATAL, EXIT_UNFINISHED, FatalError


class ErrorKind(str, enum.Enum):
    """What an error means for the worker, whichever call or report it came from."""

    RETRIABLE = "retriable"  # temporary: librdkafka retries, or the call may simply be made again
    TIMED_OUT = "timed_out"  # a delivery gave up (message.timeout.ms): later records may be written first
    PURGED = "purged"  # purged by an abort or a purge: belongs to an attempt that was abandoned
    RECORD = "record"  # this one record can never be written (too large, invalid): dead-letter it
    DESTINATION = "destination"  # nobody can write this topic (missing with auto-create off, ...)
    ACCESS = "access"  # credentials or permissions refused
    FATAL = "fatal"  # the client instance is unusable (fenced, idempotence broken): restart
    OTHER = "other"  # neither retriable, abortable nor fatal: librdkafka says treat as fatal


@dataclass(frozen=True)
class ClientError:
    """One librdkafka error, detached from the client."""

    code: str  # librdkafka's name, e.g. "_MSG_TIMED_OUT", "TOPIC_AUTHORIZATION_FAILED"
    message: str
    kind: ErrorKind
    retriable: bool = False
    fatal: bool = False
    txn_requires_abort: bool = False
    fenced: bool = False  # another producer with this transactional id took over

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Action(enum.Enum):
    """What the worker does about one error."""

    PRODUCE_AGAIN = "produce_again"  # the record is redone: replay from the first unfinished record
    DEAD_LETTER = "dead_letter"  # the refused message is replaced by a dead letter
    ABORT = "abort"  # the open transaction is aborted and its input read again
    CALL_AGAIN = "call_again"  # the same call is made again (after a backoff)
    WAIT_FOR_ACCESS = "wait_for_access"  # not ready now; fatal if the cluster keeps refusing
    NOTE = "note"  # logged and counted; librdkafka deals with it
    FATAL = "fatal"  # the worker ends (fatal_for says why)


# Delivery failures that say nothing about the record itself: it is produced again, never dead-lettered.
REDO_KINDS = frozenset({ErrorKind.TIMED_OUT, ErrorKind.RETRIABLE, ErrorKind.PURGED})
# Refusals of one record (and librdkafka's "other" errors): the record's dead letter takes its place.
DEAD_LETTER_KINDS = frozenset({ErrorKind.RECORD, ErrorKind.OTHER})

# The label values of the worker_blocked gauge and the /readyz reasons (registry_unreachable: waiting, not fatal
# unless the worker is stopped while waiting at start).
FATAL_REASONS = (
    "access_denied", "destination_unwritable", "model_broken", "model_stuck", "stuck_call", "fenced", "kafka_fatal",
    "group_stuck", "internal_error", "registry_unreachable",
)
# Access failures of the credentials (not of permissions): a broker answering proves they are over.
AUTHENTICATION_CODES = frozenset({"_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "ILLEGAL_SASL_STATE", "_SSL"})
# A client that is fenced or otherwise dead cannot abort its transaction on the way out.
DEAD_PRODUCER_REASONS = frozenset({"fenced", "kafka_fatal"})


def for_delivery_report(error: ClientError) -> Action:
    """A message's delivery report carried ``error``."""
    if error.kind in REDO_KINDS:
        return Action.PRODUCE_AGAIN
    return for_refused_message(error)


def for_refused_message(error: ClientError, *, transactional: bool = False) -> Action:
    """The broker (or the client, at produce) refused a message for good."""
    if transactional and (error.txn_requires_abort or error.code == "_STATE"):
        return Action.ABORT  # _STATE: produced outside an open transaction
    return Action.DEAD_LETTER if error.kind in DEAD_LETTER_KINDS else Action.FATAL


def for_transaction_call(error: ClientError, *, aborting: bool = False) -> Action:
    """send_offsets_to_transaction, commit_transaction or (``aborting``) abort_transaction failed.

    Commit and abort are resumable: calling them again continues the same commit or abort.
    """
    if error.txn_requires_abort and not aborting:
        return Action.ABORT
    if error.retriable and error.kind != ErrorKind.FATAL:
        return Action.CALL_AGAIN
    return Action.FATAL


def for_client_error(error: ClientError) -> Action:
    """An error the client reports outside any call (error_cb, or a consumed error)."""
    if error.kind == ErrorKind.ACCESS:
        return Action.WAIT_FOR_ACCESS
    if error.kind == ErrorKind.FATAL:
        return Action.FATAL
    return Action.NOTE


def fatal_for(error: ClientError, what: str) -> FatalError:
    """The fatal error for a client error that stops the worker; ``what`` names the call or the topic."""
    if error.kind == ErrorKind.ACCESS:
        return FatalError("access_denied", f"{what}: {error}")
    if error.kind == ErrorKind.DESTINATION:
        return FatalError("destination_unwritable", f"{what}: {error}")
    if error.fenced:
        return FatalError("fenced", f"{what}: another producer with this transactional id took over ({error})")
    return FatalError("kafka_fatal", f"{what}: {error}")


def no_dead_letter_fits(topic: str, error: ClientError) -> FatalError:
    """Even a minimal dead letter (no key, no value) was refused: the topic, not the record, is the problem."""
    return FatalError("destination_unwritable", f"not even a minimal dead letter can be written to {topic}: {error}")


def exit_code_for(fatal: FatalError | None, clean: bool) -> int:
    """The process's exit code once the loop has stopped (docs/delivery-guarantees.md, the exit-code table)."""
    if fatal is not None:
        return EXIT_FATAL
    return EXIT_CLEAN if clean else EXIT_UNFINISHED
