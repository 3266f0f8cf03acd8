"""The bad-input catalogue: each case gives one line, a non-zero exit, no traceback and no half-written file;
damaged images among good ones are skipped and listed while the run goes on."""

import errno
import io
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import typing
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vitdetect.models.checkpoint as checkpoints
from conftest import make_dataset, make_image, run_main, user_error
from vitdetect.config.commands import DownloadSettings, EvaluateSettings, PredictSettings
from vitdetect.config.settings import TrainSettings
from vitdetect.data.decode import ImageDecodeError, decode_rgb
from vitdetect.models.build import PRESETS
from vitdetect.models.checkpoint import load_checkpoint
from vitdetect.utils.locking import LOCK_NAME

pytestmark = pytest.mark.usefixtures("single_thread")


def files_left(directory):
    """Every file and folder under directory, hidden ones included (relative paths), but the empty lock file
    that stays in a folder a command has held (vitdetect.utils.locking)."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.name != LOCK_NAME)


def png_claiming(width, height):
    """A valid PNG header for a width x height image with no pixel data: a decompression bomb's shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# Data layouts `train` refuses: (damage to a good dataset, what the one line must say).
def _remove(path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _empty(folder):
    for path in folder.iterdir():
        path.unlink()


LAYOUTS = {
    "data dir missing": (lambda root: _remove(root), "data dir not found"),
    "data dir empty": (lambda root: [_remove(p) for p in root.iterdir()], "no 'train' folder in data dir"),
    "data dir is a file": (lambda root: (shutil.rmtree(root), root.write_text("x")), "data dir not found"),
    "train split missing": (lambda root: _remove(root / "train"), "no 'train' folder in data dir"),
    "class folder missing": (lambda root: _remove(root / "train" / "FAKE"), "class folder missing"),
    "class folder empty": (lambda root: _empty(root / "train" / "REAL"), "class folder has no images"),
    "class folder without images": (
        lambda root: [p.rename(p.with_suffix(".txt")) for p in (root / "train" / "REAL").iterdir()],
        "class folder has no images"),
    "misnamed class folders": (
        lambda root: [p.rename(p.with_name(p.name.lower() + "s")) for p in (root / "train").iterdir()],
        "class folder missing"),
    "no image decodes": (lambda root: [p.write_bytes(b"\xff\xd8\xff garbage") for p in root.rglob("*.jpg")],
                         "could be decoded"),
}


@pytest.mark.parametrize("case", LAYOUTS)
def test_bad_data_layouts_are_one_line_and_write_nothing(case, train_args, tiny_data, tmp_path, capsys):
    damage, fragment = LAYOUTS[case]
    damage(tiny_data)
    assert fragment in user_error(run_main(capsys, *train_args), code=1)
    assert files_left(tmp_path / "results") == []


def test_evaluate_without_a_test_split_is_one_line(evaluated_run, tmp_path, capsys):
    data = make_dataset(tmp_path / "d", per_class=2, splits=("train",))
    message = user_error(run_main(capsys, "evaluate", "--checkpoint", evaluated_run / "best_model.pth",
                                  "--data-dir", data, "--output-dir", tmp_path / "out"), code=1)
    assert "no 'test' folder in data dir" in message
    assert files_left(tmp_path / "out") == []


def test_lower_case_folder_names_are_accepted(train_args, tiny_data, tmp_path, capsys):
    for folder in [*tiny_data.glob("*/*"), *tiny_data.glob("*")]:
        folder.rename(folder.with_name(folder.name.lower()))
    assert run_main(capsys, *train_args)[0] == 0
    assert load_checkpoint(tmp_path / "results" / "best_model.pth")["epoch"] == 1


def save_odd_images(folder, pixels):
    """pixels as one image of each awkward kind; all must be converted to RGB, none refused."""
    Image.fromarray(pixels).convert("L").save(folder / "grey.jpg")
    Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(np.dstack([pixels, np.full((32, 32), 128, np.uint8)])).save(folder / "alpha.png")
    Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / "deep.png")  # 16-bit grey
    Image.fromarray(pixels).convert("LA").save(folder / "grey-alpha.png")
    Image.fromarray(pixels).convert("1").save(folder / "bilevel.bmp")
    Image.fromarray(pixels).resize((64, 48)).save(folder / "larger.webp")
    return 8


def save_damaged_images(real, fake, good):
    """Damaged files among good ones: each must be skipped and listed with its reason."""
    (real / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(600))
    (real / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (fake / "empty.jpg").write_bytes(b"")
    (fake / "bomb.png").write_bytes(png_claiming(100_000, 100_000))  # over twice Pillow's limit: an error
    (real / "large.png").write_bytes(png_claiming(12_000, 12_000))  # over the limit: only a warning in Pillow
    (fake / "notes.txt").write_text("not an image: ignored and counted")
    # Random bytes after a JPEG marker fail either at identification or at decoding, depending on the bytes.
    return {"corrupt.jpg": ("cannot decode image", "not an image"), "truncated.jpg": ("cannot decode image",),
            "empty.jpg": ("empty file",), "bomb.png": ("decompression-bomb limit",),
            "large.png": ("decompression-bomb limit",)}


def test_damaged_images_are_skipped_and_listed_odd_ones_converted_and_the_run_goes_on(train_args, tiny_data,
                                                                                     tmp_path, capsys, recwarn):
    real, fake = tiny_data / "train" / "REAL", tiny_data / "train" / "FAKE"
    odd = save_odd_images(fake, np.asarray(make_image(1, np.random.default_rng(1))))
    damaged = save_damaged_images(real, fake, (real / "0.jpg").read_bytes())
    code, _, err = run_main(capsys, *[arg for arg in train_args if arg != "--quiet"])
    assert code == 0, err
    listed = tmp_path / "results" / "skipped_images.json"
    assert f"ignored 1 non-image file(s) in {tiny_data}" in err
    assert f"skipped {len(damaged)} image(s) that failed to decode; list in {listed}" in err
    reasons = {os.path.basename(row["path"]): row["reason"] for row in json.loads(listed.read_text())}
    assert reasons.keys() == damaged.keys()
    assert all(any(expected in reason for expected in damaged[name]) for name, reason in reasons.items()), reasons
    counts = re.search(r": (\d+) train / (\d+) validation images", err)
    assert int(counts[1]) + int(counts[2]) == 2 * 24 + odd  # every good and every odd image, no damaged one
    assert load_checkpoint(tmp_path / "results" / "best_model.pth")["epoch"] == 1
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]  # no stray lines


def test_odd_modes_decode_to_the_expected_rgb(tmp_path):
    pixels = np.asarray(make_image(0, np.random.default_rng(2)))
    save_odd_images(tmp_path, pixels)
    grey = decode_rgb(tmp_path / "grey.jpg")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    cmyk_error = np.abs(decode_rgb(tmp_path / "cmyk.jpg").astype(int) - pixels).mean()
    assert cmyk_error < 15 < np.abs(decode_rgb(tmp_path / "cmyk.jpg").astype(int) - (255 - pixels)).mean()
    assert decode_rgb(tmp_path / "larger.webp", size=32).shape == (32, 32, 3)
    for name in ("palette.png", "alpha.png", "deep.png", "grey-alpha.png", "bilevel.bmp"):
        assert decode_rgb(tmp_path / name).shape == (32, 32, 3), name


def test_images_over_the_decompression_bomb_limit_are_refused(tmp_path, monkeypatch):
    (tmp_path / "claims.png").write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(ImageDecodeError, match="decompression-bomb"):
        decode_rgb(tmp_path / "claims.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "warned.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: over the limit, under twice it
    with pytest.raises(ImageDecodeError, match="decompression-bomb"):
        decode_rgb(tmp_path / "warned.png")


# Checkpoints every command must refuse in one line: (how to make one from a good one, what the line says).
def _with(**changes):
    return lambda good, path: torch.save({**load_checkpoint(good), **changes}, path)


def _other_architecture(good, path):
    payload = load_checkpoint(good)
    torch.save({**payload, "model_config": {**payload["model_config"], **PRESETS["vit-tiny-32"].architecture}}, path)


def _without(key):
    return lambda good, path: torch.save({k: v for k, v in load_checkpoint(good).items() if k != key}, path)


CHECKPOINTS = {
    "does not exist": (lambda good, path: None, "checkpoint not found"),
    "is a directory": (lambda good, path: path.mkdir(), "is a directory, not a file"),
    "is random bytes": (lambda good, path: path.write_bytes(os.urandom(4096)), "damaged"),
    "is empty": (lambda good, path: path.write_bytes(b""), "damaged"),
    "is a text file": (lambda good, path: path.write_text("weights = 1\n"), "damaged"),
    "is an image": (lambda good, path: make_image(0, np.random.default_rng(0)).save(path, "JPEG"), "damaged"),
    "is truncated": (lambda good, path: path.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
                     "damaged"),
    "is another torch file": (lambda good, path: torch.save({"weights": torch.zeros(3)}, path),
                              "not a vitdetect checkpoint"),
    "has another architecture": (_other_architecture, "do not fit its model"),
    "lacks its weights": (_without("state_dict"), "is incomplete: no state_dict"),
    "is from a newer vitdetect": (_with(format_version=99), "written by a newer vitdetect"),
}


@pytest.mark.parametrize("command", ["train --resume", "evaluate", "predict"])
@pytest.mark.parametrize("case", CHECKPOINTS)
def test_bad_checkpoints_are_one_line_for_every_command(case, command, evaluated_run, tiny_data, tmp_path, capsys):
    make, fragment = CHECKPOINTS[case]
    good = evaluated_run / ("last.pth" if command == "train --resume" else "best_model.pth")
    bad = tmp_path / "bad.pth"
    make(good, bad)
    out = tmp_path / "out"
    args = {"train --resume": ["train", "--resume", bad],
            "evaluate": ["evaluate", "--checkpoint", bad, "--data-dir", tiny_data, "--output-dir", out],
            "predict": ["predict", "--checkpoint", bad, tiny_data / "test" / "REAL", "--output", out / "p.csv"]}
    message = user_error(run_main(capsys, *args[command]))
    assert fragment in message and str(bad) in message, message
    assert not list(out.glob("*.*")) and files_left(evaluated_run.parent / "results") == files_left(
        evaluated_run)  # nothing written anywhere


def test_resuming_from_a_best_checkpoint_says_it_needs_last(evaluated_run, capsys):
    message = user_error(run_main(capsys, "train", "--resume", evaluated_run / "best_model.pth"), code=1)
    assert "'best' checkpoint; expected a 'last' one" in message


def _numeric(annotation):
    return next((t for t in (int, float) if t in (annotation, *typing.get_args(annotation))), None)


def invalid_numbers(settings_class):
    """(flag, value) for every numeric setting: not a number, outside its bounds, not finite, not whole."""
    for name, info in settings_class.model_fields.items():
        kind = _numeric(info.annotation)
        if kind is None:
            continue
        flag, values = "--" + name.replace("_", "-"), ["abc", ""]
        for bound in info.metadata:
            for side, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
                if getattr(bound, side, None) is not None:
                    values.append(str(getattr(bound, side) + step * (1 if kind is int else 0.5)))
        values += ["nan", "inf", "-inf"] if kind is float else ["1.5", "1e3"]
        yield from ((flag, value) for value in values)


NUMBER_CASES = [(command, flag, value) for command, cls in (("train", TrainSettings), ("evaluate", EvaluateSettings),
                                                            ("predict", PredictSettings),
                                                            ("download", DownloadSettings))
                for flag, value in invalid_numbers(cls)]


def test_every_numeric_flag_of_every_command_refuses_invalid_numbers(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    context = {"train": ["--data-dir", tmp_path / "none", "--output-dir", tmp_path / "out"],
               "evaluate": ["--checkpoint", tmp_path / "none.pth", "--output-dir", tmp_path / "out"],
               "predict": ["--checkpoint", tmp_path / "none.pth", tmp_path / "none.jpg"],
               "download": ["--from-zip", tmp_path / "none.zip", "--dest", tmp_path / "out"]}
    assert len({flag for _, flag, _ in NUMBER_CASES}) >= 18
    for command, flag, value in NUMBER_CASES:
        message = user_error(run_main(capsys, command, *context[command], flag, value), code=2)
        assert flag in message and "No such option" not in message, (command, flag, value, message)
    assert files_left(tmp_path) == []


def test_an_unwritable_output_dir_is_one_line(train_args, tmp_path, capsys, evaluated_run, tiny_data):
    """Tests may run as root, where permissions do not stop writes: a path under a regular file does."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for output, fragment in ((blocker / "results", "Not a directory"), (blocker, "File exists")):
        message = user_error(run_main(capsys, *train_args, "--output-dir", output), code=1)
        assert message == f"error: cannot write to output dir {output}: {fragment}"
    message = user_error(run_main(capsys, "predict", "--checkpoint", evaluated_run / "best_model.pth",
                                  tiny_data / "test" / "REAL", "--output", blocker / "p.csv", "--quiet"))
    assert str(blocker / "p.csv") in message
    assert blocker.read_text() == ""


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_leaves_no_half_file(train_args, tmp_path,
                                                                                       capsys, monkeypatch):
    """The second last.pth write runs out of space half-way: epoch 1's last.pth stays, complete."""
    save, writes = torch.save, []

    def save_until_full(obj, path, *args, **kwargs):
        if ".last.pth." in str(path):
            writes.append(path)
            if len(writes) == 2:
                path.write_bytes(b"PK\x03\x04 half a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", save_until_full)
    results = tmp_path / "results"
    message = user_error(run_main(capsys, *train_args, "--epochs", "3"), code=1)
    assert message == f"error: {results / 'last.pth'}: No space left on device"
    assert load_checkpoint(results / "last.pth", kind="last")["epoch"] == 1
    assert not [name for name in files_left(results) if name.endswith(".tmp")]


def test_a_file_size_limit_hit_by_torch_and_safetensors_writers_is_one_line(train_args, tmp_path):
    """A real OS-level write failure (RLIMIT_FSIZE: EFBIG) inside torch's and safetensors' own writers."""
    limit = 150_000  # best_model.pth (~110 kB) fits, last.pth (~350 kB) does not

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "vitdetect", *train_args], capture_output=True, text=True,
                          preexec_fn=limit_file_size)
    results = tmp_path / "results"
    message = user_error((proc.returncode, proc.stdout, proc.stderr), code=1)
    assert message.startswith(f"error: {results / 'last.pth'}: "), message
    assert not (results / "last.pth").exists() and not [n for n in files_left(results) if n.endswith(".tmp")]
    assert load_checkpoint(results / "best_model.pth")["epoch"] == 1


IMAGE_MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK", "YCbCr"]
IMAGE_FORMATS = ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM", "ICO", "TGA"]


@st.composite
def image_files(draw):
    """The bytes of a small random image in a random mode and format, often damaged."""
    image = Image.new(draw(st.sampled_from(IMAGE_MODES)), (draw(st.integers(1, 40)), draw(st.integers(1, 40))))
    image.frombytes(draw(st.binary(min_size=len(image.tobytes()), max_size=len(image.tobytes()))))
    buffer = io.BytesIO()
    fmt = draw(st.sampled_from(IMAGE_FORMATS))
    try:
        image.save(buffer, fmt)
    except (OSError, ValueError, KeyError):  # a mode the format cannot hold
        image.convert("RGB").save(buffer, fmt)
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "truncate", "overwrite", "insert"]))
    if damage == "truncate":
        del data[draw(st.integers(0, len(data))):]
    elif damage == "overwrite":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif damage == "insert":
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(max_size=64))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(image_files(), st.binary(max_size=2048)), st.sampled_from([None, 8, 32]))
def test_the_decoder_returns_rgb_or_a_decode_error_for_any_bytes(data, size):
    try:
        rgb = decode_rgb(data, size)
    except ImageDecodeError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert size is None or rgb.shape[:2] == (size, size)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    from vitdetect import Detector
    from vitdetect.data.transforms import Preprocessing
    from vitdetect.models.build import load_model
    from vitdetect.models.checkpoint import model_payload, save_checkpoint

    model, (mean, std) = load_model("scratch:vit-micro-32")
    path = tmp_path_factory.mktemp("detector") / "best_model.pth"
    save_checkpoint(path, model_payload(model, {}, Preprocessing(32, 32, mean, std), 1, {}))
    return Detector.from_checkpoint(path, batch_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(image_files(), st.binary(max_size=512)), min_size=1, max_size=6))
def test_predict_gives_a_result_or_an_error_row_for_any_bytes(detector, sources):
    results = detector.predict(sources)
    assert len(results) == len(sources)
    for result in results:
        assert (result.error is None) == (result.label in {"REAL", "FAKE"})
        assert result.error is not None or 0.0 <= result.p_fake <= 1.0
