"""WORKER_ENGINE=auto's rules with fake engines and a fake clock: which candidate wins, and the agreement check."""

from __future__ import annotations

import math

import pytest

from worker.engines.selection import (
    GIVE_UP,
    SMALL_REPEATS,
    LARGE_WINDOW,
    REFERENCE,
    SMALL_WINDOW,
    SMALL_WINDOWS,
    Agreement,
    Candidate,
    Measurement,
    SelectionReport,
    check_agreement,
    choose,
    measure,
)
from worker.engines.base import Encoding

ORT_INT8 = Candidate("onnxruntime", "int8")
OV_BF16 = Candidate("openvino", "bfloat16")
TORCH_BF16 = Candidate("torch", "bfloat16")


def rows(labels: list[int]) -> list[list[float]]:
    return [[0.9, 0.1] if label == 0 else [0.2, 0.8] for label in labels]


# --------------------------------------------------------------------------- agreement
def test_identical_predictions_agree():
    a = check_agreement(rows([0, 1] * 500), rows([0, 1] * 500), [0, 1] * 500, positive_index=1)
    assert (a.same_label, a.accuracy_change, a.passed) == (1.0, 0.0, True)


def test_same_label_threshold_is_99_5_percent():
    reference = [0] * 1000
    five = reference[:]
    for i in range(5):
        five[i] = 1
    six = five[:]
    six[5] = 1
    # Labels only (a model that is not positive/negative): the label criterion alone.
    assert check_agreement(rows(reference), rows(five)).passed
    assert check_agreement(rows(reference), rows(five)).same_label == 0.995
    failed = check_agreement(rows(reference), rows(six))
    assert not failed.passed and "99.40%" in failed.reason()


def test_accuracy_may_move_at_most_0_3_points_either_way():
    truths = [0] * 1000
    reference = [0] * 1000  # 100 % accurate
    three_wrong = [1, 1, 1] + [0] * 997
    four_wrong = [1, 1, 1, 1] + [0] * 996
    assert check_agreement(rows(reference), rows(three_wrong), truths, 1).passed
    four = check_agreement(rows(reference), rows(four_wrong), truths, 1)
    assert four.same_label == 0.996  # passes the label criterion...
    assert not four.passed and "-0.40 pt" in four.reason()  # ...but not the accuracy one
    # Better by more than 0.3 points is a different model too.
    better = check_agreement(rows(four_wrong), rows(reference), truths, 1)
    assert not better.passed and "+0.40 pt" in better.reason()


def test_flips_that_cancel_out_keep_accuracy_but_count_against_the_label_share():
    truths = [0] * 500 + [1] * 500
    reference = truths[:]
    for i in range(4):
        reference[i] = 1  # the reference gets texts 0-3 wrong
    candidate = truths[:]
    for i in range(4):
        candidate[500 + i] = 0  # the candidate gets those right and texts 500-503 wrong
    a = check_agreement(rows(reference), rows(candidate), truths, 1)
    assert a.accuracy_change == 0.0
    assert a.same_label == pytest.approx(0.992)
    assert not a.passed


def test_positive_index_decides_which_class_is_label_one():
    truths = [1, 0]
    probs = [[0.9, 0.1], [0.1, 0.9]]  # class 0 wins for text 0
    assert check_agreement(probs, probs, truths, positive_index=0).accuracy == 1.0
    assert check_agreement(probs, probs, truths, positive_index=1).accuracy == 0.0


def test_agreement_needs_the_same_texts():
    with pytest.raises(ValueError):
        check_agreement(rows([0, 1]), rows([0]))


# --------------------------------------------------------------------------- choice
def measured(candidate, small, large, same_label=1.0, accuracy_change=0.0, eligible=True, error=None):
    agreement = None if candidate == REFERENCE else Agreement(1000, same_label, 0.85, 0.85 + accuracy_change)
    return Measurement(candidate, eligible, small, large, agreement, error)


def test_fastest_agreeing_candidate_wins():
    chosen = choose([
        measured(REFERENCE, 100, 270),
        measured(ORT_INT8, 250, 610),
        measured(OV_BF16, 160, 660),
    ])
    # cost = 1/small + 1/large: 0.0056 (ORT int8) < 0.0078 (OV bf16) < 0.0137 (reference)
    assert chosen.candidate == ORT_INT8


def test_cost_weighs_small_and_full_windows():
    # Faster in full windows but much slower in small ones: loses.
    chosen = choose([measured(REFERENCE, 50, 100), measured(ORT_INT8, 250, 600), measured(OV_BF16, 120, 700)])
    assert chosen.candidate == ORT_INT8
    assert measured(OV_BF16, 120, 700).cost == pytest.approx(1 / 120 + 1 / 700)


def test_a_faster_candidate_that_disagrees_is_not_chosen():
    chosen = choose([
        measured(REFERENCE, 100, 270),
        measured(ORT_INT8, 250, 610, same_label=0.99),
        measured(OV_BF16, 160, 660, accuracy_change=-0.004),
        measured(TORCH_BF16, 120, 400),
    ])
    assert chosen.candidate == TORCH_BF16


def test_reference_wins_when_nothing_else_agrees_or_runs():
    chosen = choose([
        measured(REFERENCE, 100, 270),
        measured(ORT_INT8, 250, 610, same_label=0.9),
        measured(OV_BF16, None, None, error="RuntimeError: no"),
    ])
    assert chosen.candidate == REFERENCE


def test_ties_go_to_the_reference():
    assert choose([measured(ORT_INT8, 100, 100), measured(REFERENCE, 100, 100)]).candidate == REFERENCE


def test_reference_that_was_not_asked_for_is_never_chosen():
    # WORKER_DTYPE=int8: the float32 reference is measured for the check, but is no choice.
    chosen = choose([
        measured(REFERENCE, 500, 900, eligible=False),
        measured(ORT_INT8, 250, 610),
        measured(Candidate("openvino", "int8"), 200, 680),
    ])
    assert chosen.candidate == ORT_INT8


def test_when_no_requested_candidate_agrees_the_fastest_requested_one_runs():
    chosen = choose([
        measured(REFERENCE, 100, 270, eligible=False),
        measured(ORT_INT8, 250, 610, same_label=0.9),
        measured(Candidate("openvino", "int8"), 200, 680, same_label=0.95),
    ])
    assert chosen.candidate == ORT_INT8


def test_no_runnable_candidate_is_an_error():
    with pytest.raises(RuntimeError, match="no engine candidate"):
        choose([measured(REFERENCE, None, None, error="boom")])


# --------------------------------------------------------------------------- measuring with a fake clock
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeEngine:
    """Costs `per_call` + `per_text` fake seconds per forward pass; label = text number's parity, flipped for `flips`."""

    labels = ["negative", "positive"]
    info: dict[str, str] = {}

    def __init__(self, clock: FakeClock, per_text: float, per_call: float = 0.0, flips: frozenset[int] = frozenset()):
        self.clock, self.per_text, self.per_call, self.flips = clock, per_text, per_call, flips
        self.texts_seen = 0

    def encode(self, texts):
        raise AssertionError("measure() works on encodings")

    def predict(self, batch):
        self.clock.now += self.per_call + self.per_text * len(batch)
        self.texts_seen += len(batch)
        out = []
        for ids in batch:
            label = ids[1] % 2
            if ids[1] in self.flips:
                label = 1 - label
            out.append([0.2, 0.8] if label else [0.8, 0.2])
        return out

    def warm_up(self):
        pass


TEXTS = 1000
ENCODINGS = [Encoding([2, n, 3], False) for n in range(TEXTS)]
TRUTHS = [n % 2 for n in range(TEXTS)]


def run_measure(engines: dict, clock: FakeClock, eligible=lambda c: True, released: list | None = None):
    def build(candidate):
        engine = engines[candidate]
        if isinstance(engine, Exception):
            raise engine
        return engine

    return {m.candidate: m for m in measure(
        build, list(engines), ENCODINGS, TRUTHS, 1, sub_batch_max_tokens=4096, eligible=eligible, clock=clock,
        release=(lambda: released.append(1)) if released is not None else (lambda: None),
    )}


def test_measure_times_small_and_full_windows_and_checks_each_against_the_reference():
    clock = FakeClock()
    engines = {
        REFERENCE: FakeEngine(clock, per_text=0.004, per_call=0.010),
        ORT_INT8: FakeEngine(clock, per_text=0.001, per_call=0.002),
        OV_BF16: FakeEngine(clock, per_text=0.0005, per_call=0.001, flips=frozenset(range(0, 60, 2))),
    }
    released: list[int] = []
    result = run_measure(engines, clock, released=released)
    # windows of SMALL_WINDOW texts: one call each (sub-batch budget 4096 tokens holds them)
    w = SMALL_WINDOW
    assert result[REFERENCE].small_per_s == pytest.approx(w / (0.010 + w * 0.004), rel=1e-3)
    assert result[ORT_INT8].small_per_s == pytest.approx(w / (0.002 + w * 0.001), rel=1e-3)
    # full windows of LARGE_WINDOW texts: one call each
    assert result[ORT_INT8].large_per_s == pytest.approx(LARGE_WINDOW / (0.002 + LARGE_WINDOW * 0.001), rel=1e-3)
    assert result[ORT_INT8].agreement.passed and result[ORT_INT8].agreement.same_label == 1.0
    assert result[OV_BF16].agreement.same_label == pytest.approx(0.97)
    assert not result[OV_BF16].agreement.passed
    assert choose(list(result.values())).candidate == ORT_INT8
    assert len(released) == 3  # each engine released before the next is built
    # the small windows ran SMALL_REPEATS times, then every text once in full windows
    assert engines[ORT_INT8].texts_seen == SMALL_REPEATS * SMALL_WINDOW * SMALL_WINDOWS + TEXTS


def test_measure_stops_a_candidate_that_cannot_beat_the_reference():
    clock = FakeClock()
    slow = FakeEngine(clock, per_text=0.004 * GIVE_UP * 2)
    result = run_measure({REFERENCE: FakeEngine(clock, per_text=0.004), TORCH_BF16: slow}, clock)
    assert "stopped after 250 texts" in result[TORCH_BF16].status()
    assert slow.texts_seen < SMALL_REPEATS * SMALL_WINDOW * SMALL_WINDOWS + TEXTS
    assert result[TORCH_BF16].agreement is None and not result[TORCH_BF16].qualifies
    assert choose(list(result.values())).candidate == REFERENCE


def test_slow_candidates_are_not_stopped_when_the_reference_is_no_choice():
    clock = FakeClock()
    slow = FakeEngine(clock, per_text=0.05)
    result = run_measure({REFERENCE: FakeEngine(clock, per_text=0.004), ORT_INT8: slow}, clock,
                         eligible=lambda c: c != REFERENCE)
    assert result[ORT_INT8].agreement is not None and result[ORT_INT8].agreement.passed
    assert choose(list(result.values())).candidate == ORT_INT8


def test_a_candidate_that_fails_is_reported_and_the_others_still_run():
    clock = FakeClock()
    broken = FakeEngine(clock, per_text=0.001)
    broken.predict = lambda batch: (_ for _ in ()).throw(RuntimeError("kernel not supported"))
    result = run_measure({
        REFERENCE: FakeEngine(clock, per_text=0.004),
        ORT_INT8: RuntimeError("export failed"),
        OV_BF16: broken,
        TORCH_BF16: FakeEngine(clock, per_text=0.002),
    }, clock)
    assert result[ORT_INT8].error == "RuntimeError: export failed"
    assert "kernel not supported" in result[OV_BF16].status()
    assert math.isinf(result[OV_BF16].cost)
    assert choose(list(result.values())).candidate == TORCH_BF16


def test_a_reference_that_fails_stops_the_start():
    clock = FakeClock()
    with pytest.raises(OSError):
        run_measure({REFERENCE: OSError("no weights"), ORT_INT8: FakeEngine(clock, per_text=0.001)}, clock)


# --------------------------------------------------------------------------- the report
def test_report_round_trips_through_json_and_names_the_choice():
    report = SelectionReport(ORT_INT8, [
        measured(REFERENCE, 100.0, 270.0),
        measured(ORT_INT8, 250.0, 610.0),
        measured(OV_BF16, 160.0, 660.0, same_label=0.99),
        measured(TORCH_BF16, None, None, error="boom"),
    ], "measured")
    again = SelectionReport.from_json(report.to_json())
    assert again.origin == "cached" and again.chosen == ORT_INT8
    assert [m.candidate for m in again.measurements] == [m.candidate for m in report.measurements]
    assert again.measurements[2].agreement == report.measurements[2].agreement
    table = again.table()
    assert "| onnxruntime/int8 **chosen** | 250.0 | 610.0 | 100.00% | +0.00 | agrees |" in table
    assert "same label on 99.00% < 99.5%" in table
    assert "failed: boom" in table
