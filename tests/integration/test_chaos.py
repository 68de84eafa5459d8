"""Issue 18: the short chaos run (benchmarks/chaos.py, `make chaos` for the long one). A 3-node KRaft
cluster, three workers in one group, a few thousand keyed reviews and a handful of random faults per mode
(workers SIGKILLed, SIGTERMed, joining; broker nodes SIGKILLed or SIGSTOPped, the leader included); each
mode's guarantee is checked from the topics. The seed is printed: a failure repeats with
`python -m benchmarks.chaos --seed N --records 2000 --faults 4 --rate 50`."""

from __future__ import annotations

import random

import pytest

from benchmarks.chaos import run, summary
from harness.broker import broker_port

pytestmark = pytest.mark.integration

RECORDS, FAULTS, RATE = 2000, 4, 50


def test_chaos_both_modes_keep_their_guarantees(tmp_path, fault_report):
    seed = random.SystemRandom().randrange(2**31)
    print(f"chaos seed {seed}")
    report = run(seed, RECORDS, FAULTS, ["at_least_once", "exactly_once"], broker_port(60), tmp_path, RATE)
    text = summary(report)
    print(text)
    for m in report["modes"]:
        fault_report(f"chaos {m['mode']} (seed {seed})", inputs=RECORDS, faults=len(m["faults"]),
                     results=m["results"], dead_letters=m["dead_letters"], missing=m["missing"],
                     duplicates=m["duplicates"], restarts=m["restarts"])
    alo, eos = report["modes"]
    assert len(alo["faults"]) == len(eos["faults"]) == FAULTS, text
    assert alo["missing"] == 0 and alo["skips_ahead"] == 0, text
    assert eos["missing"] == 0 and eos["duplicates"] == 0, text
    unexplained = [e for m in report["modes"] for e in m["exits"] if not e["explained"]]
    assert not unexplained, text
    assert not alo["problems"] and not eos["problems"], text
