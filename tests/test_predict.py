import csv
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image, random_checkpoint
from vitdetect import Detector, find_images
from vitdetect.cli import main
from vitdetect.data.dataset import load_split
from vitdetect.data.decode import ImageDecodeError, decode_rgb
from vitdetect.inference.scoring import TrainedModel, fake_probabilities
from vitdetect.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_model.pth")


@pytest.fixture(scope="module")
def detector(checkpoint):
    return Detector.from_checkpoint(checkpoint, batch_size=8)


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit:
        main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return exit.value.code, out, err


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def save_exif_rotated(path):
    """A 32x16 smooth ramp stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    pixels = np.full((16, 32, 3), 60, dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, 32)  # red grows left to right
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)
    return image.transpose(Image.Transpose.ROTATE_270)


def mixed_folder(root, rng):
    """Good images of every common kind, three unreadable .jpg files, and files predict must skip."""
    root.mkdir()
    good = {
        "photo.jpg": lambda p: make_image(0, rng).save(p, quality=90),
        "render.png": lambda p: make_image(1, rng).save(p),
        "big.webp": lambda p: make_image(1, rng, size=300).save(p),
        "scan.bmp": lambda p: make_image(0, rng).save(p),
        "grey.jpg": lambda p: make_image(0, rng).convert("L").save(p),
        "deep16.png": lambda p: Image.fromarray(rng.integers(0, 65535, (20, 40), dtype=np.uint16)).save(p),
        "alpha.png": lambda p: make_image(1, rng).convert("RGBA").save(p),
        "palette.gif": lambda p: make_image(0, rng).convert("P").save(p, transparency=0),
        "print.jpg": lambda p: make_image(1, rng).convert("CMYK").save(p),
        "rotated.jpg": save_exif_rotated,
    }
    for name, save in good.items():
        save(root / name)
    assert Image.open(root / "deep16.png").mode == "I;16"
    (root / "truncated.jpg").write_bytes((root / "photo.jpg").read_bytes()[:300])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image, whatever the name says\n")
    (root / "README.txt").write_text("ignored: no image extension\n")
    (root / "._photo.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # hidden: skipped
    return sorted(good), ["empty.jpg", "notes.jpg", "truncated.jpg"]


def test_mixed_folder_judges_good_images_and_gives_one_error_row_per_bad_file(checkpoint, tmp_path, capsys):
    good, bad = mixed_folder(tmp_path / "mixed", np.random.default_rng(1))
    code, out, err = run_cli(capsys, tmp_path / "mixed", "--checkpoint", checkpoint, "--format", "csv")
    assert code == 1
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv_rows(out)}
    assert sorted(rows) == sorted(good + bad)
    for name in good:
        assert rows[name]["label"] in {"REAL", "FAKE"} and not rows[name]["error"], rows[name]
        assert 0 < float(rows[name]["p_fake"]) < 1
    for name in bad:
        assert rows[name]["error"] and not rows[name]["label"] and not rows[name]["p_fake"]
    assert "not an image" in rows["notes.jpg"]["error"] and rows["empty.jpg"]["error"] == "empty file"
    assert "ignored 1 file(s) without an image extension (README.txt)" in err
    assert "judged 10 of 13 image(s)" in err and "3 could not be read" in err


def test_decoder_handles_each_kind_as_expected(tmp_path):
    rng = np.random.default_rng(2)
    upright = np.asarray(save_exif_rotated(tmp_path / "rotated.jpg"), dtype=int)
    decoded = decode_rgb(tmp_path / "rotated.jpg").astype(int)
    assert decoded.shape == (32, 16, 3)
    assert np.abs(decoded - upright).mean() < 3 < np.abs(decoded - upright[::-1, ::-1]).mean()

    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert (decode_rgb(tmp_path / "clear.png") == 255).all()  # transparent on white

    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    assert decode_rgb(tmp_path / "deep.png")[0, :, 0].tolist() == [0, 128, 255]

    frames = [Image.new("P", (4, 4), 0), Image.new("P", (4, 4), 1)]
    frames[0].putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    frames[1].putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert decode_rgb(tmp_path / "anim.gif")[0, 0].tolist() == [255, 0, 0]  # the first frame

    make_image(0, rng).save(tmp_path / "ok.png")
    from_path = decode_rgb(tmp_path / "ok.png", size=16)
    assert from_path.shape == (16, 16, 3)
    assert (decode_rgb((tmp_path / "ok.png").read_bytes(), size=16) == from_path).all()
    assert (decode_rgb(Image.open(tmp_path / "ok.png"), size=16) == from_path).all()


def test_decompression_bombs_are_refused_in_parallel_threads(tmp_path, monkeypatch):
    from vitdetect.data.dataset import decode_images

    Image.new("RGB", (40, 40)).save(tmp_path / "warned.png")  # 1,600 px: over the limit (a warning)
    Image.new("RGB", (64, 64)).save(tmp_path / "refused.png")  # 4,096 px: over twice the limit (an error)
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("warned.png", "refused.png"):
        with pytest.raises(ImageDecodeError, match="decompression-bomb"):
            decode_rgb(tmp_path / name)
    paths = [tmp_path / name for name in ("warned.png", "refused.png", "small.png")] * 40
    _, kept, failures = decode_images(paths, 8)
    assert len(kept) == 40 and len(failures) == 80
    assert all("decompression-bomb" in reason for _, reason in failures)


def test_p_fake_equals_the_scoring_evaluate_uses(detector, checkpoint, tiny_data):
    split = load_split(tiny_data, "test", 32)
    expected = fake_probabilities(TrainedModel.load(checkpoint), split.images, batch_size=32)
    results = detector.predict(split.paths)
    assert [r.path for r in results] == split.paths
    assert np.abs(np.array([r.p_fake for r in results]) - expected).max() <= 1e-6
    assert {r.label for r in results} == {"REAL", "FAKE"}  # the fixture model is not constant


def test_p_fake_equals_evaluate_predictions_csv(checkpoint, tiny_data, tmp_path, capsys):
    pytest.importorskip("vitdetect.evaluation.evaluator")
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(tiny_data), "--output-dir",
              str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert exit.value.code == 0
    evaluated = {row["path"]: row for row in csv_rows((tmp_path / "eval" / "predictions.csv").read_text())}
    capsys.readouterr()
    code, out, _ = run_cli(capsys, tiny_data / "test", "-r", "--checkpoint", checkpoint, "--format", "csv")
    predicted = {row["path"]: row for row in csv_rows(out)}
    assert code == 0 and set(predicted) == set(evaluated)
    for path, row in predicted.items():
        assert abs(float(row["p_fake"]) - float(evaluated[path]["p_fake"])) <= 1e-6
        assert row["label"] == evaluated[path]["predicted_label"]


def test_bytes_pil_images_and_chunks_give_the_same_results_in_order(checkpoint, detector, tiny_data):
    paths = sorted((tiny_data / "test" / "FAKE").iterdir())[:13]
    broken = tiny_data / "broken.jpg"
    broken.write_bytes(b"\xff\xd8garbage")
    paths.insert(5, broken)
    whole = detector.predict(paths)
    chunked = Detector.from_checkpoint(checkpoint, batch_size=2, chunk_size=4).predict(paths)
    assert [(r.path, r.label, r.error) for r in chunked] == [(r.path, r.label, r.error) for r in whole]
    assert [r.p_fake for r in chunked if r.ok] == pytest.approx([r.p_fake for r in whole if r.ok], abs=1e-6)
    assert [r.ok for r in whole].count(False) == 1 and not whole[5].ok
    assert [r.path for r in whole] == list(map(str, paths))
    as_bytes = detector.predict([paths[0].read_bytes(), Image.open(paths[1])])
    assert as_bytes[0].path == "<bytes #0>" and as_bytes[1].path == str(paths[1])
    assert [r.p_fake for r in as_bytes] == pytest.approx([r.p_fake for r in whole[:2]], abs=1e-6)
    with pytest.raises(TypeError, match="path, bytes or a PIL image"):
        detector.predict([42])


def test_threshold_from_checkpoint_flag_overrides_it_and_confidence_follows(checkpoint, tiny_data, tmp_path,
                                                                           capsys):
    payload = torch.load(checkpoint, weights_only=True)
    stored = tmp_path / "with_threshold.pth"
    save_checkpoint(stored, {**payload, "threshold": 0.999999})
    folder = tiny_data / "test" / "FAKE"
    _, out, _ = run_cli(capsys, folder, "--checkpoint", stored, "--format", "json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert {row["label"] for row in rows} == {"REAL"}
    _, out, _ = run_cli(capsys, folder, "--checkpoint", stored, "--format", "json", "--threshold", "0")
    rows = [json.loads(line) for line in out.splitlines()]
    assert {row["label"] for row in rows} == {"FAKE"}
    assert all(row["confidence"] == row["p_fake"] and row["error"] is None for row in rows)
    _, out, _ = run_cli(capsys, folder, "--checkpoint", stored, "--format", "json", "--threshold", "0.5")
    for row in map(json.loads, out.splitlines()):
        assert row["label"] == ("FAKE" if row["p_fake"] >= 0.5 else "REAL")
        assert row["confidence"] == pytest.approx(max(row["p_fake"], 1 - row["p_fake"]))


def test_paths_folders_globs_and_output_files(checkpoint, tiny_data, tmp_path, capsys):
    test = tiny_data / "test"
    code, out, err = run_cli(capsys, test, "--recursive", "--checkpoint", checkpoint, "--output",
                             tmp_path / "out" / "all.jsonl", "-q")
    assert code == 0 and "48 image(s)" in out and len(re.findall(r"│ (REAL|FAKE) +│", out)) == 48  # the table
    assert err == ""  # --quiet: no progress or summary
    lines = (tmp_path / "out" / "all.jsonl").read_text().splitlines()
    assert len(lines) == 48 and json.loads(lines[0])["path"] == str(test / "FAKE" / "0.jpg")

    pattern = str(test / "*" / "1*.jpg")
    code, out, err = run_cli(capsys, pattern, test / "REAL" / "10.jpg", "--checkpoint", checkpoint,
                             "--format", "csv", "--output", tmp_path / "some.csv")
    rows = csv_rows(out)
    assert code == 0 and len(rows) == 22  # 1, 10-19 in both classes; the repeated file once
    assert (tmp_path / "some.csv").read_text() == out
    assert "judging" not in err  # no progress bar for less than a screenful

    shutil.copytree(test, tmp_path / "many")
    code, _, err = run_cli(capsys, tmp_path / "many", "-r", "--checkpoint", checkpoint, "--format", "csv")
    assert code == 0 and "judging: 100% 48/48" in err  # more than a screenful: progress on stderr
    assert not [p for p in tmp_path.rglob(".*")]  # no temp files left behind


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no images given"),
        (["{data}/nowhere.jpg"], "no such file or folder"),
        (["{data}/test/*.png"], "no glob match"),
        (["{data}/test"], "add --recursive"),
        (["{data}/test", "-r", "--checkpoint", "{data}/missing.pth"], "vitdetect train"),
        (["{data}/test", "-r", "--threshold", "1.5"], "--threshold"),
        (["{data}/test", "-r", "--format", "xml"], "xml"),
        (["{data}/test", "-r", "--output", "{data}"], "--output is a folder"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, message, checkpoint, tiny_data, capsys):
    args = [arg.format(data=tiny_data) for arg in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(checkpoint)]
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_find_images_dedupes_and_recurses_without_hidden_folders(tiny_data):
    (tiny_data / "test" / ".cache").mkdir()
    make_image(0, np.random.default_rng(0)).save(tiny_data / "test" / ".cache" / "x.jpg")
    found = find_images([tiny_data, tiny_data / "test" / "REAL" / "0.jpg"], recursive=True)
    assert len(found.paths) == 4 * 24 and not found.ignored
    assert all(".cache" not in str(path) for path in found.paths)


def test_images_far_from_the_training_size_get_a_note_and_a_count(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    small, large = tmp_path / "small.png", tmp_path / "large.jpg"
    make_image(0, rng).save(small)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(large)
    code, out, err = run_cli(capsys, small, large, "--checkpoint", checkpoint, "--format", "json")
    rows = {row["path"]: row for row in map(json.loads, out.splitlines())}
    assert code == 0 and rows[str(small)]["note"] is None
    assert "resized from 640x480 to 32x32" in rows[str(large)]["note"] and rows[str(large)]["label"]
    assert "1 far from the training images" in err
