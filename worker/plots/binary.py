"""PNG charts of a binary (NSMC) ``worker eval --plots DIR``: reliability diagram, precision/recall against
threshold, and the negative score's histogram per true label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.errors import WorkerError
from worker.evaluation.binary import FINE_THRESHOLDS, Scored, threshold_table
from worker.plots.common import DPI, GREY, NEGATIVE, POSITIVE, REVIEW, SIZE, bin_bars, pyplot

CHART_FILES = ("reliability.png", "precision-recall-threshold.png", "score-histogram.png")


def write_eval_plots(scored: Scored, report: dict[str, Any], directory: Path, model_name: str = "") -> list[Path]:
    """Write the three charts into ``directory`` (created if missing) and return their paths."""
    if not report["texts"]:
        raise WorkerError("worker eval --plots: no texts were classified, nothing to chart")
    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    subtitle = f"{model_name}, {report['texts']:,} texts" if model_name else f"{report['texts']:,} texts"
    paths = [directory / name for name in CHART_FILES]
    for path, draw in zip(paths, (_reliability, _precision_recall, _histogram)):
        figure = draw(plt, scored, report, subtitle)
        figure.savefig(path, dpi=DPI)
        plt.close(figure)
    return paths


def _reliability(plt: Any, scored: Scored, report: dict[str, Any], subtitle: str) -> Any:
    calibration = report["calibration"]
    bins = calibration["bins"]
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(SIZE[0], SIZE[1] + 1.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = [b for b in bins if b["count"]]
    bin_bars(top, filled, [b["accuracy"] for b in filled], POSITIVE, alpha=0.75, label="observed accuracy in bin")
    low, high = bins[0]["lower"], bins[-1]["upper"]
    top.plot([low, high], [low, high], "--", color="black", linewidth=1, label="perfect calibration (accuracy = score)")
    top.set_xlim(low, high)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy in bin (share correct)")
    top.set_yticks([i / 10 for i in range(11)])
    top.set_title(f"Reliability diagram: ECE {calibration['ece']:.3f}\n{subtitle}", fontsize=11)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bin_bars(bottom, bins, [b["count"] for b in bins], GREY)
    bottom.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    bottom.set_ylabel("texts in bin")
    width = bins[0]["upper"] - bins[0]["lower"]
    bottom.set_xlabel(f"winning score (probability of the predicted label), {len(bins)} bins of {width:.2g}")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _precision_recall(plt: Any, scored: Scored, report: dict[str, Any], subtitle: str) -> Any:
    review_below = report["negative_thresholds"]["review_below"]
    rows = threshold_table(
        scored.negative_scores, scored.truths, scored.winning_scores, FINE_THRESHOLDS, review_below
    )
    xs = [r["threshold"] for r in rows]

    def column(name: str) -> list[float]:
        return [float("nan") if r[name] is None else r[name] for r in rows]

    figure, axes = plt.subplots(figsize=(SIZE[0], SIZE[1] + 0.8))
    axes.plot(xs, column("precision"), color=NEGATIVE, linewidth=2, label="precision (flagged that are negative)")
    axes.plot(xs, column("recall"), color=POSITIVE, linewidth=2, label="recall (negatives that are flagged)")
    axes.plot(xs, column("flagged_share"), "k--", linewidth=1.2, label="share of traffic flagged")
    axes.plot(
        xs,
        column("review_share"),
        color=REVIEW,
        linewidth=1.5,
        label=f"share to review (winning score < {review_below:g}, not flagged)",
    )
    axes.set_xlim(0.5, 1.0)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("threshold: flag when P(negative) >= threshold (min_score)")
    axes.set_ylabel("share")
    axes.set_yticks([i / 10 for i in range(11)])
    axes.set_title(f"Negative class: precision and recall against threshold\n{subtitle}", fontsize=11)
    # Below the axes: every corner of the plot has a curve in it.
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _histogram(plt: Any, scored: Scored, report: dict[str, Any], subtitle: str) -> Any:
    from matplotlib import ticker

    negatives = [s for s, truth in zip(scored.negative_scores, scored.truths) if truth == 0]
    positives = [s for s, truth in zip(scored.negative_scores, scored.truths) if truth == 1]
    edges = [i / 50 for i in range(51)]
    figure, axes = plt.subplots(figsize=SIZE)
    for values, color, name in ((negatives, NEGATIVE, "negative"), (positives, POSITIVE, "positive")):
        axes.hist(values, bins=edges, histtype="stepfilled", color=color, alpha=0.25)
        label = f"true label {name} ({len(values):,})"
        axes.hist(values, bins=edges, histtype="step", color=color, linewidth=1.8, label=label)
    axes.axvline(0.5, color="black", linestyle="--", linewidth=1, label="0.5: predicted label changes")
    axes.set_yscale("log")
    # Plain numbers at 1-2-5 steps: powers of ten alone leave too few labels over the two decades here.
    axes.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlim(0, 1)
    axes.set_xlabel("P(negative): the model's score for the label 'negative' (50 bins)")
    axes.set_ylabel("texts (log scale)")
    axes.set_title(f"Score histogram per true label\n{subtitle}", fontsize=11)
    axes.legend(loc="upper center", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
