"""PNG charts for ``worker eval --plots DIR`` (matplotlib is an optional dependency, the ``plots`` extra):
binary.py for a binary (NSMC) evaluation, multilabel.py per category of a multi-label one."""

from worker.plots.binary import CHART_FILES, write_eval_plots
from worker.plots.common import pyplot
from worker.plots.multilabel import write_multi_label_plots

__all__ = ["CHART_FILES", "pyplot", "write_eval_plots", "write_multi_label_plots"]
