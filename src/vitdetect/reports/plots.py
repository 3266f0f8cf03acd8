"""Figures rebuilt from saved results alone: history.csv, batch_history.csv, metrics.json, predictions.csv.

No model and no torch: `vitdetect plot` works on any machine that has the files. Figures are drawn
on matplotlib `Figure` objects (Agg rendering, no pyplot state) in a seaborn style, and written
atomically. REAL and FAKE keep the same colours in every figure.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vitdetect.config.labels import POSITIVE_CLASS
from vitdetect.config.run_files import (
    BATCH_HISTORY_NAME,
    EPOCH_HISTORY_NAME,
    EVALUATION_FIGURES,
    METRICS_NAME,
    PREDICTIONS_NAME,
    TRAINING_FIGURES,
)
from vitdetect.errors import VitdetectError
from vitdetect.reports.figures import CLASS_COLOURS, GUIDE, SPLIT_COLOURS, PlotResult, save
from vitdetect.reports.metrics import (
    Predictions,
    calibration_bins,
    rates_at_threshold,
    read_metrics,
    read_predictions,
    risk_coverage,
    selective_table,
)

HISTOGRAM_BINS = 50
SMOOTHING_POINTS = 25  # the most points one moving average spans; an eighth of them when fewer


def all_figures(results_dir: Path, fmt: str = "png") -> PlotResult:
    """Every figure whose inputs are in results_dir; an error when there is nothing to plot at all."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise VitdetectError(
            f"results dir not found: {results_dir} (run `vitdetect train` and `vitdetect evaluate`)"
        )
    from vitdetect.config.run_files import ROBUSTNESS_NAME
    from vitdetect.reports.robustness import robustness_figures

    result = training_figures(results_dir, fmt).add(evaluation_figures(results_dir, fmt))
    result = result.add(robustness_figures(results_dir, fmt))
    if not result.written:
        raise VitdetectError(
            f"nothing to plot in {results_dir}: no {EPOCH_HISTORY_NAME}, {BATCH_HISTORY_NAME}, "
            f"{METRICS_NAME} with {PREDICTIONS_NAME}, or {ROBUSTNESS_NAME}"
        )
    return result


def training_figures(results_dir: Path, fmt: str = "png") -> PlotResult:
    """epoch_training_curves and batch_training_curves from the history files `train` writes."""
    result = PlotResult()
    for name, source, draw in zip(TRAINING_FIGURES, (EPOCH_HISTORY_NAME, BATCH_HISTORY_NAME),
                                  (draw_epoch_curves, draw_batch_curves), strict=True):
        table = read_table(Path(results_dir) / source)
        if table is None:
            result.skipped.append(f"skipped {name}.{fmt}: no {source} with rows in {results_dir}")
            continue
        target = Path(results_dir) / f"{name}.{fmt}"
        result.written.append(save(target, fmt, lambda fig, t=table, d=draw: d(fig, t)))
    return result


def evaluation_figures(results_dir: Path, fmt: str = "png") -> PlotResult:
    """Confusion matrix, ROC, PR, score histogram, reliability diagram, risk-coverage curve: from metrics.json and
    predictions.csv."""
    results_dir = Path(results_dir)
    missing = [name for name in (METRICS_NAME, PREDICTIONS_NAME) if not (results_dir / name).is_file()]
    figures = dict(zip(EVALUATION_FIGURES, (draw_confusion_matrix, draw_roc_curve, draw_pr_curve,
                                            draw_score_histogram, draw_calibration, draw_risk_coverage), strict=True))
    if missing:
        return PlotResult(skipped=[f"skipped {name}.{fmt}: no {' or '.join(missing)} in {results_dir} "
                                   "(run `vitdetect evaluate`)" for name in figures])
    metrics = read_metrics(results_dir / METRICS_NAME)
    predictions = read_predictions(results_dir / PREDICTIONS_NAME, metrics["class_names"])
    written = [
        save(results_dir / f"{name}.{fmt}", fmt, lambda fig, d=draw: d(fig, metrics, predictions))
        for name, draw in figures.items()
    ]
    return PlotResult(written)


def read_table(path: Path) -> dict[str, np.ndarray] | None:
    """A numeric CSV as column -> float array; None when the file is missing or has no rows."""
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return None
        return {column: np.array([float(row[column]) for row in rows]) for column in rows[0]}
    except (OSError, ValueError, TypeError, csv.Error) as exc:
        raise VitdetectError(f"cannot read {path}: {exc}") from None


def draw_epoch_curves(figure, history: dict[str, np.ndarray]) -> None:
    from matplotlib.ticker import MaxNLocator

    figure.set_size_inches(11, 8)
    epochs = history["epoch"]
    best = int(epochs[np.argmin(history["val_loss"])])
    panels = (("loss", "Loss", "cross-entropy"), ("accuracy", "Accuracy", "accuracy"),
              ("precision", "Precision (FAKE)", "precision"), ("f1", "F1 score (FAKE)", "F1"))
    for ax, (key, title, unit) in zip(figure.subplots(2, 2).flat, panels, strict=True):
        for split, prefix in (("train", "train_"), ("validation", "val_")):
            ax.plot(epochs, history[prefix + key], marker="o", color=SPLIT_COLOURS[split], label=split)
        ax.axvline(best, color=GUIDE, linestyle="--", linewidth=1,
                   label=f"best epoch {best} (lowest val loss)")
        ax.set(title=title, xlabel="epoch", ylabel=unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=3)
    figure.suptitle(f"Training curves per epoch ({len(epochs)} epochs)", fontweight="bold")


def draw_batch_curves(figure, batches: dict[str, np.ndarray]) -> None:
    figure.set_size_inches(12, 4.8)
    position = fractional_epochs(batches["epoch"], batches["step"])
    window = int(np.clip(len(position) // 8, 1, SMOOTHING_POINTS))
    for ax, key, unit in zip(figure.subplots(1, 2), ("loss", "accuracy"), ("cross-entropy", "accuracy"),
                             strict=True):
        values = batches[key]
        ax.scatter(position, values, s=12, alpha=0.5, color=SPLIT_COLOURS["train"], label="logged batch")
        ax.plot(position, moving_average(values, window), color=GUIDE, linewidth=2,
                label=f"moving average ({window} points)")
        ax.set(title=f"Batch {key} (training)", xlabel="epoch", ylabel=unit, xlim=(0, None))
        ax.legend(loc="best")
    figure.suptitle(f"Training curves per logged batch ({len(position)} batches)", fontweight="bold")


def fractional_epochs(epochs: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Epoch e, step s -> e - 1 + s / (last logged step of e): ends each epoch at its number."""
    last_step = {epoch: steps[epochs == epoch].max() for epoch in np.unique(epochs)}
    return np.array([epoch - 1 + step / last_step[epoch] for epoch, step in zip(epochs, steps, strict=True)])


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over `window` points, over fewer at the ends (no shift, no padding artefacts)."""
    kernel = np.ones(window)
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones(len(values)), kernel, mode="same")


def draw_confusion_matrix(figure, metrics: dict, _predictions: Predictions) -> None:
    import seaborn as sns

    figure.set_size_inches(6.5, 5.5)
    names = metrics["class_names"]
    counts = np.array(metrics["confusion_matrix"], dtype=np.int64)
    row_share = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    notes = [[f"{counts[i, j]:,}\n{row_share[i, j]:.1f}% of true {names[i]}" for j in range(2)]
             for i in range(2)]
    ax = figure.subplots()
    sns.heatmap(row_share, annot=np.array(notes), fmt="", cmap="Blues", vmin=0, vmax=100, square=True, ax=ax,
                xticklabels=names, yticklabels=names, annot_kws={"fontsize": 12},
                cbar_kws={"label": "share of the true class (%)"})
    ax.set(xlabel="predicted label", ylabel="true label")
    for tick in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        tick.set_color(CLASS_COLOURS.get(tick.get_text(), GUIDE))
        tick.set_fontweight("bold")
    ax.set_title(f"Confusion matrix, {subtitle(metrics)}\nP(FAKE) >= {metrics['threshold']:.4g} is FAKE")


def draw_roc_curve(figure, metrics: dict, predictions: Predictions) -> None:
    from sklearn.metrics import roc_curve

    ax = figure.subplots()
    if metrics["roc_auc"] is None:
        return undefined(ax, "ROC curve", metrics)
    fpr, tpr, _ = roc_curve(predictions.labels, predictions.p_fake, pos_label=1)
    ax.plot(fpr, tpr, color=CLASS_COLOURS[POSITIVE_CLASS], linewidth=2, label=f"ROC (AUC = {metrics['roc_auc']:.4f})")
    ax.plot([0, 1], [0, 1], color=GUIDE, linestyle="--", linewidth=1, label="chance (AUC = 0.5)")
    point_fpr, point_tpr = rates_at_threshold(predictions.labels, predictions.p_fake, metrics["threshold"])
    ax.scatter([point_fpr], [point_tpr], color=GUIDE, zorder=3, s=40,
               label=f"threshold {metrics['threshold']:.4g}: TPR {point_tpr:.3f} at FPR {point_fpr:.3f}")
    markers = iter("Ds^v")
    for target, point in metrics["tpr_at_fpr"].items():
        if point is not None:
            ax.scatter([point["fpr"]], [point["tpr"]], marker=next(markers), color=GUIDE, s=40, zorder=3,
                       label=f"TPR {point['tpr']:.3f} at FPR <= {float(target):.0%}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="false positive rate (REAL called FAKE)", ylabel="true positive rate (FAKE caught)",
           title=f"ROC curve, FAKE = positive class\n{subtitle(metrics)}")
    ax.legend(loc="lower right", fontsize="small")


def draw_pr_curve(figure, metrics: dict, predictions: Predictions) -> None:
    from sklearn.metrics import precision_recall_curve

    ax = figure.subplots()
    if metrics["pr_auc"] is None:
        return undefined(ax, "Precision-recall curve", metrics)
    precision, recall, _ = precision_recall_curve(predictions.labels, predictions.p_fake, pos_label=1)
    ax.plot(recall, precision, color=CLASS_COLOURS[POSITIVE_CLASS], linewidth=2, drawstyle="steps-post",
            label=f"precision-recall (AP = {metrics['pr_auc']:.4f})")
    prevalence = float(np.mean(predictions.labels == 1))
    ax.axhline(prevalence, color=GUIDE, linestyle="--", linewidth=1, label=f"chance (AP = {prevalence:.3f})")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall (share of FAKE caught)",
           ylabel="precision (share of FAKE calls that are right)",
           title=f"Precision-recall curve, FAKE = positive class\n{subtitle(metrics)}")
    ax.legend(loc="lower left")


def draw_score_histogram(figure, metrics: dict, predictions: Predictions) -> None:
    figure.set_size_inches(8, 5)
    ax = figure.subplots()
    bins = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    for index, name in enumerate(metrics["class_names"]):
        scores = predictions.p_fake[predictions.labels == index]
        colour = CLASS_COLOURS[name]
        ax.hist(scores, bins=bins, color=colour, alpha=0.25)
        ax.hist(scores, bins=bins, color=colour, histtype="step", linewidth=2,
                label=f"true {name} ({len(scores):,} images)")
    ax.axvline(metrics["threshold"], color=GUIDE, linestyle="--", linewidth=1.5,
               label=f"threshold {metrics['threshold']:.4g}")
    log_count_axis(ax)
    ax.set(xlim=(0, 1), xlabel="P(FAKE)", ylabel="images per bin (log scale)",
           title=f"Scores per true class ({HISTOGRAM_BINS} bins)\n{subtitle(metrics)}")
    figure.legend(loc="outside lower center", ncols=3)


def draw_calibration(figure, metrics: dict, predictions: Predictions) -> None:
    """Reliability diagram: after temperature scaling, and before it when predictions.csv holds both."""
    figure.set_size_inches(6.5, 7)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color=GUIDE, linestyle="--", linewidth=1, label="perfectly calibrated")
    temperature = metrics.get("temperature", 1.0)
    curves = [(predictions.p_fake, metrics["ece"], CLASS_COLOURS[POSITIVE_CLASS], "-", "o",
               f"T = {temperature:.3g}" if temperature != 1 else "model")]
    if predictions.p_fake_uncalibrated is not None and temperature != 1:
        curves.insert(0, (predictions.p_fake_uncalibrated, metrics["uncalibrated"]["ece"], GUIDE, ":", "s",
                          "before scaling (T = 1)"))
    for scores, ece, colour, line, marker, name in curves:
        bins = calibration_bins(predictions.labels, scores, metrics["ece_bins"])
        top.plot(bins.mean_p_fake, bins.fraction_fake, marker=marker, color=colour, linestyle=line, linewidth=2,
                 label=f"{name} (ECE = {ece:.4f})")
        bottom.stairs(bins.counts, bins.edges, color=colour, linestyle=line, linewidth=1.5,
                      fill=len(curves) == 1, alpha=0.6 if len(curves) == 1 else 1.0)
    top.set(xlim=(0, 1), ylim=(-0.01, 1.01), ylabel="observed share of FAKE",
            title=f"Reliability diagram ({metrics['ece_bins']} equal-width bins)\n{subtitle(metrics)}")
    top.legend(loc="upper left")
    log_count_axis(bottom)
    bottom.set(xlabel="predicted P(FAKE)", ylabel="images (log)")


def draw_risk_coverage(figure, metrics: dict, predictions: Predictions) -> None:
    """Selective prediction: the error rate on the images decided, against the share decided, when the least
    confident answer UNSURE; the points of metrics.json's table, with the --min-confidence of each. Recomputed from
    predictions.csv, so metrics.json written before the table existed plots too."""
    figure.set_size_inches(7.5, 5.5)
    ax = figure.subplots()
    threshold = metrics["threshold"]
    curve = risk_coverage(predictions.labels, predictions.p_fake, threshold)
    ax.plot(100 * curve["coverage"], 100 * curve["risk"], color=CLASS_COLOURS[POSITIVE_CLASS], linewidth=2,
            drawstyle="steps-post", label="error rate on the decided images")
    for row, marker in zip(selective_table(predictions.labels, predictions.p_fake, threshold), "o^sDv<", strict=False):
        ax.scatter([100 * row["coverage"]], [100 * (1 - row["accuracy"])], marker=marker, color=GUIDE, s=40,
                   zorder=3, label=f"{row['target_coverage']:.0%} decided: accuracy {row['accuracy']:.4f}, "
                   f"--min-confidence {row['min_confidence']:.4g}")
    ax.set(xlim=(0, 101), ylim=(0, None), xlabel="coverage: images decided (%), the least confident UNSURE",
           ylabel="risk: errors among the decided images (%)",
           title=f"Risk-coverage (selective prediction)\n{subtitle(metrics)}")
    ax.legend(loc="upper left", fontsize="small")


def log_count_axis(ax) -> None:
    """A log y axis of counts labelled 10, 30, 100, 300, 1,000...: readable without exponents."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def subtitle(metrics: dict) -> str:
    return f"{metrics.get('split', '?')} split, {metrics['n_images']:,} images"


def undefined(ax, title: str, metrics: dict) -> None:
    ax.text(0.5, 0.5, "undefined: the labels hold only one class", ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    ax.set_title(f"{title}\n{subtitle(metrics)}")
