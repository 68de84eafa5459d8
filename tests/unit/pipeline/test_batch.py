import random

import pytest

from worker.engines.base import padding_efficiency, plan_sub_batches
from worker.pipeline.batch import Batcher


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_closes_on_message_count():
    b = Batcher(max_messages=3, max_tokens=1000, max_wait_s=10, clock=FakeClock())
    for i in range(2):
        b.add(i, 5)
        assert not b.is_due()
    b.add(2, 5)
    assert b.is_due() and b.is_full()
    window = b.take()
    assert window.items == [0, 1, 2] and window.messages == 3 and window.tokens == 15
    assert len(b) == 0 and not b.is_due()


def test_closes_on_token_budget():
    b = Batcher(max_messages=100, max_tokens=50, max_wait_s=10, clock=FakeClock())
    b.add("a", 30)
    assert not b.is_due()
    assert b.would_overflow(30)
    assert not b.would_overflow(20)
    b.add("b", 20)
    assert b.is_due()


def test_closes_on_wait_from_first_message():
    clock = FakeClock()
    b = Batcher(max_messages=100, max_tokens=1000, max_wait_s=0.05, clock=clock)
    assert b.time_left() == float("inf")
    b.add("a", 1)
    clock.now += 0.03
    b.add("b", 1)
    assert not b.is_due() and b.time_left() == pytest.approx(0.02)
    clock.now += 0.02
    assert b.is_due()
    window = b.take()
    assert window.closed_at - window.opened_at == pytest.approx(0.05)


def test_rejections_ride_along_without_counting():
    b = Batcher(max_messages=2, max_tokens=1000, max_wait_s=10, clock=FakeClock())
    b.add("bad", None)
    b.add("bad2", None)
    assert not b.is_full()
    b.add("good", 3)
    window = b.take()
    assert window.items == ["bad", "bad2", "good"] and window.messages == 1 and window.tokens == 3


def test_invalid_limits():
    with pytest.raises(ValueError):
        Batcher(0, 10, 1)


def test_plan_sorts_by_length_and_respects_budget():
    lengths = [10, 3, 50, 7, 3, 12, 49]
    plan = plan_sub_batches(lengths, max_padded_tokens=60)
    flat = [i for group in plan for i in group]
    assert sorted(flat) == list(range(len(lengths)))  # every text exactly once
    assert [lengths[i] for i in flat] == sorted(lengths)  # length-sorted
    for group in plan:
        assert len(group) * max(lengths[i] for i in group) <= 60


def test_plan_gives_overlong_text_its_own_pass():
    plan = plan_sub_batches([5, 500, 6], max_padded_tokens=100)
    assert [1] in plan


def test_plan_max_rows():
    plan = plan_sub_batches([4] * 10, max_padded_tokens=1000, max_rows=4)
    assert len(plan) == 3 and all(len(g) <= 4 for g in plan) and sum(map(len, plan)) == 10


def greedy_plan(lengths, budget):
    """The earlier plan: fill each pass to the budget in sorted order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    plan, current = [], []
    for index in order:
        if current and (len(current) + 1) * lengths[index] > budget:
            plan.append(current)
            current = []
        current.append(index)
    return plan + ([current] if current else [])


def plan_cost(lengths, plan, call_cost):
    return sum(call_cost + len(g) * max(lengths[i] for i in g) for g in plan)


@pytest.mark.parametrize("size", [1, 2, 5, 20, 90, 500])
def test_plan_costs_no_more_than_filling_each_pass(size):
    """The cut minimises padded tokens plus a fixed cost per pass: never worse than the greedy fill, and at the
    window sizes of a steady stream (tens of texts with a long tail) it pads markedly less."""
    rng = random.Random(size)
    for _ in range(20):
        lengths = [max(3, min(512, int(rng.lognormvariate(3.1, 0.55)))) for _ in range(size)]
        plan = plan_sub_batches(lengths, 1024, call_cost_tokens=12)
        assert sorted(i for g in plan for i in g) == list(range(size))
        assert all(len(g) * max(lengths[i] for i in g) <= 1024 or len(g) == 1 for g in plan)
        assert plan_cost(lengths, plan, 12) <= plan_cost(lengths, greedy_plan(lengths, 1024), 12)


def test_plan_separates_a_long_tail_instead_of_padding_short_texts_to_it():
    lengths = [10] * 20 + [40]
    plan = plan_sub_batches(lengths, 1024, call_cost_tokens=12)
    assert [lengths[i] for i in plan[-1]] == [40]  # the long one alone: 21 x 40 = 840 padded tokens otherwise
    real, padded = padding_efficiency(lengths, plan)
    assert padded == 240


def test_sorting_gives_high_padding_efficiency_on_skewed_lengths():
    rng = random.Random(0)
    lengths = [max(3, int(rng.lognormvariate(3, 0.6))) for _ in range(1000)]
    real, padded = padding_efficiency(lengths, plan_sub_batches(lengths, 2048))
    arrival_real, arrival_padded = padding_efficiency(lengths, [list(range(i, min(i + 32, 1000))) for i in range(0, 1000, 32)])
    assert real / padded > 0.9 > arrival_real / arrival_padded
