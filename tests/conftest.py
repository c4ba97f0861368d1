"""Shared fixtures: the repository, a CLI runner for run.py, and tiny-model settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One intra-op thread for the toy models of the tests (also in the run.py subprocesses, which inherit
# the environment): their ops are too small to gain from threads, and on a loaded machine OpenMP's
# barriers between descheduled threads made a 2-thread toy run ~60x slower than a 1-thread one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A model and schedule small enough that a whole run.py job takes seconds on a 2-core CPU.
TINY = [
    "depth=2", "width=32", "heads=1", "seq_len=32", "batch_size=4", "steps=6",
    "trainer.val_check_interval=3", "trainer.log_every_n_steps=2", "data.val_windows=4", "data.final_val_windows=16",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One token cache for the whole test session (the stdlib corpus is tokenized once)."""
    return tmp_path_factory.mktemp("data")


def run_cli(args: list[str], log_dir: Path, data_dir: Path, timeout: float = 300, check: bool = True,
            env_extra: dict[str, str] | None = None, **popen) -> subprocess.CompletedProcess:
    """`python run.py <args>` as a user runs it, with outputs under log_dir."""
    cmd = [sys.executable, str(REPO / "run.py"), *args, f"paths.log_dir={log_dir}", f"paths.data_dir={data_dir}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0", **(env_extra or {}))
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **popen)
    except subprocess.TimeoutExpired as e:  # show what the job printed before it hung
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        raise AssertionError(f"{' '.join(cmd)} did not finish in {timeout} s\n--- stdout\n{out[-4000:]}"
                             f"\n--- stderr\n{err[-4000:]}") from None
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


# pytest-xdist (pyproject's addopts: -n auto --dist loadfile) hands whole files to the workers in
# collection order; the longest file goes first so that the workers end together rather than one
# of them starting it last.
LONGEST_FIRST = ("test_paper_experiments.py",)


def pytest_collection_modifyitems(config, items):
    first = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: the others keep their order
