"""Part 1, the seed's way: a transformers ``pipeline("text-classification")`` called once per message."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def bench_pipeline(model: Path, texts: list[str]) -> dict[str, Any]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model), device=-1)
    for text in texts[:10]:
        classify(text)
    started = time.perf_counter()
    for text in texts:
        classify(text)
    elapsed = time.perf_counter() - started
    return {"messages": len(texts), "seconds": round(elapsed, 3), "messages_per_s": round(len(texts) / elapsed, 1),
            "dtype": str(classify.model.dtype).removeprefix("torch.")}
