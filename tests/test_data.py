import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_dataset
from vitdetect.config.labels import ID2LABEL, LABEL2ID
from vitdetect.data.dataset import (
    TensorBatches,
    list_split,
    load_split,
    stratified_sample,
    stratified_split,
)
from vitdetect.errors import VitdetectError


def test_labels_are_explicit_not_alphabetical():
    assert LABEL2ID == {"REAL": 0, "FAKE": 1}
    assert ID2LABEL == {0: "REAL", 1: "FAKE"}


def test_discovery_counts_labels_and_ignores_non_images(tiny_data):
    (tiny_data / "train" / "REAL" / "notes.txt").write_text("not an image")
    (tiny_data / "train" / "FAKE" / "UPPER.JPG").write_bytes((tiny_data / "train" / "FAKE" / "0.jpg").read_bytes())
    image_list = list_split(tiny_data, "train")
    assert image_list.labels.count(0) == 24 and image_list.labels.count(1) == 25
    assert image_list.ignored == 1
    pairs = zip(image_list.paths, image_list.labels, strict=True)
    assert all(label == (1 if "FAKE" in str(path) else 0) for path, label in pairs)


def test_class_folders_match_case_insensitively(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3, splits=("train",))
    (root / "train" / "REAL").rename(root / "train" / "real")
    (root / "train" / "FAKE").rename(root / "train" / "Fake")
    image_list = list_split(root, "train")
    assert sorted(set(image_list.labels)) == [0, 1] and len(image_list.paths) == 6


@pytest.mark.parametrize(
    ("damage", "message"),
    [("no_dir", "data dir not found"), ("no_split", "no 'train' folder"), ("no_class", "class folder missing"),
     ("empty_class", "class folder has no images")],
)
def test_bad_layouts_say_what_is_wrong(tmp_path, damage, message):
    root = make_dataset(tmp_path / "d", per_class=2, splits=("train",))
    if damage == "no_dir":
        root = tmp_path / "nowhere"
    elif damage == "no_split":
        (root / "train").rename(root / "other")
    elif damage == "no_class":
        for path in (root / "train" / "FAKE").iterdir():
            path.unlink()
        (root / "train" / "FAKE").rmdir()
    else:
        for path in (root / "train" / "FAKE").iterdir():
            path.unlink()
    with pytest.raises(VitdetectError, match=message):
        list_split(root, "train")


def test_decode_once_into_uint8_and_cache(tmp_path, tiny_data):
    bad = tiny_data / "train" / "REAL" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    first = load_split(tiny_data, "train", None, tmp_path / "cache")
    assert first.images.dtype == torch.uint8 and first.images.shape == (48, 3, 32, 32)
    assert [path for path, _ in first.skipped] == [str(bad)]
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 1
    second = load_split(tiny_data, "train", None, tmp_path / "cache")
    assert torch.equal(first.images, second.images) and first.paths == second.paths
    assert second.skipped == first.skipped
    expected = np.asarray(Image.open(tiny_data / "train" / "REAL" / "0.jpg").convert("RGB"))
    assert np.array_equal(first.images[first.paths.index(str(tiny_data / "train" / "REAL" / "0.jpg"))]
                          .permute(1, 2, 0).numpy(), expected)


def test_cache_is_invalidated_when_a_file_changes(tmp_path, tiny_data):
    load_split(tiny_data, "train", None, tmp_path / "cache")
    target = tiny_data / "train" / "REAL" / "0.jpg"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(target)
    reloaded = load_split(tiny_data, "train", None, tmp_path / "cache")
    pixel = reloaded.images[reloaded.paths.index(str(target))][:, 0, 0]
    assert (pixel.int() - torch.tensor([10, 200, 30])).abs().max() <= 3  # JPEG rounding
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 2


def test_split_is_stratified_and_seeded():
    labels = torch.tensor([0] * 80 + [1] * 20)
    train_idx, val_idx = stratified_split(labels, 0.2, seed=42)
    assert len(val_idx) == 20 and not set(train_idx) & set(val_idx)
    assert labels[val_idx].sum().item() == 4  # the class balance is kept
    again = stratified_split(labels, 0.2, seed=42)
    other = stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(val_idx, again[1]) and not np.array_equal(val_idx, other[1])


def test_stratified_sample_keeps_balance():
    labels = torch.tensor([0] * 50 + [1] * 50)
    kept = stratified_sample(labels, 20, seed=1)
    assert len(kept) == 20 and labels[kept].sum().item() == 10


def test_tensor_batches_gather_a_whole_batch():
    images = torch.arange(10 * 3).view(10, 3)
    batch = TensorBatches(images, torch.arange(10)).__getitems__([3, 1, 7])
    assert torch.equal(batch[0], images[[3, 1, 7]]) and batch[1].tolist() == [3, 1, 7]
