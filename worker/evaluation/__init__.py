"""``worker eval``: how well the worker's own classifier does on labelled data.

binary.py: a binary (NSMC) model on an NSMC-format TSV (accuracy, the negative class's thresholds, ECE of the
winning score); multilabel.py: a multi-label model on data with a set of categories per text (per category:
thresholds, the one reaching a target precision, ECE); common.py: the arithmetic both use.
"""

from worker.evaluation.binary import (
    DEFAULT_REVIEW_BELOW,
    DEFAULT_THRESHOLDS,
    FINE_THRESHOLDS,
    Scored,
    calibration,
    evaluate,
    format_report,
    score_rows,
    summarize,
    threshold_table,
)
from worker.evaluation.common import lowest_threshold_for

__all__ = [
    "DEFAULT_REVIEW_BELOW",
    "DEFAULT_THRESHOLDS",
    "FINE_THRESHOLDS",
    "Scored",
    "calibration",
    "evaluate",
    "format_report",
    "lowest_threshold_for",
    "score_rows",
    "summarize",
    "threshold_table",
]
