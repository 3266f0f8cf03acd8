"""The package's design, kept by tools: layers and no import cycles (import-linter's contracts in pyproject.toml),
a public API that loads lazily and without torch, and the one registry of a run's files."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import vitdetect
from vitdetect.config.run_files import RUN_EVIDENCE, RUN_FILES, RUN_OUTPUTS, markdown_table

RUN_FILES_MARKER = "<!-- run-files-table -->"

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept(capsys, monkeypatch):
    """Layers from cli down to errors, no cycles between sibling modules, and no torch in config, reports and
    the command line's option parsing (see docs/architecture.md): what `lint-imports` checks."""
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is not installed (pip install -e '.[dev]')")
    monkeypatch.chdir(ROOT)  # where pyproject.toml holds the contracts
    code = cli.lint_imports(no_cache=True)
    output = capsys.readouterr().out
    assert code == 0, output
    assert "Contracts: 3 kept, 0 broken." in output


def test_the_public_api_loads_lazily_and_without_torch():
    code = ("import sys, vitdetect; assert 'torch' not in sys.modules, 'import vitdetect imported torch'; "
            "print(sorted(vitdetect.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in vitdetect.__all__:
        assert getattr(vitdetect, name) is not None, name
    assert vitdetect.Detector.__module__ == "vitdetect.inference.detector"
    with pytest.raises(AttributeError, match="has no attribute 'predict_images'"):
        vitdetect.predict_images  # noqa: B018


def test_the_import_path_readme_taught_still_works_with_a_deprecation_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from vitdetect.predict import Detector, find_images
    assert Detector is vitdetect.Detector and find_images is vitdetect.find_images
    assert any(issubclass(w.category, DeprecationWarning) and "from vitdetect import" in str(w.message)
               for w in caught)


def test_detector_is_a_context_manager_that_stops_its_thread():
    with vitdetect.Detector.from_checkpoint("builtin") as detector:
        assert detector.predict([]) == []
    with pytest.raises(RuntimeError, match="shutdown"):
        detector.prefetch.submit(print)


def test_the_run_file_registry_is_complete_and_the_docs_page_shows_it():
    assert len(set(RUN_OUTPUTS)) == len(RUN_OUTPUTS) and set(RUN_EVIDENCE) <= set(RUN_OUTPUTS)
    assert {"robustness.json", "robustness.png", "errors.png", "metrics.json", "teacher.pth"} <= set(RUN_OUTPUTS)
    table = markdown_table()
    assert all(f"`{entry.name}" in table for entry in RUN_FILES)
    page = (ROOT / "docs" / "guide" / "output-folders.md").read_text()
    assert RUN_FILES_MARKER in page  # docs/hooks.py puts markdown_table() there when the site is built
