import subprocess
import sys

from typer.testing import CliRunner

from vitdetect.cli import app

runner = CliRunner()


def test_help_is_cheap_no_torch_import():
    code = "import sys, vitdetect.cli; sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0
    assert "--batch-size" in result.output and "(default: 128)" in result.output


def test_train_through_the_cli_with_reference_aliases(train_args, tiny_data, tmp_path):
    args = [a for a in train_args if a not in {"--data-dir", str(tiny_data)}] + ["--data_dir", str(tiny_data)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "training summary" in result.output
    assert (tmp_path / "results" / "best_model.pth").is_file()


def test_bad_values_exit_2_with_one_line(tmp_path):
    for flags, expected in ([["--lr", "-1"], "--lr"], [["--batch-size", "0"], "--batch-size"],
                            [["--val-fraction", "1.5"], "--val-fraction"]):
        proc = subprocess.run([sys.executable, "-m", "vitdetect", "train", *flags], capture_output=True, text=True,
                              cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and expected in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_unparsable_number_and_unknown_flag_exit_2(tmp_path):
    for flags in (["--batch-size", "abc"], ["--no-such-flag"]):
        proc = subprocess.run([sys.executable, "-m", "vitdetect", "train", *flags], capture_output=True, text=True,
                              cwd=tmp_path)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_missing_data_dir_is_one_line(train_args, tmp_path):
    args = train_args + ["--data-dir", str(tmp_path / "nowhere")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "data dir not found" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "results" / "best_model.pth").exists()


def test_config_file_through_the_cli(train_args, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 2\nlog_every: 1\n")
    result = runner.invoke(app, train_args + ["--config", str(config), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert '"epochs": 1' in (tmp_path / "results" / "config.json").read_text()
    assert '"log_every": 1' in (tmp_path / "results" / "config.json").read_text()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("vitdetect ")
