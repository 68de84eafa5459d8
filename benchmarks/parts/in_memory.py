"""Part 3: ``WORKER_ENGINE=auto`` (what it measured and chose), then the worker's batching and that classifier
over the same texts in memory, windows closed at the worker's limits (no Kafka)."""

from __future__ import annotations

import time
from typing import Any


def bench_in_memory(settings: Any, texts: list[str]) -> dict[str, Any]:
    import torch

    from worker.engines.base import classify_encoded, to_prediction
    from worker.engines.loading import load_classifier
    from worker.pipeline.batch import Batcher

    classifier = load_classifier(settings)
    classifier.warm_up()
    info = dict(classifier.info)
    selection = getattr(classifier, "selection", None)
    chunk = 1000  # the loop tokenizes what one poll returns (worker.app.POLL_CHUNK)
    real = padded = windows = 0

    def close(window: list[Any]) -> None:
        nonlocal real, padded, windows
        outcome = classify_encoded(classifier, window, settings.sub_batch_max_tokens)
        for enc, probs in zip(window, outcome.probabilities):
            to_prediction(probs, classifier.labels, enc)
        real += outcome.real_tokens
        padded += outcome.padded_tokens
        windows += 1

    def run(sample: list[str]) -> None:
        # The loop's own batcher and closing rules (worker.app.Worker._accept) under full load:
        # the wait never expires, windows close on messages or tokens.
        batcher: Batcher[Any] = Batcher(settings.batch_max_messages, settings.batch_max_tokens, float("inf"))
        for start in range(0, len(sample), chunk):
            for encoding in classifier.encode(sample[start : start + chunk]):
                if batcher.would_overflow(len(encoding.ids)):
                    close(batcher.take().items)
                batcher.add(encoding, len(encoding.ids))
                if batcher.is_full():
                    close(batcher.take().items)
        if len(batcher):
            close(batcher.take().items)

    run(texts[:1000])  # warm every shape the run will see first
    real = padded = windows = 0
    started = time.perf_counter()
    run(texts)
    elapsed = time.perf_counter() - started
    result = {
        "messages": len(texts),
        "seconds": round(elapsed, 3),
        "messages_per_s": round(len(texts) / elapsed, 1),
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "mean_batch_messages": round(len(texts) / windows, 1) if windows else None,
        "torch_threads": torch.get_num_threads(),
        "model_info": info,
        "selection": selection.to_json() if selection else None,
        "selection_table": selection.table() if selection else None,
    }
    del classifier
    return result
