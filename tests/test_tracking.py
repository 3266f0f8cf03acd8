"""`--report-to`: what a training and an evaluation log, read back with each tracker's own reader."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import vitdetect.utils.tracking as tracking
from conftest import run_main, user_error

pytestmark = pytest.mark.usefixtures("single_thread")
STEPS_PER_EPOCH = 3  # 38 training images of the tiny dataset in batches of 16


def read_rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def tensorboard_run(folder: Path):
    """The run's scalars and images, and its hyperparameters, through TensorBoard's own reader."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    sessions = []  # Accelerate's add_hparams writes each session into a sub-folder
    for sub in sorted(path for path in folder.iterdir() if path.is_dir() and any(path.glob("events.*"))):
        session = EventAccumulator(str(sub))
        session.Reload()
        start = HParamsPluginData.FromString(
            session.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        sessions.append({name: value.number_value if value.HasField("number_value") else value.string_value
                         for name, value in start.hparams.items()})
    return events, sessions


def series(events, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def mlflow_client(store: Path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store.resolve()}")


def mlflow_runs(client) -> list:
    experiment = client.get_experiment_by_name(tracking.PROJECT)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def metric_history(client, run, key: str) -> list[tuple[int, float]]:
    return [(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, key)]


def tracked_training(capsys, train_args, results: Path, report_to: str, run_name: str):
    """A 2-epoch tiny training that logs every batch; its history.csv and batch_history.csv rows."""
    assert run_main(capsys, *train_args, "--epochs", "2", "--log-every", "1", "--report-to", report_to,
                    "--run-name", run_name)[0] == 0
    return read_rows(results / "history.csv"), read_rows(results / "batch_history.csv")


def epoch_step(row: dict[str, float]) -> int:
    """The global optimizer step at which an epoch's numbers are logged: the step that ended it."""
    return int(row["epoch"]) * STEPS_PER_EPOCH


def batch_step(row: dict[str, float]) -> int:
    return (int(row["epoch"]) - 1) * STEPS_PER_EPOCH + int(row["step"])


def test_tensorboard_holds_the_history_the_hyperparameters_and_the_evaluation(train_args, tiny_data, tmp_path,
                                                                               capsys):
    """Must-show 1: event files read back with TensorBoard's EventAccumulator equal history.csv."""
    pytest.importorskip("tensorboard")
    results = tmp_path / "results"
    history, batches = tracked_training(capsys, train_args, results, "tensorboard", "tiny-tb")
    events, sessions = tensorboard_run(results / "tiny-tb")

    for column in ("val_loss", "val_accuracy", "val_f1", "train_loss", "lr"):
        # TensorBoard keeps scalars as float32: equal to the float32 of history.csv's value.
        assert series(events, tracking.tracker_key(column)) == [
            (epoch_step(row), np.float32(row[column])) for row in history], column
    assert series(events, "batch/loss") == [(batch_step(row), np.float32(row["loss"])) for row in batches]
    best, last = min(history, key=lambda row: row["val_loss"]), epoch_step(history[-1])
    assert series(events, "best/epoch") == [(last, best["epoch"])]
    assert series(events, "best/val/loss") == [(last, np.float32(best["val_loss"]))]
    assert set(events.Tags()["images"]) == {"figures/epoch_training_curves", "figures/batch_training_curves"}
    assert events.Images("figures/epoch_training_curves")[0].width > 300

    [hyperparameters] = sessions
    config = json.loads((results / "config.json").read_text())
    assert hyperparameters["lr"] == pytest.approx(config["settings"]["lr"])
    assert hyperparameters["batch_size"] == 16 and hyperparameters["model"] == "scratch:vit-micro-32"
    assert hyperparameters["train_mode"] == "full" and hyperparameters["run_name"] == "tiny-tb"
    assert hyperparameters["preprocessing/image_size"] == 32 and hyperparameters["preprocessing/mean"] == "0.5,0.5,0.5"
    assert hyperparameters["parameters/trainable"] == config["parameters"]["trainable"]

    # The evaluation joins the run of the same name, with the robustness table where there is one.
    (results / tracking.ROBUSTNESS_NAME).write_text(json.dumps(
        {"rows": [{"perturbation": "jpeg", "severity": 75, "accuracy": 0.75, "roc_auc": None}]}))
    assert run_main(capsys, "evaluate", "--checkpoint", results / "best_model.pth", "--data-dir", tiny_data,
                    "--cache-dir", tmp_path / "cache", "--quiet", "--report-to", "tensorboard",
                    "--run-name", "tiny-tb")[0] == 0
    metrics = json.loads((results / "metrics.json").read_text())
    events, sessions = tensorboard_run(results / "tiny-tb")
    assert len(sessions) == 1  # the evaluation logs no hyperparameters of its own
    for key, value in (("accuracy", metrics["accuracy"]), ("log_loss", metrics["log_loss"]),
                       ("per_class/FAKE/recall", metrics["per_class"]["FAKE"]["recall"]),
                       ("confusion_matrix/REAL/FAKE", metrics["confusion_matrix"][0][1]),
                       ("robustness/rows/0/accuracy", 0.75)):
        assert series(events, f"eval/test/{key}") == [(0, np.float32(value))], key
    assert "eval/test/robustness/rows/0/roc_auc" not in events.Tags()["scalars"]
    assert "eval/test/figures/roc_curve" in events.Tags()["images"]
    assert sorted(path.name for path in results.iterdir() if path.is_dir()) == ["best_model", "tiny-tb"]


@pytest.mark.slow  # MLflow creates its SQLite store with migrations: several seconds
def test_mlflow_local_store_holds_the_same_numbers_and_evaluations_join_by_name(train_args, tiny_data, tmp_path,
                                                                                capsys):
    """Must-show 2: a second tracker, MLflow's local store in the output dir, read back with MlflowClient."""
    pytest.importorskip("mlflow")
    results = tmp_path / "results"
    history, batches = tracked_training(capsys, train_args, results, "mlflow", "tiny-ml")
    client = mlflow_client(results / tracking.MLFLOW_STORE)
    [run] = mlflow_runs(client)
    assert (run.info.run_name, run.info.status) == ("tiny-ml", "FINISHED")

    for column in ("val_loss", "val_accuracy", "train_loss", "lr"):  # MLflow keeps float64: exactly equal
        assert metric_history(client, run, tracking.tracker_key(column)) == [
            (epoch_step(row), row[column]) for row in history], column
    assert metric_history(client, run, "batch/accuracy") == [(batch_step(row), row["accuracy"]) for row in batches]
    assert run.data.metrics["best/epoch"] == min(history, key=lambda row: row["val_loss"])["epoch"]
    assert run.data.params["lr"] == "0.0005" and run.data.params["preprocessing/mean"] == "0.5,0.5,0.5"
    figures = [artifact.path for artifact in client.list_artifacts(run.info.run_id, "figures")]
    assert figures == ["figures/batch_training_curves.png", "figures/epoch_training_curves.png"]
    assert (results / tracking.MLFLOW_ARTIFACTS).is_dir()  # artifacts beside the store, not in the working dir

    evaluate = ["evaluate", "--checkpoint", results / "best_model.pth", "--data-dir", tiny_data, "--cache-dir",
                tmp_path / "cache", "--quiet", "--report-to", "mlflow"]
    assert run_main(capsys, *evaluate, "--run-name", "tiny-ml")[0] == 0  # the training's run
    assert run_main(capsys, *evaluate)[0] == 0  # a run of its own
    metrics = json.loads((results / "metrics.json").read_text())
    joined, own = mlflow_runs(client)
    assert joined.info.run_id == run.info.run_id
    assert joined.data.metrics["eval/test/roc_auc"] == metrics["roc_auc"]
    assert joined.data.metrics["val/loss"] == history[-1]["val_loss"]
    assert own.info.run_name.startswith("results-test-") and "val/loss" not in own.data.metrics
    assert own.data.metrics["eval/test/accuracy"] == metrics["accuracy"]


@pytest.mark.slow
def test_a_run_interrupted_mid_epoch_and_resumed_continues_the_same_run(train_args, tmp_path, capsys,
                                                                        monkeypatch):
    """The epoch that was cut short runs again: TensorBoard hides its first events (purge_step) and MLflow
    continues the same run; the hyperparameters are logged once. A new training of that name starts over."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    results = tmp_path / "results"
    log_batch = tracking.TrainingRun.log_batch

    def interrupt_in_epoch_2(self, row, step):
        log_batch(self, row, step)
        if row["epoch"] == 2 and row["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(tracking.TrainingRun, "log_batch", interrupt_in_epoch_2)
        user_error(run_main(capsys, *train_args, "--epochs", "3", "--log-every", "1", "--report-to",
                            "tensorboard,mlflow", "--run-name", "cut"), code=130)
    assert run_main(capsys, "train", "--resume", results / "last.pth")[0] == 0

    history, batches = read_rows(results / "history.csv"), read_rows(results / "batch_history.csv")
    assert [row["epoch"] for row in history] == [1, 2, 3]
    events, sessions = tensorboard_run(results / "cut")
    assert [value for _, value in series(events, "val/loss")] == [np.float32(row["val_loss"]) for row in history]
    assert series(events, "batch/loss") == [(batch_step(row), np.float32(row["loss"])) for row in batches]
    assert len(sessions) == 1

    client = mlflow_client(results / tracking.MLFLOW_STORE)
    [run] = mlflow_runs(client)
    assert [value for _, value in metric_history(client, run, "val/loss")] == [row["val_loss"] for row in history]

    # A new training under a taken name is a new run: TensorBoard hides the old events, MLflow adds a run.
    assert run_main(capsys, *train_args, "--epochs", "1", "--report-to", "tensorboard,mlflow", "--run-name",
                    "cut", "--overwrite")[0] == 0
    [new_row] = read_rows(results / "history.csv")
    events, sessions = tensorboard_run(results / "cut")
    assert series(events, "val/loss") == [(STEPS_PER_EPOCH, np.float32(new_row["val_loss"]))]
    old, new = mlflow_runs(client)
    assert old.info.run_id == run.info.run_id and new.info.run_name == "cut"
    assert metric_history(client, new, "val/loss") == [(STEPS_PER_EPOCH, new_row["val_loss"])]


def test_an_unknown_or_missing_tracker_is_one_line_before_training_starts(train_args, tmp_path, capsys,
                                                                          monkeypatch):
    message = user_error(run_main(capsys, *train_args, "--report-to", "tensorbord"), code=2)
    assert message.startswith("error: invalid value for --report-to: unknown tracker 'tensorbord' (choose from ")
    assert "tensorboard" in message and "wandb" in message

    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    message = user_error(run_main(capsys, *train_args, "--report-to", "wandb,tensorboard"), code=1)
    assert message == "error: --report-to wandb needs the wandb package: pip install wandb"
    message = user_error(run_main(capsys, *train_args, "--report-to", "mlflow"), code=1)
    assert message == "error: --report-to mlflow needs the mlflow package: pip install 'vitdetect[tracking]'"
    assert not (tmp_path / "results").exists()  # nothing started

    assert user_error(run_main(capsys, *train_args, "--run-name", "../up"), code=2).startswith(
        "error: invalid value for --run-name: use letters, digits")


def test_hyperparameters_are_flat_and_metrics_are_their_numbers():
    config = {"settings": {"lr": 0.1, "report_to": ["tensorboard", "mlflow"], "max_images": None},
              "preprocessing": {"mean": [0.5, 0.5, 0.5], "image_size": 32}, "processes": 2}
    assert tracking.flatten_hyperparameters(config) == {
        "lr": 0.1, "report_to": "tensorboard,mlflow", "max_images": None, "preprocessing/mean": "0.5,0.5,0.5",
        "preprocessing/image_size": 32, "processes": 2}
    assert tracking.numbers({"a": 1, "b": {"c": 0.5, "d": None, "e": "text", "f": True}, "g": [{"h": 2}]},
                            "x/") == {"x/a": 1, "x/b/c": 0.5, "x/g/0/h": 2}
