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
