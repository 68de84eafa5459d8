"""PNG charts of a multi-label ``worker eval --plots DIR``: per category, precision/recall/share flagged against
the threshold, and a reliability diagram of the category's probability."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from worker.errors import WorkerError
from worker.evaluation.multilabel import FINE_GRID, MultiLabelScored, category_table
from worker.plots.common import DPI, GREY, NEGATIVE, POSITIVE, REVIEW, SIZE, bin_bars, pyplot

CHARTS = ("precision-recall-threshold", "reliability")


def chart_stems(categories: list[str]) -> list[str]:
    """A file-name stem per category: the name where it is plain ASCII (``insult``), else ``category-NN`` (its
    position among the model's labels, from 01), so names like ``여성/가족`` never make a path."""
    stems: list[str] = []
    for index, name in enumerate(categories, start=1):
        stem = name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) else ""
        if not stem or stem.lower() in (s.lower() for s in stems):
            stem = f"category-{index:02d}"
        stems.append(stem)
    return stems


def write_multi_label_plots(
    scored: MultiLabelScored, report: dict[str, Any], directory: Path, model_name: str = ""
) -> list[Path]:
    """Write two charts per category into ``directory`` (created if missing): ``<stem>-precision-recall-
    threshold.png`` and ``<stem>-reliability.png``; returns their paths."""
    if not report["texts"]:
        raise WorkerError("worker eval --plots: no texts were classified, nothing to chart")
    plt = pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    subtitle = f"{model_name}, {report['texts']:,} texts" if model_name else f"{report['texts']:,} texts"
    paths = []
    for name, stem in zip(scored.categories, chart_stems(scored.categories)):
        for chart, draw in zip(CHARTS, (_precision_recall, _reliability)):
            # The default font has no Hangul: a Korean category name is drawn as boxes, not warned about per glyph.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Glyph .* missing from")
                figure = draw(plt, scored, report, name, subtitle)
                path = directory / f"{stem}-{chart}.png"
                figure.savefig(path, dpi=DPI)
            plt.close(figure)
            paths.append(path)
    return paths


def _precision_recall(plt: Any, scored: MultiLabelScored, report: dict[str, Any], name: str, subtitle: str) -> Any:
    category = report["categories"][name]
    rows = category_table(scored.scores(name), scored.truth(name), FINE_GRID)
    xs = [r["threshold"] for r in rows]

    def column(key: str) -> list[float]:
        return [float("nan") if r[key] is None else r[key] for r in rows]

    figure, axes = plt.subplots(figsize=(SIZE[0], SIZE[1] + 0.8))
    axes.plot(xs, column("precision"), color=NEGATIVE, linewidth=2, label=f"precision (flagged that are {name})")
    axes.plot(xs, column("recall"), color=POSITIVE, linewidth=2, label=f"recall ({name} texts that are flagged)")
    axes.plot(xs, column("flagged_share"), "k--", linewidth=1.2, label="share of traffic flagged")
    threshold = category["threshold"]
    axes.axvline(threshold, color=GREY, linewidth=1, label=f"configured threshold {threshold:g}")
    reached = category["lowest_threshold_for_precision"]
    target = report["target_precision"]
    if reached is not None:
        axes.axvline(
            reached["threshold"],
            color=REVIEW,
            linestyle=":",
            linewidth=1.5,
            label=f"precision {100 * target:g} % from {reached['threshold']:.3f}",
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(f"threshold: flag when P({name}) >= threshold")
    axes.set_ylabel("share")
    axes.set_yticks([i / 10 for i in range(11)])
    reach = "" if reached is not None else f"; precision {100 * target:g} % not reached"
    axes.set_title(
        f"{name} ({category['support']:,} texts): precision and recall against threshold{reach}\n{subtitle}",
        fontsize=11,
    )
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _reliability(plt: Any, scored: MultiLabelScored, report: dict[str, Any], name: str, subtitle: str) -> Any:
    calibration = report["categories"][name]["calibration"]
    bins = calibration["bins"]
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(SIZE[0], SIZE[1] + 1.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = [b for b in bins if b["count"]]
    bin_bars(top, filled, [b["observed_share"] for b in filled], POSITIVE, alpha=0.75, label=f"share truly {name}")
    top.plot([0, 1], [0, 1], "--", color="black", linewidth=1, label="perfect calibration (share = probability)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel(f"share of the bin's texts that are {name}")
    top.set_yticks([i / 10 for i in range(11)])
    ece = calibration["ece"]
    top.set_title(f"{name}: reliability diagram, ECE {ece:.3f}\n{subtitle}", fontsize=11)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bin_bars(bottom, bins, [b["count"] for b in bins], GREY)
    bottom.set_yscale("symlog")  # most texts sit near 0 for a rare category
    bottom.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    bottom.set_ylabel("texts in bin")
    bottom.set_xlabel(f"P({name}), {len(bins)} bins of {bins[0]['upper'] - bins[0]['lower']:.2g}")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    return figure
