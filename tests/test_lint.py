"""The tree passes `ruff check` and `ruff format --check` (settings: ruff.toml; ruff pinned in requirements.txt)."""

import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT


def _ruff() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "ruff")  # the venv's pinned ruff
    found = here if os.path.isfile(here) else shutil.which("ruff")
    assert found, "ruff is not installed: pip install -r requirements.txt"
    return found


def test_ruff_check_passes_on_the_tree():
    result = subprocess.run(
        [_ruff(), "check", "--no-cache", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"ruff check . found problems (fix them; settings in ruff.toml):\n{report}"


def test_ruff_format_leaves_the_tree_unchanged():
    result = subprocess.run(
        [_ruff(), "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"ruff format would change files (run `ruff format .`):\n{report}"


def test_ruff_uses_the_pinned_version_and_project_settings():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pinned = [line.split("==")[1].strip() for line in f if line.lower().startswith("ruff==")]
    version = subprocess.run([_ruff(), "--version"], capture_output=True, text=True).stdout.split()[-1]
    assert pinned == [version]
    shown = subprocess.run(
        [_ruff(), "check", "--show-settings", "mta_clip/config.py"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert "line_length = 120" in shown and os.path.join(ROOT, "ruff.toml") in shown
