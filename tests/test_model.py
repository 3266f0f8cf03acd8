import os

import pytest

from vitdetect.errors import UsageError, VitdetectError
from vitdetect.models.build import PRESETS, encoder_blocks, load_model, set_trainable


@pytest.fixture(scope="module")
def vit_base_dir(tmp_path_factory):
    """google/vit-base-patch16-224's architecture, random-init, saved like a downloaded model."""
    from transformers import ViTConfig, ViTForImageClassification

    directory = tmp_path_factory.mktemp("vit-base")
    ViTForImageClassification(ViTConfig(num_labels=1000)).save_pretrained(directory)
    return directory


def test_vit_base_head_only_counts_match_the_reference(vit_base_dir):
    model, (mean, std) = load_model(str(vit_base_dir))
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "REAL", 1: "FAKE"}
    assert set_trainable(model, "head") == (1_538, 85_800_194)
    assert mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)


def test_training_modes(vit_base_dir):
    model, _ = load_model(str(vit_base_dir))
    trainable_full, total = set_trainable(model, "full")
    assert trainable_full == total == 85_800_194
    trainable_last2, _ = set_trainable(model, "last-blocks", 2)
    block = sum(p.numel() for p in encoder_blocks(model)[-1].parameters())
    assert trainable_last2 == 1_538 + 2 * block + 2 * 768  # two blocks, final LayerNorm, head
    with pytest.raises(UsageError, match="only 12 blocks"):
        set_trainable(model, "last-blocks", 13)


def test_local_dir_loads_through_the_hub_path(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir))
    assert model.classifier.out_features == 2  # the 1000-class head was replaced
    assert model.config.label2id == {"REAL": 0, "FAKE": 1}


def test_scratch_presets_need_no_download():
    for name in PRESETS:
        model, _ = load_model(f"scratch:{name}")
        assert model.config.num_labels == 2
    tiny, _ = load_model("scratch:vit-tiny-32")
    assert 2_600_000 < sum(p.numel() for p in tiny.parameters()) < 2_800_000
    with pytest.raises(UsageError, match="unknown scratch preset"):
        load_model("scratch:nope")


def test_uncached_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(VitdetectError, match="could not download model 'someone/not-cached-vit'") as error:
        load_model("someone/not-cached-vit")
    assert "save_pretrained" in str(error.value) and "\n" not in str(error.value)


def test_a_local_pvt_folder_loads_as_the_pvt_it_is_and_other_models_are_refused(tmp_path):
    """An exported built-in detector (a PVTv2 folder) can be fine-tuned with --model FOLDER; a folder of a model
    type vitdetect does not handle is one line, not a traceback."""
    from transformers import ConvNextConfig, ConvNextForImageClassification, PvtV2Config, PvtV2ForImageClassification

    pvt = PvtV2Config(image_size=32, hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 2, 2], num_labels=2)
    PvtV2ForImageClassification(pvt).save_pretrained(tmp_path / "pvt")
    model, _ = load_model(str(tmp_path / "pvt"))
    assert type(model).__name__ == "PvtV2ForImageClassification" and model.config.num_labels == 2
    ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])).save_pretrained(
        tmp_path / "convnext")
    with pytest.raises(UsageError, match="holds a 'convnext' model: vitdetect trains and runs vit and pvt_v2"):
        load_model(str(tmp_path / "convnext"))
