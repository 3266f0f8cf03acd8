"""The documentation: the site builds with `mkdocs build --strict` (no broken link, anchor or API reference), its
generated pages hold what the code holds, and README.md stays a short landing page with CI's two commands."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vitdetect

ROOT = Path(__file__).resolve().parents[1]
SET_UP = 'python -m pip install -e ".[dev,download]"'
TEST = "python -m pytest"


def test_readme_is_a_landing_page_that_keeps_the_set_up_and_test_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 260
    # .ci/run runs exactly README's set-up and test commands
    assert re.search(rf"^{re.escape(SET_UP)}$", readme, re.M), SET_UP
    assert re.search(rf"^{re.escape(TEST)}$", readme, re.M), TEST


def test_readme_links_into_the_docs_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [link.split("#")[0] for link in re.findall(r"\]\(((?:docs|benchmarks)/[^)\s]+)\)", readme)]
    assert targets, "README links into docs/"
    assert [target for target in targets if not (ROOT / target).exists()] == []


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr

    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("download", "train", "evaluate", "predict", "plot", "serve", "calibrate", "export"):
        assert f'id="vitdetect-{command}"' in cli, command  # one section per command, from the Typer app
    assert "--data-dir" in cli and "--set-threshold-at-fpr" in cli

    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in sorted(set(vitdetect.__all__) - {"__version__"}):  # every public name
        assert re.search(rf'id="vitdetect\.[\w.]*\.{name}"', api), name  # rendered by mkdocstrings

    folders = (site / "guide" / "output-folders" / "index.html").read_text(encoding="utf-8")
    assert "run-files-table" not in folders and "robustness.json" in folders  # the hook put the registry there
