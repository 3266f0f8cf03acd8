from pathlib import Path

import pytest

from vitdetect.config.settings import TrainSettings, build_settings
from vitdetect.errors import UsageError


def test_defaults_are_the_reference_recipe():
    settings = TrainSettings()
    assert settings.model == "google/vit-base-patch16-224"
    assert (settings.batch_size, settings.epochs, settings.lr, settings.weight_decay) == (128, 2, 2e-5, 0.01)
    assert (settings.patience, settings.val_fraction, settings.seed) == (5, 0.2, 42)
    assert settings.train_mode == "head"
    assert settings.data_dir == Path("data/cifake") and settings.output_dir == Path("results")


@pytest.mark.parametrize(
    ("flags", "flag_name"),
    [({"lr": -1}, "--lr"), ({"batch_size": 0}, "--batch-size"), ({"val_fraction": 1.5}, "--val-fraction"),
     ({"epochs": 0}, "--epochs"), ({"patience": 0}, "--patience"), ({"weight_decay": -0.1}, "--weight-decay")],
)
def test_invalid_values_name_the_flag(flags, flag_name):
    with pytest.raises(UsageError) as error:
        build_settings(TrainSettings, **flags)
    message = str(error.value)
    assert flag_name in message and "\n" not in message
    assert error.value.exit_code == 2


def test_config_file_sets_keys_and_flags_override(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('epochs = 7\nbatch-size = 64\nmodel = "scratch:vit-micro-32"\n')
    settings = build_settings(TrainSettings, config, epochs=3, lr=None)
    assert settings.epochs == 3  # flag wins
    assert settings.batch_size == 64  # from the file, dashes accepted
    assert settings.train_mode == "full"  # scratch presets bring their recipe


def test_yaml_config_and_unknown_key(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 4\nlearning_rat: 0.1\n")
    with pytest.raises(UsageError, match="unknown setting 'learning_rat'"):
        build_settings(TrainSettings, config)
    config.write_text("epochs: 4\n")
    assert build_settings(TrainSettings, config).epochs == 4


def test_bad_config_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        build_settings(TrainSettings, tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = = 3")
    with pytest.raises(UsageError, match="cannot parse"):
        build_settings(TrainSettings, broken)
    wrong_suffix = tmp_path / "run.ini"
    wrong_suffix.write_text("x")
    with pytest.raises(UsageError, match="must be .toml"):
        build_settings(TrainSettings, wrong_suffix)


def test_scratch_recipe_only_fills_unset_keys():
    settings = TrainSettings(model="scratch:vit-tiny-32", lr=3e-4, train_mode="last-blocks")
    assert (settings.lr, settings.train_mode, settings.schedule) == (3e-4, "last-blocks", "cosine")
