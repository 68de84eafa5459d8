"""The error policy: librdkafka codes → kinds (kafka_io.errors) → what the worker does (worker.policy)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from worker.kafka_io.errors import classify
from worker.policy import (
    Action,
    ClientError,
    ErrorKind,
    fatal_for,
    for_client_error,
    for_delivery_report,
    for_refused_message,
    for_transaction_call,
)


@pytest.mark.parametrize("code", ["_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"])
def test_fenced_codes_end_the_worker_as_fenced(code):
    error = classify(KafkaError(getattr(KafkaError, code)))
    assert error.fenced and error.kind == ErrorKind.FATAL
    assert fatal_for(error, "commit_transaction").reason == "fenced"


def test_each_kind_has_its_fatal_reason():
    def reason(kind, **flags):
        return fatal_for(ClientError("X", "x", kind, **flags), "produce").reason

    assert reason(ErrorKind.ACCESS) == "access_denied"
    assert reason(ErrorKind.DESTINATION) == "destination_unwritable"
    assert reason(ErrorKind.FATAL, fatal=True) == "kafka_fatal"
    assert reason(ErrorKind.FATAL, fatal=True, fenced=True) == "fenced"


def test_what_a_refused_or_reported_message_means():
    def error(kind, **flags):
        return ClientError("X", "x", kind, **flags)

    for kind in (ErrorKind.TIMED_OUT, ErrorKind.RETRIABLE, ErrorKind.PURGED):
        assert for_delivery_report(error(kind)) is Action.PRODUCE_AGAIN
    for kind in (ErrorKind.RECORD, ErrorKind.OTHER):
        assert for_delivery_report(error(kind)) is Action.DEAD_LETTER
        assert for_refused_message(error(kind)) is Action.DEAD_LETTER
    for kind in (ErrorKind.DESTINATION, ErrorKind.ACCESS, ErrorKind.FATAL):
        assert for_delivery_report(error(kind)) is Action.FATAL
    abortable = error(ErrorKind.OTHER, txn_requires_abort=True)
    assert for_refused_message(abortable, transactional=True) is Action.ABORT
    assert for_refused_message(abortable) is Action.DEAD_LETTER
    assert for_refused_message(ClientError("_STATE", "x", ErrorKind.OTHER), transactional=True) is Action.ABORT


def test_what_a_failed_transactional_call_means():
    retriable = ClientError("_TIMED_OUT", "x", ErrorKind.TIMED_OUT, retriable=True)
    abortable = ClientError("INVALID_TXN_STATE", "x", ErrorKind.OTHER, txn_requires_abort=True)
    fatal = ClientError("_FENCED", "x", ErrorKind.FATAL, retriable=True, fatal=True, fenced=True)
    assert for_transaction_call(retriable) is Action.CALL_AGAIN
    assert for_transaction_call(abortable) is Action.ABORT
    assert for_transaction_call(abortable, aborting=True) is Action.FATAL
    assert for_transaction_call(fatal) is Action.FATAL


def test_what_an_error_outside_any_call_means():
    assert for_client_error(ClientError("_AUTHENTICATION", "x", ErrorKind.ACCESS)) is Action.WAIT_FOR_ACCESS
    assert for_client_error(ClientError("_FENCED", "x", ErrorKind.FATAL, fatal=True)) is Action.FATAL
    assert for_client_error(ClientError("_TRANSPORT", "x", ErrorKind.RETRIABLE)) is Action.NOTE
