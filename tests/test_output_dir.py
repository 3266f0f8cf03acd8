"""No silent overwrite: `train` refuses a folder that holds a run; --overwrite replaces it, --resume continues it,
and a resume never changes what the run means."""

import csv
import hashlib
import json

import pytest

from conftest import run_main, user_error
from vitdetect.errors import VitdetectError
from vitdetect.training.artifacts import prepare_output_dir
from vitdetect.utils.locking import HOLDER_NAME, LOCK_NAME

pytestmark = pytest.mark.usefixtures("single_thread")


def snapshot(folder):
    """Every file under folder, hidden ones included: relative path -> sha256 of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def history(folder):
    with open(folder / "history.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def test_train_into_a_finished_run_refuses_untouched_overwrite_replaces_it_resume_continues_it(
    train_args, tiny_data, tmp_path, capsys
):
    results = tmp_path / "results"
    args = [*train_args, "--schedule", "constant"]  # one epoch
    assert run_main(capsys, *args)[0] == 0
    assert run_main(capsys, "evaluate", "--checkpoint", results / "best_model.pth", "--data-dir", tiny_data,
                    "--cache-dir", tmp_path / "cache", "--quiet")[0] == 0
    finished = snapshot(results)

    message = user_error(run_main(capsys, *args, "--epochs", "2"), code=1)
    assert message == (
        f"error: output dir {results} already holds a run (best_model.pth, last.pth, best_model, history.csv, "
        "batch_history.csv, metrics.json, predictions.csv): pass --overwrite to replace it, --output-dir to train "
        f"into a new folder, or --resume {results / 'last.pth'} to continue it")
    assert snapshot(results) == finished  # not a byte touched, not a file added or removed

    assert run_main(capsys, *args, "--epochs", "2", "--overwrite")[0] == 0
    replaced = snapshot(results)
    assert [int(row["epoch"]) for row in history(results)] == [1, 2]
    assert json.loads((results / "config.json").read_text())["settings"]["epochs"] == 2
    assert replaced["best_model.pth"] != finished["best_model.pth"]
    assert "metrics.json" not in replaced and "confusion_matrix.png" not in replaced  # the old model's evaluation

    two_epochs = history(results)
    assert run_main(capsys, "train", "--resume", results / "last.pth", "--epochs", "3")[0] == 0
    assert history(results)[:2] == two_epochs and int(history(results)[2]["epoch"]) == 3


def test_resuming_a_cosine_run_with_other_epochs_is_refused_and_says_why(evaluated_run, capsys):
    """evaluated_run: a scratch preset (cosine schedule, 10% warmup) trained for its planned 2 epochs."""
    assert float(history(evaluated_run)[-1]["lr"]) == pytest.approx(0, abs=1e-12)  # the schedule has ended
    before = snapshot(evaluated_run)
    for epochs in (4, 1):
        message = user_error(run_main(capsys, "train", "--resume", evaluated_run / "last.pth", "--epochs", epochs),
                             code=2)
        assert message == (
            f"error: cannot change --epochs from 2 to {epochs} when resuming a run with the cosine schedule: its "
            "learning rate decays to 0 over the planned 2 epochs, so the resumed run would be neither that run nor "
            f"a {epochs}-epoch one; start a new run with --epochs {epochs} (runs with --schedule constant can be "
            "extended)")
    assert snapshot(evaluated_run) == before


def test_a_stale_lock_temp_files_and_a_run_stopped_in_its_first_epoch_are_not_a_run(tmp_path):
    folder = tmp_path / "results"
    (folder / ".best_model.old").mkdir(parents=True)
    for name in (LOCK_NAME, HOLDER_NAME, ".last.pth.k2j4.tmp", "config.json", "skipped_images.json"):
        (folder / name).write_text("left by a killed run")
    prepare_output_dir(folder, overwrite=False, resuming=False)
    assert sorted(path.name for path in folder.iterdir()) == [LOCK_NAME, HOLDER_NAME, "config.json",
                                                              "skipped_images.json"]


def test_an_evaluation_alone_is_a_run_and_overwrite_removes_only_run_outputs(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(VitdetectError) as refused:
        prepare_output_dir(folder, overwrite=False, resuming=False)
    assert str(refused.value) == (f"output dir {folder} already holds a run (metrics.json): pass --overwrite to "
                                  "replace it, or --output-dir to train into a new folder")

    for name in ("last.pth", "roc_curve.svg", "notes.txt", ".last.pth.a1.tmp"):
        (folder / name).write_text("")
    (folder / "best_model").mkdir()
    prepare_output_dir(folder, overwrite=False, resuming=True)  # a resumed run continues in its folder
    assert len(list(folder.iterdir())) == 5
    prepare_output_dir(folder, overwrite=True, resuming=False)
    assert [path.name for path in folder.iterdir()] == ["notes.txt"]  # the user's own file stays


def test_overwrite_leaves_nothing_of_the_old_model_not_even_its_robustness_report(train_args, tiny_data, tmp_path,
                                                                                  capsys):
    """The defect of issue 25: `evaluate --robustness` into a run's folder, then `train --overwrite` into it, kept
    the old model's robustness.json and robustness.png, and `plot` drew them beside the new model's metrics."""
    results = tmp_path / "results"
    assert run_main(capsys, *train_args)[0] == 0
    code, _, err = run_main(capsys, "evaluate", "--checkpoint", results / "best_model.pth", "--data-dir", tiny_data,
                            "--cache-dir", tmp_path / "cache", "--robustness", "--robustness-images", "16",
                            "--perturbations", "jpeg-75", "--explain-errors", "1", "--quiet")
    assert code == 0, err
    old_model = snapshot(results)
    assert {"robustness.json", "robustness.png", "metrics.json", "errors.png"} <= set(old_model)

    assert run_main(capsys, *train_args, "--overwrite")[0] == 0
    fresh = tmp_path / "fresh"
    assert run_main(capsys, *train_args, "--output-dir", fresh)[0] == 0
    assert set(snapshot(results)) == set(snapshot(fresh)), "the old model's files survived --overwrite"
    assert not {"robustness.json", "robustness.png", "metrics.json", "errors.png"} & set(snapshot(results))
