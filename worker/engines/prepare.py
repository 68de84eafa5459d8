"""``python -m worker.engines.prepare``: fill the engine cache for the model settings given as JSON on stdin.

Run by :func:`worker.engines.loading.load_classifier` in a child process, so that exporting, quantizing and
measuring (which import torch and load every candidate) leave nothing behind in the worker. Exit
status 0 when the cache now holds what the worker needs.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    from worker.engines.loading import load_classifier
    from worker.logs import configure_logging
    from worker.settings import load_settings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = load_settings(**json.loads(sys.stdin.read()))
    configure_logging(settings.log_format, settings.log_level)
    load_classifier(settings, prepare_in_child=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
