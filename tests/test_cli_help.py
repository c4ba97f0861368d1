"""Every command a user types answers --help: its usage on stdout, exit status 0, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("module", ["denselab.generate", "denselab.data", "denselab.report", "denselab.plan"])
def test_every_command_answers_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert f"python -m {module}" in proc.stdout


def test_data_refuses_an_unknown_flag_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "denselab.data", "--force"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: --force: arguments are key=value overrides (python -m denselab.data --help)")
