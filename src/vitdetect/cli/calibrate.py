"""`vitdetect calibrate`: refit a checkpoint's temperature on a split."""

from __future__ import annotations

from pathlib import Path

from vitdetect.cli.summaries import stdout
from vitdetect.cli.support import described, user_errors
from vitdetect.config.commands import CalibrateSettings
from vitdetect.config.settings import build_settings


@user_errors
def calibrate(
    checkpoint: Path = described(CalibrateSettings, "checkpoint", "--checkpoint"),
    data_dir: Path = described(CalibrateSettings, "data_dir", "--data-dir", "--data_dir"),
    split: str = described(CalibrateSettings, "split", "--split"),
    batch_size: int = described(CalibrateSettings, "batch_size", "--batch-size", "--batch_size"),
    cpu: bool = described(CalibrateSettings, "cpu", "--cpu/--no-cpu"),
    cache_dir: Path = described(CalibrateSettings, "cache_dir", "--cache-dir"),
    quiet: bool = described(CalibrateSettings, "quiet", "--quiet/--no-quiet", "-q"),
) -> None:
    """Refit the checkpoint's temperature (calibrated P(FAKE)) on DATA_DIR/SPLIT; the checkpoint is rewritten."""
    settings = build_settings(CalibrateSettings, None, **locals())
    from vitdetect.evaluation.calibration import calibrate as run_calibration
    from vitdetect.utils.distributed import is_main_process

    result = run_calibration(settings)
    if is_main_process():
        fit = result.fit
        stdout.print(f"temperature {result.previous_temperature:.4f} -> {fit.temperature:.4f}, fitted on "
                     f"{fit.n_images:,} images of {settings.data_dir / settings.split}: NLL {fit.nll_before:.4f} "
                     f"at T = 1 -> {fit.nll_after:.4f}; wrote {settings.checkpoint}")
        if result.threshold:
            old, new = result.threshold
            stdout.print(f"stored threshold {old:.6g} -> {new:.6g}: the same operating point (the same images "
                         "are called FAKE) on the new scale")
        if result.pretrained_dir:
            stdout.print(f"rewrote {result.pretrained_dir} with the temperature folded into its classifier")
