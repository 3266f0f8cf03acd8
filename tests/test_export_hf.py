"""`vitdetect export --format hf`: a folder that `transformers.pipeline` loads, giving predict's P(FAKE), with a
model card."""

import json
import shutil

import numpy as np
import torch

from conftest import make_image, pipeline_p_fake, random_checkpoint, run_main, user_error
from vitdetect import Detector
from vitdetect.config.commands import ExportFormat, ExportSettings
from vitdetect.data.transforms import to_model_input
from vitdetect.export.exporter import export
from vitdetect.inference.scoring import TrainedModel


def export_hf(checkpoint, output):
    return export(ExportSettings(checkpoint=checkpoint, output=output, format=ExportFormat.hf))


def test_pipeline_gives_predicts_p_fake(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "best_model.pth")
    export_hf(checkpoint, tmp_path / "hf")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for index in range(40):
        make_image(index % 2, rng).save(tmp_path / "images" / f"{index:02d}.jpg", quality=90)
    paths = sorted((tmp_path / "images").iterdir())
    ours = np.array([result.p_fake for result in Detector.from_checkpoint(checkpoint).predict(paths)])
    assert ours.std() > 0.05  # a spread of scores, not one value
    assert np.abs(pipeline_p_fake(tmp_path / "hf", paths) - ours).max() <= 1e-5

    # Other sizes: the processor resizes with torchvision, vitdetect with Pillow; the model card says they may
    # differ slightly.
    for size in (45, 100):
        make_image(1, rng, size=size).save(tmp_path / f"other{size}.png")
    others = [tmp_path / "other45.png", tmp_path / "other100.png"]
    ours = np.array([result.p_fake for result in Detector.from_checkpoint(checkpoint).predict(others)])
    assert np.abs(pipeline_p_fake(tmp_path / "hf", others) - ours).max() < 1e-2


def test_temperature_is_folded_into_the_hf_weights(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "calibrated.pth", temperature=0.5)
    result = export_hf(checkpoint, tmp_path / "hf")
    assert result.temperature == 0.5
    image = make_image(1, np.random.default_rng(1))
    image.save(tmp_path / "a.png")
    trained = TrainedModel.load(checkpoint)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        logits = trained.model(pixel_values=to_model_input(pixels, trained.prep)).logits
    calibrated = float(torch.softmax(logits / 0.5, dim=-1)[0, 1])
    assert abs(pipeline_p_fake(tmp_path / "hf", [tmp_path / "a.png"])[0] - calibrated) <= 1e-5
    assert "temperature T = 0.5, folded" in (tmp_path / "hf" / "README.md").read_text()


def test_model_card_carries_the_evaluation_and_says_where_it_fails(evaluated_run, tmp_path, capsys):
    from huggingface_hub import ModelCard

    code, out, err = run_main(capsys, "export", "--checkpoint", evaluated_run / "best_model.pth", "--format", "hf",
                              "--output", tmp_path / "hf")
    assert code == 0, err
    assert "evaluation results from" in out
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    assert {"vitdetect", "ai-generated-image-detection"} <= set(card.data.tags) and card.data.datasets
    results = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert results["accuracy"] == round(metrics["accuracy"], 4) and "roc_auc" in results
    assert {result.dataset_split for result in card.data.eval_results} == {"test"}
    for heading in ("## Intended use", "## Training data", "## Training recipe", "## Evaluation results",
                    "## Limitations and risks"):
        assert heading in card.text
    assert f"({metrics['n_images']:,} images)" in card.text and "Stable Diffusion 1.4" in card.text
    assert "Out of scope" in card.text and "scratch:vit-micro-32" in card.text
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        path.name for path in (tmp_path / "hf").iterdir()}
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o644  # readable when published


def test_card_leaves_out_metrics_of_another_checkpoint(tmp_path, capsys):
    checkpoint = random_checkpoint(tmp_path / "best_model.pth")
    export_hf(checkpoint, tmp_path / "bare")
    assert "Not evaluated on a held-out split" in (tmp_path / "bare" / "README.md").read_text()
    stale = {"class_names": ["REAL", "FAKE"], "checkpoint": "x/best_model.pth", "checkpoint_epoch": 7}
    (tmp_path / "metrics.json").write_text(json.dumps(stale))
    result = export_hf(checkpoint, tmp_path / "stale")
    assert any("not this checkpoint" in note for note in result.notes)
    assert "model-index" not in (tmp_path / "stale" / "README.md").read_text()


def test_existing_folder_is_replaced_only_with_overwrite(tmp_path, capsys):
    checkpoint = random_checkpoint(tmp_path / "best_model.pth")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "mine.txt").write_text("keep")
    args = ["export", "--checkpoint", checkpoint, "--format", "hf", "--output", tmp_path / "hf"]
    assert "already exists: pass --overwrite" in user_error(run_main(capsys, *args), 2)
    assert (tmp_path / "hf" / "mine.txt").read_text() == "keep"
    code, _, err = run_main(capsys, *args, "--overwrite")
    assert code == 0, err
    assert not (tmp_path / "hf" / "mine.txt").exists() and (tmp_path / "hf" / "README.md").is_file()
    assert not list(tmp_path.glob(".hf.*"))  # no temp folders left
    shutil.rmtree(tmp_path / "hf")
    (tmp_path / "hf").write_text("a file")
    assert "is a file; --format hf writes a folder" in user_error(run_main(capsys, *args, "--overwrite"), 2)
