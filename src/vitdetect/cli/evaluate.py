"""`vitdetect evaluate`: score a split, print the summary (and the robustness table)."""

from __future__ import annotations

from pathlib import Path

from vitdetect.cli.summaries import print_evaluation_summary, stdout
from vitdetect.cli.support import described, user_errors
from vitdetect.config.commands import EvaluateSettings, ExplainMethod, FigureFormat
from vitdetect.config.settings import build_settings


@user_errors
def evaluate(
    checkpoint: Path = described(EvaluateSettings, "checkpoint", "--checkpoint"),
    data_dir: Path = described(EvaluateSettings, "data_dir", "--data-dir", "--data_dir"),
    split: str = described(EvaluateSettings, "split", "--split"),
    output_dir: Path = described(EvaluateSettings, "output_dir", "--output-dir", "--output_dir"),
    batch_size: int = described(EvaluateSettings, "batch_size", "--batch-size", "--batch_size"),
    set_threshold_at_fpr: float = described(EvaluateSettings, "set_threshold_at_fpr",
                                            "--set-threshold-at-fpr"),
    explain_errors: int = described(EvaluateSettings, "explain_errors", "--explain-errors"),
    explain_method: ExplainMethod | None = described(EvaluateSettings, "explain_method", "--explain-method"),
    format: FigureFormat = described(EvaluateSettings, "format", "--format"),
    robustness: bool = described(EvaluateSettings, "robustness", "--robustness/--no-robustness"),
    perturbations: str = described(EvaluateSettings, "perturbations", "--perturbations"),
    robustness_images: int = described(EvaluateSettings, "robustness_images", "--robustness-images"),
    seed: int = described(EvaluateSettings, "seed", "--seed"),
    cpu: bool = described(EvaluateSettings, "cpu", "--cpu/--no-cpu"),
    threads: int = described(EvaluateSettings, "threads", "--threads"),
    cache_dir: Path = described(EvaluateSettings, "cache_dir", "--cache-dir"),
    quiet: bool = described(EvaluateSettings, "quiet", "--quiet/--no-quiet", "-q"),
    report_to: str = described(EvaluateSettings, "report_to", "--report-to", metavar="NAME[,NAME]"),
    run_name: str = described(EvaluateSettings, "run_name", "--run-name"),
    logging_dir: Path = described(EvaluateSettings, "logging_dir", "--logging-dir"),
) -> None:
    """Score DATA_DIR/SPLIT with a checkpoint: metrics.json, predictions.csv and figures (FAKE = positive)."""
    settings = build_settings(EvaluateSettings, None, **locals())
    from vitdetect.evaluation.evaluator import evaluate as run_evaluation
    from vitdetect.utils.distributed import is_main_process

    result = run_evaluation(settings)
    if is_main_process():
        print_evaluation_summary(result)
        if result.robustness is not None:
            from vitdetect.reports.robustness import robustness_table

            stdout.print(robustness_table(result.robustness))
