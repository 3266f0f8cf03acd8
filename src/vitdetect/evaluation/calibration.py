"""Calibrated probabilities: temperature scaling (Guo et al., ICML 2017).

One scalar T, fitted by minimising the negative log-likelihood of held-out logits, turns the model's
scores into P(FAKE) = softmax(logits / T)[FAKE]. Dividing the logits by one positive number never
reorders images, so accuracy at 0.5, ROC AUC and every ranking stay as they were; only how far
P(FAKE) sits from 0.5 changes. A checkpoint stores T under `temperature` (absent: 1.0) and the fit
under `temperature_fit`; `best_model/` carries T folded into the classifier.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vitdetect.config.run_files import BEST_NAME, PRETRAINED_DIR_NAME
from vitdetect.data.dataset import ImageSet, load_split_reported
from vitdetect.errors import VitdetectError
from vitdetect.inference.scoring import TrainedModel, fold_temperature, model_logits
from vitdetect.models.builtin import refuse_builtin
from vitdetect.models.checkpoint import save_checkpoint, save_pretrained_dir
from vitdetect.utils.distributed import make_accelerator
from vitdetect.utils.locking import output_lock
from vitdetect.utils.progress import Reporter

TEMPERATURE_KEY = "temperature"
FIT_KEY = "temperature_fit"
# A split the model gets entirely right pulls T towards 0 (ever sharper is ever better); keep T sane.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
ROUNDING_ALLOWANCE = 1e-9  # relative, on the logit margin: scores closer than this to a threshold are ties


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the held-out NLL (mean cross-entropy) at T = 1 and at T."""

    temperature: float
    nll_before: float
    nll_after: float
    n_images: int
    split: str = ""
    data_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def at_bound(self) -> bool:
        """True when the fit stopped at a bound: a split the model separates perfectly, so T says little."""
        return self.temperature in (MIN_TEMPERATURE, MAX_TEMPERATURE)


@dataclass(frozen=True)
class Recalibration:
    """What `calibrate` changed in a checkpoint: the fit, the previous T, the threshold before and after."""

    fit: TemperatureFit
    previous_temperature: float
    threshold: tuple[float, float] | None  # (old, new) when the checkpoint stores one
    pretrained_dir: Path | None  # the save_pretrained folder rewritten with the new T folded in


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(torch.as_tensor(logits, dtype=torch.float64) / temperature,
                                 torch.as_tensor(labels, dtype=torch.long)))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> TemperatureFit:
    """The T minimising the NLL of softmax(logits / T) on these Nx2 logits and 0/1 labels.

    Not scikit-learn's CalibratedClassifierCV(method="temperature") with a FrozenEstimator: for two
    classes it takes a 1-D decision function d and scores (-d, d), so our logits would need halving into a
    stand-in estimator (fit, predict, decision_function), and the fitted T is only reachable through the
    private calibrators of `calibrated_classifiers_`. One LBFGS on log T (positive by construction, and
    well scaled, where plain LBFGS on T with few iterations is known to stall) is the whole method;
    tests check it against scikit-learn's fit.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64).detach()
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(logits) == 0:
        raise VitdetectError("cannot fit a temperature on no images")
    if not torch.isfinite(logits).all():
        raise VitdetectError("cannot fit a temperature: the model gives non-finite logits")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    if bool((logits.argmax(dim=1) == labels).all()):
        temperature = MIN_TEMPERATURE  # every image right: the NLL falls towards 0 as T does, to the bound
    else:
        optimizer.step(closure)
        temperature = float(np.clip(math.exp(log_t.item()), MIN_TEMPERATURE, MAX_TEMPERATURE))
    before, after = nll(logits, labels), nll(logits, labels, temperature)
    if not after < before:  # a flat or clipped fit: T = 1 is as good
        temperature, after = 1.0, before
    return TemperatureFit(temperature, before, after, len(labels))


def remap_threshold(threshold: float, old_temperature: float, new_temperature: float) -> float:
    """The threshold on the new scale that calls the same images FAKE.

    P(FAKE) >= t at temperature T means logit margin (z_FAKE - z_REAL) >= T * logit(t): the operating point
    is a margin, so t' = sigmoid(T * logit(t) / T'). The margin is lowered by a billionth of itself, so that
    an image lying exactly on the old threshold (where --set-threshold-at-fpr puts it) stays FAKE despite
    float rounding. 0 and anything at or above 1 mean "all" and "none" and stay as they are.
    """
    if not 0.0 < threshold < 1.0:
        return threshold
    margin = old_temperature * (math.log(threshold) - math.log1p(-threshold)) / new_temperature
    margin -= ROUNDING_ALLOWANCE * max(1.0, abs(margin))
    return 1.0 / (1.0 + math.exp(-margin)) if margin >= 0 else math.exp(margin) / (1.0 + math.exp(margin))


def recalibrate(
    checkpoint: Path,
    images: ImageSet,
    source: dict[str, str],
    batch_size: int,
    accelerator,
    reporter: Reporter | None = None,
    trained: TrainedModel | None = None,
) -> Recalibration:
    """Fit T on these held-out images and store it in the checkpoint, written atomically (main process).

    A stored threshold is mapped to the new scale so it keeps its operating point; the save_pretrained
    folder beside the checkpoint (best_model/ for best_model.pth), when there is one, is rewritten with
    the new T folded in. Every process scores its shard; all of them return the same result.
    """
    checkpoint = Path(checkpoint)
    trained = trained or TrainedModel.load(checkpoint)
    logits = model_logits(trained, images.images, batch_size, accelerator, reporter,
                          f"calibrating on {source.get('split', 'held-out')}")
    fit = TemperatureFit(**{**fit_temperature(logits, images.labels).to_dict(), **source})
    payload = {**trained.checkpoint, TEMPERATURE_KEY: fit.temperature, FIT_KEY: fit.to_dict()}
    threshold = None
    if trained.checkpoint.get("threshold") is not None:
        old = float(trained.checkpoint["threshold"])
        threshold = (old, remap_threshold(old, trained.temperature, fit.temperature))
        payload["threshold"] = threshold[1]
        if isinstance(payload.get("threshold_source"), dict):  # where the operating point was chosen
            payload["threshold_source"] = {**payload["threshold_source"], "threshold": threshold[1]}
    pretrained = checkpoint.with_suffix("")
    pretrained = pretrained if pretrained.name == PRETRAINED_DIR_NAME and pretrained.is_dir() else None
    if accelerator.is_main_process:
        save_checkpoint(checkpoint, payload)
        if pretrained is not None:
            save_pretrained_dir(pretrained, fold_temperature(trained.model.cpu(), fit.temperature), trained.prep)
    accelerator.wait_for_everyone()
    return Recalibration(fit, trained.temperature, threshold, pretrained)


def after_training(output_dir: Path, validation: ImageSet, settings, accelerator,
                   reporter: Reporter) -> TemperatureFit | None:
    """`train`'s last step: fit T on the validation split for best_model.pth; None with --no-calibration."""
    if not settings.calibrate:
        return None
    source = {"split": "validation", "data_dir": str(settings.data_dir)}
    fit = recalibrate(output_dir / BEST_NAME, validation, source, settings.batch_size, accelerator, reporter).fit
    reporter.info(f"temperature {fit.temperature:.4f} fitted on {fit.n_images:,} validation images: "
                  f"NLL {fit.nll_before:.4f} -> {fit.nll_after:.4f}")
    if fit.at_bound:
        reporter.warn(f"the temperature stopped at its bound {fit.temperature:g}: the model gets the validation "
                      "split (nearly) all right, so P(FAKE) will be close to 0 or 1; refit on a larger held-out "
                      "split with `vitdetect calibrate`")
    return fit


def calibrate(settings, reporter: Reporter | None = None) -> Recalibration:
    """`vitdetect calibrate`: refit the checkpoint's temperature on DATA_DIR/SPLIT."""
    refuse_builtin(settings.checkpoint, "recalibrate")
    accelerator = make_accelerator(settings.cpu)
    reporter = reporter or Reporter(settings.quiet, enabled=accelerator.is_main_process)
    TrainedModel.load(settings.checkpoint)  # a bad checkpoint fails before the folder is locked
    with output_lock(settings.checkpoint.parent, accelerator):  # rewritten: nobody else may write it meanwhile
        trained = TrainedModel.load(settings.checkpoint)
        with accelerator.local_main_process_first():  # one decoder per machine; the others read its cache
            images = load_split_reported(settings.data_dir, settings.split, trained.prep.storage_size,
                                         settings.cache_dir, settings.checkpoint.parent, reporter)
        source = {"split": settings.split, "data_dir": str(settings.data_dir)}
        return recalibrate(settings.checkpoint, images, source, settings.batch_size, accelerator, reporter, trained)
