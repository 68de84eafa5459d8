#!/usr/bin/env python3
"""One engine and precision in memory, in its own process (so its speed and its RSS are its own).

    python benchmarks/engine_run.py --model DIR --data TSV --engine onnxruntime --dtype int8 \
        [--windows 1,8,32,500] [--memory-texts 100000] [--cache-dir DIR]

Prints one JSON object on stdout:
- ``rates``: texts/s at each window size: texts are tokenized first, then classified in windows of
  that many texts (length-sorted sub-batches of ``WORKER_SUB_BATCH_MAX_TOKENS`` padded tokens, as
  the worker does), after one untimed window of each size;
- ``memory`` (with ``--memory-texts``): RSS while classifying that many texts in windows whose sizes
  vary like real traffic (seeded: half small windows of 1-16 texts, half large ones up to 512), so
  that the engine meets thousands of distinct batch shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the checkout's packages first

from harness.processes import rss_mb  # noqa: E402

TEXTS_PER_WINDOW = {1: 150, 8: 320, 32: 640, 500: 1500}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--engine", required=True)
    parser.add_argument("--dtype", required=True)
    parser.add_argument("--windows", default="1,8,32,500")
    parser.add_argument("--memory-texts", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from worker.engines.base import classify_encoded
    from worker.engines.loading import load_classifier
    from worker.datasets import read_nsmc
    from worker.settings import load_settings

    overrides = {"model": args.model, "engine": args.engine, "dtype": args.dtype, "compile": "off"}
    if args.cache_dir:
        overrides["engine_cache_dir"] = args.cache_dir
    settings = load_settings(**overrides)
    started = time.perf_counter()
    classifier = load_classifier(settings)
    classifier.warm_up()
    result: dict = {"engine": args.engine, "precision": args.dtype, "info": classifier.info,
                    "load_s": round(time.perf_counter() - started, 2), "rss_mb_after_warm_up": rss_mb(), "rates": {}}
    texts = [text for text, _ in read_nsmc(args.data)]
    budget = settings.sub_batch_max_tokens
    for window in (int(w) for w in args.windows.split(",")):
        count = min(TEXTS_PER_WINDOW.get(window, 10 * window), len(texts))
        encodings = classifier.encode(texts[:count])
        classify_encoded(classifier, classifier.encode(texts[-window:]), budget)  # untimed: this window size once
        begun = time.perf_counter()
        for start in range(0, count, window):
            classify_encoded(classifier, encodings[start : start + window], budget)
        result["rates"][str(window)] = round(count / (time.perf_counter() - begun), 1)
        print(f"[engine_run] {args.engine}/{args.dtype} window {window}: {result['rates'][str(window)]} texts/s",
              file=sys.stderr, flush=True)

    if args.memory_texts:
        rng = random.Random(11)
        samples = [(0, rss_mb())]
        done, position, every = 0, 0, max(1, args.memory_texts // 20)
        next_sample = every
        begun = time.perf_counter()
        while done < args.memory_texts:
            size = rng.randint(1, 16) if rng.random() < 0.5 else rng.randint(17, 512)
            size = min(size, args.memory_texts - done)
            window = [texts[(position + i) % len(texts)] for i in range(size)]
            position += size
            classify_encoded(classifier, classifier.encode(window), budget)
            done += size
            if done >= next_sample:
                samples.append((done, rss_mb()))
                next_sample += every
                print(f"[engine_run] {args.engine}/{args.dtype} memory: {done} texts, RSS {samples[-1][1]} MB",
                      file=sys.stderr, flush=True)
        result["memory"] = {"texts": done, "seconds": round(time.perf_counter() - begun, 1), "rss_mb": samples}
    result["rss_mb_end"] = rss_mb()
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
