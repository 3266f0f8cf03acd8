import pytest

from conftest import run_main, user_error
from vitdetect.config.presets import PRESETS, SCRATCH_PREFIX, recipe_for
from vitdetect.config.settings import TrainSettings


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_recipe_fills_every_unset_key(name):
    settings = TrainSettings(model=SCRATCH_PREFIX + name)
    for key, value in PRESETS[name].recipe.items():
        assert getattr(settings, key) == value, key


def test_flags_override_the_preset_recipe():
    name = next(iter(PRESETS))
    settings = TrainSettings(model=SCRATCH_PREFIX + name, lr=0.123, epochs=1)
    assert settings.lr == 0.123 and settings.epochs == 1


def test_other_models_keep_the_reference_recipe():
    assert recipe_for("google/vit-base-patch16-224") == {}
    assert TrainSettings().train_mode == "head" and TrainSettings().lr == 2e-5


def test_presets_build_the_model_they_describe():
    from vitdetect.models.build import input_side, load_model

    for name, preset in PRESETS.items():
        if preset.architecture["image_size"] > 64:
            continue  # the 224 preset is slow to build; its config path is the same
        model, _ = load_model(SCRATCH_PREFIX + name)
        assert model.config.model_type == preset.model_type
        assert input_side(model) == preset.architecture["image_size"]
        for key, value in preset.architecture.items():
            if key != "image_size":  # PVTv2 stores it as (height, width)
                assert getattr(model.config, key) == value


def test_unknown_preset_is_one_line(capsys, tiny_data, tmp_path):
    line = user_error(run_main(capsys, "train", "--data-dir", tiny_data, "--output-dir", tmp_path / "r",
                               "--model", "scratch:nope"))
    assert "unknown scratch preset 'nope'" in line


def test_crop_padding_shifts_without_resampling():
    import torch

    from vitdetect.data.transforms import build_augmentation

    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32)).float() / 255
    cropped = build_augmentation(0, False, crop_padding=4)[1](images)
    for source, out in zip(images, cropped, strict=True):
        # every output pixel value comes from the (reflect-padded) source: nothing interpolated
        assert set(out.flatten().tolist()) <= set(source.flatten().tolist())


def test_help_lists_commands_in_workflow_order_without_bool_metavars(capsys):
    code, out, _ = run_main(capsys, "--help")
    order = [out.index(f" {name} ") for name in ("download", "train", "evaluate", "predict", "plot")]
    assert code == 0 and order == sorted(order)
    code, out, _ = run_main(capsys, "train", "--help")
    assert "<bool>" not in out
