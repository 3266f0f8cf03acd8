"""robustness.json read back, without torch: its figure (for `vitdetect plot`) and a side-by-side table of
two reports (a model trained with and without the robust-training augmentations)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitdetect.config.run_files import ROBUSTNESS_FIGURE, ROBUSTNESS_NAME
from vitdetect.errors import VitdetectError
from vitdetect.reports.figures import GUIDE, PlotResult, save

# seaborn's colour-blind palette, one colour per family
FAMILY_COLOURS = {"jpeg": "#0173b2", "blur": "#de8f05", "downscale": "#029e73", "noise": "#cc78bc",
                  "resave": "#ca9161"}
LABEL_GAP = 0.045  # of the axis height: one 7-point label in a 5.5-inch figure, plus a little
PANELS = (("accuracy", "accuracy", "Accuracy at the checkpoint's threshold"),
          ("roc_auc", "ROC AUC", "ROC AUC (FAKE = positive class)"))
# The columns of the side-by-side table: row key -> heading.
COMPARED = {"accuracy": "accuracy", "roc_auc": "ROC AUC", "tpr_at_target_fpr": "TPR*", "flip_share": "flipped"}
# What two reports must share for their rows to be comparable: the same images and the same noise.
# What fixes the sample. Not data_dir: the same data sits at different paths on different machines (a GPU box).
SAME_SAMPLE = ("split", "split_images", "n_images", "support", "seed")


def read_robustness(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
            raise ValueError("no rows")
    except (OSError, ValueError) as exc:
        raise VitdetectError(f"cannot read {path}: not a vitdetect robustness report ({exc})") from None
    return report


def robustness_figures(results_dir: Path, fmt: str = "png") -> PlotResult:
    """robustness.png from robustness.json; skipped with a note when there is none."""
    source = Path(results_dir) / ROBUSTNESS_NAME
    if not source.is_file():
        return PlotResult(skipped=[f"skipped {ROBUSTNESS_FIGURE}.{fmt}: no {ROBUSTNESS_NAME} in {results_dir} "
                                   "(run `vitdetect evaluate --robustness`)"])
    report = read_robustness(source)
    target = Path(results_dir) / f"{ROBUSTNESS_FIGURE}.{fmt}"
    return PlotResult([save(target, fmt, lambda figure: draw_robustness(figure, report))])


def draw_robustness(figure, report: dict[str, Any]) -> None:
    """Accuracy and ROC AUC against severity: one line per family from the clean score (level 0)."""
    from matplotlib.ticker import MaxNLocator

    figure.set_size_inches(12, 5.5)
    rows = report["rows"]
    clean = next(row for row in rows if row["family"] == "clean")
    families = [family for family in dict.fromkeys(row["family"] for row in rows) if family in FAMILY_COLOURS]
    for ax, (key, label, title) in zip(figure.subplots(1, 2), PANELS, strict=True):
        if clean[key] is None:
            ax.text(0.5, 0.5, "undefined: the sample holds one class", ha="center", va="center")
        else:
            ax.axhline(clean[key], color=GUIDE, linestyle="--", linewidth=1, label=f"clean: {clean[key]:.4f}")
            ax.scatter([0], [clean[key]], marker="*", s=220, color=GUIDE, zorder=4)
        for family in families:
            members = [row for row in rows if row["family"] == family]
            levels, values = [0] + [row["level"] for row in members], [clean[key]] + [row[key] for row in members]
            ax.plot(levels, values, marker="o", color=FAMILY_COLOURS[family], linewidth=2,
                    label=f"{members[0]['family_title']}: {', '.join(row['parameter'] for row in members)}")
        label_points(ax, [(row["level"], row[key], row["parameter"], FAMILY_COLOURS[row["family"]])
                          for row in rows if row["family"] in FAMILY_COLOURS and row[key] is not None])
        for row in rows:
            if row["family"] == "png":
                ax.scatter([0], [row[key]], marker="o", s=90, facecolors="none", edgecolors="black", zorder=5,
                           label=f"{row['family_title']}: {row[key]:.4f}")
        ax.set_xlim(-0.25, max(row["level"] for row in rows) + 0.6)  # room for the last level's labels
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=title, xlabel="severity level (0 = clean, 1 = mildest)", ylabel=label)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    figure.suptitle(f"Robustness: {report.get('split', '?')} split, {report['n_images']:,}-image stratified sample "
                    f"(seed {report['seed']}), P(FAKE) >= {report['threshold']:.4g} is FAKE", fontweight="bold")


def label_points(ax, points: list[tuple[int, float, str, str]]) -> None:
    """Each point's parameter beside it, on a white box; labels at one level pushed apart so none overlap."""
    ax.autoscale_view()
    low, high = ax.get_ylim()
    gap = LABEL_GAP * (high - low)
    for level in sorted({point[0] for point in points}):
        placed = high + gap  # labels go top down, each at least one gap below the one before
        for _, value, text, colour in sorted((p for p in points if p[0] == level), key=lambda p: -p[1]):
            placed = min(value, placed - gap)
            ax.annotate(text, (level, value), xytext=(level + 0.06, placed), fontsize=7, color=colour,
                        va="center", zorder=6, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                                     "alpha": 0.85})


def robustness_table(report: dict[str, Any]):
    """The report as a rich Table that fits 80 columns: one row per perturbation, clean first."""
    from rich.table import Table

    clean = report["rows"][0]
    table = Table(title=f"robustness: {report['split']} split, {report['n_images']:,} images (stratified sample, "
                  f"seed {report['seed']})",
                  caption=f"accuracy: at P(FAKE) >= {report['threshold']:.4g}; TPR*, FPR*: at P(FAKE) >= "
                  f"{_number(report['target_fpr_threshold'], '.4g')}, the threshold giving "
                  f"{report['target_fpr']:.0%} FPR on the clean sample; flipped: verdicts changed against clean; "
                  f"dP: mean change of P(FAKE) against clean, per true class; {report['seconds']:.1f} s in all",
                  box=None, pad_edge=False, header_style="bold underline")
    table.add_column("perturbation", no_wrap=True)
    for column in ("accuracy", "change", "ROC AUC", "TPR*", "FPR*", "flipped", "dP REAL", "dP FAKE"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        change = row["mean_p_fake_change"]
        table.add_row(row["name"], _number(row["accuracy"]), _number(row["accuracy"] - clean["accuracy"], "+.3f"),
                      _number(row["roc_auc"]), _number(row["tpr_at_target_fpr"], ".3f"),
                      _number(row["fpr_at_target_fpr"], ".3f"), f"{row['flip_share']:.1%}",
                      _number(change["REAL"], "+.3f"), _number(change["FAKE"], "+.3f"))
    return table


def comparison_table(baseline: dict[str, Any], robust: dict[str, Any],
                     names: tuple[str, str] = ("without", "with")) -> str:
    """A Markdown table of two reports side by side: accuracy, ROC AUC, TPR at the clean 5%-FPR threshold and
    flipped verdicts per perturbation, with the change (second minus first); the clean row's change is the cost."""
    differing = [key for key in SAME_SAMPLE if baseline.get(key) != robust.get(key)]
    if differing:
        raise VitdetectError(f"the two reports scored different samples ({', '.join(differing)} differ): "
                             "run both evaluations on the same split with the same --robustness-images and --seed")
    robust_rows = {row["name"]: row for row in robust["rows"]}
    first, second = names
    header = ["perturbation"]
    for metric in COMPARED.values():
        header += [f"{metric} {first}", f"{metric} {second}", "change"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in baseline["rows"]:
        other = robust_rows.get(row["name"])
        if other is None:
            continue
        cells = [row["name"] if row["family"] == "clean" else f"{row['family_title']}, {row['parameter']}"]
        for key in COMPARED:
            cells += [_number(row[key]), _number(other[key]), _change(row[key], other[key])]
        lines.append("| " + " | ".join(cells) + " |")
    footnote = (f"TPR*: share of FAKE images caught at the threshold that gives {baseline['target_fpr']:.0%} FPR on "
                "each model's clean scores, held fixed under the perturbation. flipped: share of each model's verdicts "
                "that the perturbation changes (robustness apart from clean accuracy).")
    return "\n".join(lines) + "\n\n" + footnote + "\n" + comparison_summary(baseline, robust, names) + "\n"


def comparison_summary(baseline: dict[str, Any], robust: dict[str, Any], names: tuple[str, str]) -> str:
    """One line: the clean accuracy change and the mean and worst accuracy under the perturbations."""
    first, second = names
    clean = [report["rows"][0]["accuracy"] for report in (baseline, robust)]
    robust_rows = {row["name"]: row for row in robust["rows"]}
    pairs = [(row["accuracy"], robust_rows[row["name"]]["accuracy"]) for row in baseline["rows"]
             if row["family"] not in ("clean", "png") and row["name"] in robust_rows]
    line = f"Clean accuracy {first} {clean[0]:.4f}, {second} {clean[1]:.4f} ({clean[1] - clean[0]:+.4f})"
    if not pairs:
        return line + "."
    before, after = zip(*pairs, strict=True)
    return (f"{line}; over {len(pairs)} perturbations, mean accuracy {first} {sum(before) / len(pairs):.4f}, "
            f"{second} {sum(after) / len(pairs):.4f}; worst {first} {min(before):.4f}, {second} {min(after):.4f}.")


def _number(value: float | None, form: str = ".4f") -> str:
    return "n/a" if value is None else format(value, form)


def _change(before: float | None, after: float | None) -> str:
    return _number(None if before is None or after is None else after - before, "+.4f")
