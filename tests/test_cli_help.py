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


def test_run_help_lists_the_options_a_user_chooses_and_not_the_private_ones():
    proc = subprocess.run([sys.executable, "run.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    groups = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    options = {line.split(": ")[0]: line.split(": ")[1].split(", ") for line in groups.splitlines() if ": " in line}
    assert {"data", "experiment", "model", "scale"} <= set(options)
    assert "stdlib" in options["data"] and "table1" in options["experiment"] and "paper" in options["scale"]
    private = [o for listed in options.values() for o in listed if o.startswith("_")]
    assert private == [] and not [name for name in ("_hub", "_tokens", "_paper", "_scaled") if name in proc.stdout]
