"""librdkafka errors → :class:`~worker.policy.ClientError`, classified by what the worker must do.

This module sorts librdkafka's codes into :class:`~worker.policy.ErrorKind`; what each kind means
for a record, a transaction and the worker is :mod:`worker.policy`'s.

The classes follow librdkafka's INTRODUCTION.md: "Error: Permanent errors" lists the errors that
fail a delivery for good, "Transactional Producer / Error handling" the retriable, abortable and
fatal flags of transactional calls, and "Fatal errors" the unrecoverable ones.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

from worker.policy import ClientError, ErrorKind


def _codes(*names: str) -> frozenset[int]:
    return frozenset(getattr(KafkaError, n) for n in names if hasattr(KafkaError, n))


PURGED = _codes("_PURGE_QUEUE", "_PURGE_INFLIGHT")
TIMED_OUT = _codes("_MSG_TIMED_OUT", "_TIMED_OUT", "_TIMED_OUT_QUEUE")
# This one record can never be written, whatever happens to the cluster.
RECORD = _codes(
    "MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_RECORD", "INVALID_MSG", "INVALID_MSG_SIZE",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT", "_INVALID_ARG", "_BAD_MSG", "_KEY_SERIALIZATION", "_VALUE_SERIALIZATION",
    "INVALID_TIMESTAMP",
)
# Nobody can write this topic: every record for it would fail the same way.
DESTINATION = _codes(
    "UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "TOPIC_EXCEPTION", "POLICY_VIOLATION",
    "INVALID_REQUIRED_ACKS", "TOPIC_DELETION_DISABLED", "INVALID_REPLICATION_FACTOR",
)
ACCESS = _codes(
    "_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED",
    "CLUSTER_AUTHORIZATION_FAILED", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "UNSUPPORTED_SASL_MECHANISM",
    "ILLEGAL_SASL_STATE", "DELEGATION_TOKEN_AUTHORIZATION_FAILED", "_SSL",
)
# Another producer with this transactional id took over (ClientError.fenced; the policy's "fenced").
FENCED = _codes("_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "TRANSACTIONAL_ID_NOT_FOUND")
# Errors that librdkafka keeps retrying by itself; they say the cluster is unreachable for now.
CONNECTIVITY = _codes("_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE")


def classify(error: Any) -> ClientError:
    """A confluent-kafka ``KafkaError`` as a :class:`ClientError`."""
    code = error.code()
    fatal = bool(error.fatal())
    retriable = bool(error.retriable())
    abortable = bool(error.txn_requires_abort())
    fenced = code in FENCED
    if fatal or fenced:
        kind = ErrorKind.FATAL
    elif code in ACCESS:
        kind = ErrorKind.ACCESS
    elif code in PURGED:
        kind = ErrorKind.PURGED
    elif code in TIMED_OUT:
        kind = ErrorKind.TIMED_OUT
    elif code in RECORD:
        kind = ErrorKind.RECORD
    elif code in DESTINATION:
        kind = ErrorKind.DESTINATION
    elif retriable or code in CONNECTIVITY:
        kind = ErrorKind.RETRIABLE
    else:
        kind = ErrorKind.OTHER
    return ClientError(
        code=error.name() or str(code),
        message=error.str(),
        kind=kind,
        retriable=retriable,
        fatal=fatal or fenced,
        txn_requires_abort=abortable,
        fenced=fenced,
    )


def from_exception(exc: BaseException) -> ClientError:
    """The :class:`ClientError` inside a ``KafkaException`` (or a generic one for anything else)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return classify(exc.args[0])
    return ClientError(code=type(exc).__name__, message=str(exc), kind=ErrorKind.OTHER)
