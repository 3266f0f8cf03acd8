"""Damaged and hostile model files, for every command that loads one: each is refused with one line, exit 1,
nothing written (tests/test_bad_input.py covers missing, empty, random, truncated-by-half and foreign checkpoints
for train --resume, evaluate and predict; this adds export and serve, flipped bytes, zips with a wrong payload,
damaged values, remote code, and ONNX files whose metadata or graph were changed)."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import make_dataset, random_checkpoint, run_main, user_error
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.utils.locking import LOCK_NAME

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("hostile") / "best_model.pth")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("hostile-data"), per_class=2, splits=("test",))


def flipped(good: Path, path: Path, record: str) -> None:
    """The good file with one byte flipped inside the zip record whose name ends with `record`."""
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        info = next(info for info in archive.infolist() if info.filename.endswith(record))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # after the local header
    raw[start + info.compress_size // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def zipped(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)


def with_values(**changes):
    return lambda good, path: torch.save({**load_checkpoint(good), **changes}, path)


def remote_folder(good: Path, path: Path) -> None:
    """A best_model/ folder (save_pretrained layout) whose config loads its model class from the hub's code."""
    path.mkdir()
    config = {"model_type": "vit", "architectures": ["EvilForImageClassification"],
              "auto_map": {"AutoModelForImageClassification": "evil/model--modeling_evil.EvilForImageClassification"}}
    (path / "config.json").write_text(json.dumps(config))
    (path / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")


# (how to make a bad file from a good checkpoint, what the one line says)
CHECKPOINTS = {
    "cut to 10%": (lambda good, path: path.write_bytes(good.read_bytes()[: good.stat().st_size // 10]), "damaged"),
    "one byte short": (lambda good, path: path.write_bytes(good.read_bytes()[:-1]), "damaged"),
    "a flipped byte in the weights": (lambda good, path: flipped(good, path, "data/0"), "checksum mismatch"),
    "a flipped byte in the pickle": (lambda good, path: flipped(good, path, "data.pkl"), "checksum mismatch"),
    "a zip of junk": (lambda good, path: zipped(path, {"archive/data.pkl": b"junk", "archive/version": b"3\n"}),
                      "damaged"),
    "a zip of a text file": (lambda good, path: zipped(path, {"weights.txt": b"w = 1\n"}), "damaged"),
    "preprocessing not a dict": (with_values(preprocessing="x"), "preprocessing is a str"),
    "preprocessing size not a number": (with_values(preprocessing={"image_size": "big", "storage_size": 32,
                                                                   "mean": [0.5] * 3, "std": [0.5] * 3}),
                                        "damaged preprocessing"),
    "std of zero": (with_values(preprocessing={"image_size": 32, "storage_size": 32, "mean": [0.5] * 3,
                                               "std": [0.0] * 3}), "damaged preprocessing"),
    "threshold not a number": (with_values(threshold="abc"), "invalid threshold 'abc'"),
    "threshold NaN": (with_values(threshold=math.nan), "invalid threshold nan"),
    "threshold over 1": (with_values(threshold=7.0), "invalid threshold 7.0"),
    "epoch not a number": (with_values(epoch="x"), "epoch is a str"),
    "metrics a list": (with_values(metrics=[1]), "metrics is a list"),
    "settings a string": (with_values(settings="x"), "settings is a str"),
    "id2label a string": (with_values(id2label="x"), "id2label is a str"),
    "a config naming remote code": (lambda good, path: with_values(model_config={
        **load_checkpoint(good)["model_config"], "auto_map": {"AutoModelForImageClassification": "evil--m.M"}})(
        good, path), "names remote code"),
    "a best_model/ folder naming remote code": (remote_folder, "is a directory, not a file"),
}
COMMANDS = ["predict", "evaluate", "export", "serve"]


def command_args(command: str, bad: Path, data: Path, out: Path) -> list:
    return {"predict": ["predict", "--checkpoint", bad, data / "test", "-r", "--output", out / "p.csv", "--cpu"],
            "evaluate": ["evaluate", "--checkpoint", bad, "--data-dir", data, "--output-dir", out / "ev", "--cpu",
                         "--cache-dir", out / "cache"],
            "export": ["export", "--checkpoint", bad, "--format", "onnx", "--output", out / "m.onnx"],
            "serve": ["serve", "--checkpoint", bad, "--port", "0", "--cpu"]}[command]


def written(folder: Path) -> list[str]:
    """Files under folder, but the empty lock a command leaves in a folder it held."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and path.name != LOCK_NAME)


@pytest.fixture
def never_serve(monkeypatch):
    """A bad checkpoint that got through would serve forever: fail instead."""
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda *args, **kwargs: pytest.fail("served a bad checkpoint"))


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_a_damaged_or_hostile_checkpoint_is_one_line_for_every_command(case, good, data, tmp_path, capsys,
                                                                      never_serve):
    make, fragment = CHECKPOINTS[case]
    bad = tmp_path / ("best_model" if "folder" in case else "bad.pth")
    make(good, bad)
    for command in COMMANDS:
        out = tmp_path / f"out-{command}"
        message = user_error(run_main(capsys, *command_args(command, bad, data, out)), code=1)
        assert fragment in message and str(bad) in message, (command, message)
        assert not out.exists() or written(out) == [], (command, written(out))


@pytest.fixture(scope="module")
def exported(good, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    path = tmp_path_factory.mktemp("hostile-onnx") / "model.onnx"
    with pytest.raises(SystemExit) as exit_info:
        from vitdetect.cli import main

        main(["export", "--checkpoint", str(good), "--format", "onnx", "--output", str(path)])
    assert exit_info.value.code == 0
    return path


def set_metadata(key: str, value: str | None):
    def change(model) -> None:
        entry = next(entry for entry in model.metadata_props if entry.key == key)
        if value is None:
            model.metadata_props.remove(entry)
        else:
            entry.value = value

    return change


def rename(kind: str, new: str):
    """Rename the graph's input or output (and its uses): the file still loads, with another interface."""
    def change(model) -> None:
        value = getattr(model.graph, kind)[0]
        old, value.name = value.name, new
        for node in model.graph.node:
            for names in (node.input, node.output):
                names[:] = [new if name == old else name for name in names]

    return change


def set_input_dim(index: int, size: int):
    def change(model) -> None:
        dim = model.graph.input[0].type.tensor_type.shape.dim[index]
        dim.ClearField("dim_param")
        dim.dim_value = size

    return change


ONNX_FILES = {
    "metadata missing": (set_metadata("mean", None), "no vitdetect metadata (mean missing)"),
    "metadata not JSON": (set_metadata("std", "[0.5, "), "damaged vitdetect metadata"),
    "std of zero": (set_metadata("std", "[0, 0, 0]"), "damaged vitdetect metadata"),
    "two means": (set_metadata("mean", "[0.5, 0.5]"), "damaged vitdetect metadata"),
    "storage size 0": (set_metadata("storage_size", "0"), "damaged vitdetect metadata"),
    "id2label a list": (set_metadata("id2label", "[1, 2]"), "damaged vitdetect metadata"),
    "no FAKE label": (set_metadata("id2label", '{"0": "REAL", "1": "OTHER"}'), "no FAKE"),
    "threshold NaN": (set_metadata("threshold", "nan"), "invalid threshold nan"),
    "negative temperature": (set_metadata("temperature", "-1"), "invalid temperature"),
    "metadata image size not the graph's": (set_metadata("image_size", "64"), "does not fit its vitdetect metadata"),
    "input renamed": (rename("input", "image"), "its graph takes image tensor(float)"),
    "output renamed": (rename("output", "scores"), "does not fit its vitdetect metadata"),
    "one input channel": (set_input_dim(1, 1), "does not fit its vitdetect metadata"),
    "another input side": (set_input_dim(2, 64), "does not fit its vitdetect metadata"),
}


@pytest.mark.parametrize("case", ONNX_FILES)
def test_an_onnx_file_with_changed_metadata_or_graph_is_one_line(case, exported, data, tmp_path, capsys):
    import onnx

    change, fragment = ONNX_FILES[case]
    model = onnx.load(exported)
    change(model)
    bad = tmp_path / "changed.onnx"
    onnx.save(model, bad)
    out = tmp_path / "out"
    message = user_error(run_main(capsys, "predict", "--backend", "onnx", "--checkpoint", bad, data / "test", "-r",
                                  "--output", out / "p.csv", "--cpu"), code=1)
    assert fragment in message and str(bad) in message, message
    assert not out.exists() or written(out) == []


def test_the_unchanged_files_still_load(good, exported, data, tmp_path, capsys):
    """The checks refuse damage, not the files vitdetect writes (a zip whose checksums all match)."""
    for backend, model in (("torch", good), ("onnx", exported)):
        code, out, err = run_main(capsys, "predict", "--backend", backend, "--checkpoint", model, data / "test",
                                  "-r", "--format", "csv", "--cpu")
        assert code == 0 and len(out.splitlines()) == 1 + 4, err
    assert load_checkpoint(good)["epoch"] == 1
