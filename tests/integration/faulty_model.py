"""Fault injection for the broken-model tests: ``python -m tests.integration.faulty_model MODE`` is
``worker run`` whose classifier starts failing right after its warm-up (the start-up checks pass).

MODE ``always``: every prediction raises, as when a device is lost or memory runs out after start-up.
MODE ``poison``: a prediction raises only when its batch holds the text in ``$FAULTY_MODEL_POISON``,
as with one input that trips a bug in the model.
MODE ``shadow``: the primary is sound; the shadow model (WORKER_SHADOW_MODEL) fails for every input.

The fault lives here, in the test harness; the worker's code has no hook for it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import worker.cli


def break_after_warm_up(classifier: Any, mode: str, poison: str) -> Any:
    warm_up = classifier.warm_up

    def warm_up_then_break() -> None:
        warm_up()
        predict = classifier.predict
        if mode == "always":

            def broken(batch: Sequence[Sequence[int]]) -> list[list[float]]:
                raise RuntimeError("injected fault: the model fails for every input (device lost)")

        else:
            poison_ids = list(classifier.encode([poison])[0].ids)

            def broken(batch: Sequence[Sequence[int]]) -> list[list[float]]:
                if any(list(ids) == poison_ids for ids in batch):
                    raise RuntimeError("injected fault: the poison text")
                return predict(batch)

        classifier.predict = broken

    classifier.warm_up = warm_up_then_break
    return classifier


def main(argv: Sequence[str]) -> int:
    (mode,) = argv
    if mode not in ("always", "poison", "shadow"):
        raise SystemExit(f"usage: python -m tests.integration.faulty_model always|poison|shadow (not {mode!r})")
    poison = os.environ.get("FAULTY_MODEL_POISON", "")
    if mode == "poison" and not poison:
        raise SystemExit("poison mode needs $FAULTY_MODEL_POISON")
    if mode == "shadow":
        load_shadow = worker.cli.load_shadow_classifier
        worker.cli.load_shadow_classifier = lambda settings: break_after_warm_up(load_shadow(settings), "always", "")
        return worker.cli.main(["run"])
    load = worker.cli.load_classifier
    worker.cli.load_classifier = lambda settings: break_after_warm_up(load(settings), mode, poison)
    return worker.cli.main(["run"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
