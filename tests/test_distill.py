"""Knowledge distillation (`train --distill`): the loss, the teacher's file, and that a teacher alone teaches."""

import pytest
import torch
import torch.nn.functional as F

from conftest import make_dataset, run_main, seed_for_learning_tests, user_error
from vitdetect.config.run_files import TEACHER_NAME
from vitdetect.config.settings import TrainSettings
from vitdetect.training.distill import small_cnn, training_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_loss_mixes_labels_and_the_softened_teacher():
    torch.manual_seed(0)
    student, teacher, targets = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 2, (8,))
    labels_only = training_loss(student, targets, None, TrainSettings(model="scratch:vit-micro-32"))
    assert torch.allclose(labels_only, F.cross_entropy(student, targets, reduction="none"))

    settings = TrainSettings(model="scratch:vit-micro-32", distill=True, distill_alpha=0.25, distill_temperature=3.0)
    p_teacher = torch.softmax(teacher / 3, -1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / 3, -1))).sum(-1)
    expected = 0.75 * F.cross_entropy(student, targets, reduction="none") + 0.25 * 9 * kl
    assert torch.allclose(training_loss(student, targets, teacher, settings), expected, atol=1e-6)
    # a student that already agrees with its teacher has nothing left to learn from it
    teacher_only = settings.model_copy(update={"distill_alpha": 1.0})
    assert torch.allclose(training_loss(teacher, targets, teacher, teacher_only), torch.zeros(8), atol=1e-6)


def test_the_teacher_is_the_288k_cnn():
    assert sum(p.numel() for p in small_cnn().parameters()) == 287_714  # "288k"


def test_a_student_taught_by_the_teacher_alone_learns_and_stays_a_plain_vit(tmp_path, capsys):
    """--distill-alpha 1: the labels never reach the student's loss, only the teacher's probabilities do."""
    from transformers import AutoModelForImageClassification

    data, results = make_dataset(tmp_path / "cifake", per_class=64), tmp_path / "results"
    code, _, err = run_main(capsys, "train", "--data-dir", data, "--output-dir", results, "--model",
                            "scratch:vit-micro-32", "--batch-size", "16", "--epochs", "4", "--lr", "2e-3",
                            "--distill", "--distill-alpha", "1", "--teacher-epochs", "6", "--no-calibration",
                            "--cache-dir", tmp_path / "cache", "--seed", seed_for_learning_tests(42))
    assert code == 0, err
    assert "teacher: small CNN, 6 epochs" in err
    saved = torch.load(results / TEACHER_NAME, weights_only=True)
    assert saved["epochs"] == 6 and set(saved["state_dict"]) == set(small_cnn().state_dict())
    history = (results / "history.csv").read_text().splitlines()
    val_accuracy = float(history[-1].split(",")[history[0].split(",").index("val_accuracy")])
    assert val_accuracy >= 0.9, history
    model = AutoModelForImageClassification.from_pretrained(results / "best_model")
    assert type(model).__name__ == "ViTForImageClassification"


def test_a_resumed_run_keeps_its_teacher(tiny_data, tmp_path, capsys):
    results = tmp_path / "results"
    args = ["--data-dir", tiny_data, "--output-dir", results, "--model", "scratch:vit-micro-32", "--batch-size",
            "16", "--schedule", "constant", "--distill", "--teacher-epochs", "1", "--no-calibration",
            "--cache-dir", tmp_path / "cache"]
    assert run_main(capsys, "train", *args, "--epochs", "1")[0] == 0
    teacher_bytes = (results / TEACHER_NAME).read_bytes()
    code, _, err = run_main(capsys, "train", "--resume", results / "last.pth", "--epochs", "2")
    assert code == 0, err
    assert "from the run being resumed" in err and (results / TEACHER_NAME).read_bytes() == teacher_bytes
    assert run_main(capsys, "train", *args, "--epochs", "1", "--overwrite")[0] == 0  # a new run, a new teacher


def test_distilling_into_cached_features_is_refused(tiny_data, tmp_path, capsys, tiny_model_dir):
    message = user_error(run_main(capsys, "train", "--data-dir", tiny_data, "--model", tiny_model_dir,
                                  "--distill", "--output-dir", tmp_path / "r"), code=2)
    assert "--distill trains on images" in message


def test_a_run_given_a_teacher_trains_none_and_records_where_it_came_from(tiny_data, tmp_path, capsys, monkeypatch):
    import hashlib
    import json

    import vitdetect.training.distill as distill

    first, second = tmp_path / "first", tmp_path / "second"
    args = ["--data-dir", tiny_data, "--model", "scratch:vit-micro-32", "--batch-size", "16", "--epochs", "1",
            "--distill", "--teacher-epochs", "1", "--no-calibration", "--cache-dir", tmp_path / "cache"]
    assert run_main(capsys, "train", *args, "--output-dir", first)[0] == 0
    given = first / TEACHER_NAME

    def no_teacher_training(*_args, **_kwargs):
        raise AssertionError("a run given --teacher trained a teacher")

    monkeypatch.setattr(distill, "train_small_cnn", no_teacher_training)
    code, _, err = run_main(capsys, "train", *args, "--output-dir", second, "--teacher", given)
    assert code == 0, err
    assert "no teacher training" in err and "teacher: small CNN" not in err
    assert (second / TEACHER_NAME).read_bytes() == given.read_bytes()  # the folder keeps its own copy
    config = json.loads((second / "config.json").read_text())
    assert config["teacher"] == {"source": str(given.resolve()), "epochs": 1,
                                 "sha256": hashlib.sha256(given.read_bytes()).hexdigest()}
    assert json.loads((first / "config.json").read_text())["teacher"]["source"] == "trained by this run"


def test_a_teacher_of_another_image_size_or_no_teacher_file_is_refused(tmp_path, capsys):
    small, large = make_dataset(tmp_path / "small", per_class=8), make_dataset(tmp_path / "large", per_class=8, size=48)
    args = ["--model", "scratch:vit-micro-32", "--batch-size", "16", "--epochs", "1", "--distill",
            "--teacher-epochs", "1", "--no-calibration", "--cache-dir", tmp_path / "cache", "--quiet"]
    assert run_main(capsys, "train", *args, "--data-dir", large, "--output-dir", tmp_path / "large-run")[0] == 0
    other_size = tmp_path / "large-run" / TEACHER_NAME
    message = user_error(run_main(capsys, "train", *args, "--data-dir", small, "--output-dir", tmp_path / "r",
                                  "--teacher", other_size))
    assert "was trained on 48x48 images" in message and "this run's are 32x32 images" in message
    assert not (tmp_path / "r" / "best_model.pth").exists()
    message = user_error(run_main(capsys, "train", *args, "--data-dir", small, "--output-dir", tmp_path / "r2",
                                  "--teacher", tmp_path / "small"))
    assert "no such file" in message
    not_a_teacher = tmp_path / "x.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, not_a_teacher)
    message = user_error(run_main(capsys, "train", *args, "--data-dir", small, "--output-dir", tmp_path / "r3",
                                  "--teacher", not_a_teacher))
    assert "is not a teacher.pth" in message


def test_a_teacher_needs_distill(tiny_data, tmp_path, capsys):
    message = user_error(run_main(capsys, "train", "--data-dir", tiny_data, "--model", "scratch:vit-micro-32",
                                  "--teacher", tmp_path / "teacher.pth", "--output-dir", tmp_path / "r"), code=2)
    assert "--teacher is the teacher of --distill" in message


def test_a_teacher_saved_before_teachers_recorded_their_size_is_checked_against_its_runs_config(tmp_path):
    import json

    import vitdetect.errors
    from vitdetect.data.transforms import Preprocessing
    from vitdetect.training.distill import checked_teacher

    prep = Preprocessing(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    old = tmp_path / TEACHER_NAME
    torch.save({"state_dict": small_cnn().state_dict(), "epochs": 8, "seconds": 1.0}, old)
    with pytest.raises(vitdetect.errors.VitdetectError, match="records no image size"):
        checked_teacher(old, prep)
    (tmp_path / "config.json").write_text(json.dumps({"preprocessing": prep.to_dict()}))
    assert checked_teacher(old, prep)["labels"] == ["REAL", "FAKE"]
    with pytest.raises(vitdetect.errors.VitdetectError, match="trained on 32x32 images"):
        checked_teacher(old, Preprocessing(224, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
