"""Where things are: the checkout, its test data and broker script, and the optional ``../shared`` beside it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
TOKENIZER_DIR = DATA / "koelectra-v3-tokenizer"
NSMC_SAMPLE = DATA / "nsmc_sample.tsv"
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
REGISTRY_SH = REPO / "deploy" / "schema-registry" / "registry.sh"
# Beside the checkout on machines that have them: a trained stand-in model and the full NSMC test set.
STAND_IN = REPO.parent / "shared" / "models" / "koelectra-small-v3-nsmc-scratch"
NSMC_TEST = REPO.parent / "shared" / "data" / "ratings_test.txt"
