"""Random-weight KoELECTRA models on the real v3 vocabulary (tests/data), so nothing needs the network."""

from __future__ import annotations

from pathlib import Path

from harness.paths import TOKENIZER_DIR

# KoELECTRA-Small-v3's shape scaled down: fast enough for every test.
TINY = {"embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64}
# KoELECTRA-Small-v3's full shape: the benchmark's model where the stand-in is absent.
SMALL_V3 = {"embedding_size": 128, "hidden_size": 256, "num_hidden_layers": 12, "num_attention_heads": 4,
            "intermediate_size": 1024}
# The categories of the multi-label test model (a comment can be several at once), as moderation models name them.
MULTI_LABEL_CATEGORIES = {0: "hate", 1: "insult", 2: "spam", 3: "clean"}


def build_model(
    target: Path,
    shape: dict[str, int],
    id2label: dict[int, str] | None = None,
    seed: int = 0,
    initializer_range: float = 0.02,
    multi_label: bool = False,
) -> Path:
    """An ElectraForSequenceClassification of ``shape`` with random weights (seeded) and the repo's tokenizer.

    With the default initialisation every text scores about 0.5; a larger ``initializer_range``
    makes the scores spread over (0, 1) and depend on the words, attention and padding, which is
    what comparing two engines' outputs needs. ``multi_label``: the config says
    ``problem_type: multi_label_classification`` (a sigmoid per category) and the categories default
    to :data:`MULTI_LABEL_CATEGORIES`.
    """
    import shutil

    import torch
    from transformers import ElectraConfig, ElectraForSequenceClassification

    id2label = id2label or (MULTI_LABEL_CATEGORIES if multi_label else {0: "negative", 1: "positive"})
    extra = {"problem_type": "multi_label_classification"} if multi_label else {}
    config = ElectraConfig(
        vocab_size=35000,
        max_position_embeddings=512,
        initializer_range=initializer_range,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        **extra,
        **shape,
    )
    torch.manual_seed(seed)
    model = ElectraForSequenceClassification(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, target / name)
    return target


def build_tiny_model(
    target: Path, id2label: dict[int, str] | None = None, seed: int = 0, initializer_range: float = 0.02,
    multi_label: bool = False,
) -> Path:
    """The tests' model: KoELECTRA-Small-v3's shape, scaled down (:data:`TINY`); ``multi_label``: see :func:`build_model`."""
    return build_model(target, TINY, id2label, seed, initializer_range, multi_label)
