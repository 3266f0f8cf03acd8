"""The UNSURE verdict of `vitdetect predict` and `Detector`: --min-confidence and --check-stability."""

import csv
import io
import json

import numpy as np
import pytest

from conftest import random_checkpoint, run_main, user_error
from vitdetect import Detector, UnsureRule, UsageError
from vitdetect.data.dataset import load_split
from vitdetect.data.perturbations import PERTURBATIONS, STABILITY_EDITS
from vitdetect.inference.scoring import TrainedModel, fake_probabilities

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_model.pth")


@pytest.fixture
def split(tiny_data):
    return load_split(tiny_data, "test", 32)


def test_stability_edits_are_the_suites_mild_everyday_edits():
    assert [edit.name for edit in STABILITY_EDITS] == ["jpeg-75", "blur-0.5", "downscale-2"]
    assert all(PERTURBATIONS[edit.name] is edit for edit in STABILITY_EDITS)


def test_min_confidence_labels_unsure_below_it_and_keeps_p_fake(checkpoint, tiny_data, tmp_path, capsys):
    folder = tiny_data / "test"
    code, out, _ = run_main(capsys, "predict", folder, "-r", "--checkpoint", checkpoint, "--format", "json")
    plain = [json.loads(line) for line in out.splitlines()]
    cut = float(np.median([row["confidence"] for row in plain]))
    code, out, err = run_main(capsys, "predict", folder, "-r", "--checkpoint", checkpoint, "--format", "json",
                              "--min-confidence", cut)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [row["p_fake"] for row in rows] == [row["p_fake"] for row in plain]
    unsure = [row for row in rows if row["label"] == "UNSURE"]
    assert unsure and len(unsure) < len(rows)
    for row, before in zip(rows, plain, strict=True):
        assert row["confidence"] == before["confidence"]  # the probability of the label P(FAKE) gives
        assert (row["label"] == "UNSURE") == (row["confidence"] < cut)
        assert row["label"] in ("UNSURE", before["label"])
    assert all("is below" in row["reason"] for row in unsure)
    assert all(row["reason"] is None for row in rows if row["label"] != "UNSURE")
    assert f", {len(unsure)} UNSURE (see reason)" in err
    _, table, _ = run_main(capsys, "predict", folder, "-r", "--checkpoint", checkpoint, "--min-confidence", cut,
                           "--output", tmp_path / "out.csv")
    written = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert [row["label"] for row in written] == [row["label"] for row in rows] and "reason" in written[0]
    assert table.count("UNSURE") == len(unsure) + 1  # the rows and the title
    assert "UNSURE when confidence <" in table and "error / reason / note" in table


def test_min_confidence_out_of_range_is_one_line(checkpoint, tiny_data, capsys):
    message = user_error(run_main(capsys, "predict", tiny_data / "test", "-r", "--checkpoint", checkpoint,
                                  "--min-confidence", "1.5"), code=2)
    assert "--min-confidence" in message
    with pytest.raises(UsageError, match="min_confidence must be between 0 and 1"):
        UnsureRule(min_confidence=float("nan"))


def test_check_stability_is_unsure_exactly_where_an_edit_changes_the_verdict(checkpoint, split):
    trained = TrainedModel.load(checkpoint)
    clean = fake_probabilities(trained, split.images, 64)
    edited = {edit.name: fake_probabilities(trained, edit(split.images, 0), 64) for edit in STABILITY_EDITS}
    # a threshold between one image's clean and JPEG-edited P(FAKE): that edit flips that image at least
    threshold = float((clean[0] + edited["jpeg-75"][0]) / 2)
    expected = {index for index in range(len(clean)) for scores in edited.values()
                if (scores[index] >= threshold) != (clean[index] >= threshold)}
    with Detector.from_checkpoint(checkpoint, threshold=threshold, check_stability=True) as detector:
        results = detector.predict(split.paths)
    assert 0 in expected and {i for i, r in enumerate(results) if r.label == "UNSURE"} == expected
    assert np.abs(np.array([r.p_fake for r in results]) - clean).max() <= 1e-6  # the clean image's P(FAKE)
    assert "jpeg-75 (JPEG re-compression, quality 75) turns it" in results[0].reason
    for index, result in enumerate(results):
        flipped = [name for name, scores in edited.items()
                   if (scores[index] >= threshold) != (clean[index] >= threshold)]
        assert [name for name in edited if result.reason and result.reason.find(name + " (") >= 0] == flipped
    with Detector.from_checkpoint(checkpoint, threshold=threshold) as detector:  # the default: never unsure
        assert "UNSURE" not in {r.label for r in detector.predict(split.paths)}
        overridden = detector.predict(split.paths, UnsureRule(check_stability=True))
    assert [r.label for r in overridden] == [r.label for r in results]


def test_check_stability_on_the_command_line_names_the_edit(checkpoint, tiny_data, capsys):
    code, out, err = run_main(capsys, "predict", tiny_data / "test", "-r", "--checkpoint", checkpoint,
                              "--check-stability", "--threshold", "0.5", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 48
    for row in rows:
        assert (row["label"] == "UNSURE") == bool(row["reason"])
        assert not row["reason"] or any(f"{edit.name} (" in row["reason"] for edit in STABILITY_EDITS)
