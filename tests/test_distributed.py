"""Data parallel, exact: R devices × micro-batch b train what one device trains with the whole batch.

The CPU stands in for GPUs: two gloo processes that Lightning starts itself, as on a one-node machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from denselab.data.datamodule import TrainWindows
from tests.conftest import TINY, run_cli
from tests.test_reliability import per_step

TWO_CPU_PROCESSES = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.precision=32-true"]
BATCH_8 = [*[a for a in TINY if not a.startswith("batch_size=")], "batch_size=8"]


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "train.bin"
    np.arange(10_000, dtype=np.uint16).tofile(path)
    return path


def windows(token_file: Path, steps: int, *, batch_size: int, accumulate: int = 1, world_size: int = 1) -> list:
    """The first inputs of every window each step trains on, over all ranks and micro-batches, in order."""
    streams = [TrainWindows(token_file, 16, batch_size, seed=3, accumulate=accumulate, rank=r, world_size=world_size)
               for r in range(world_size)]
    out = []
    for step in range(steps):
        for micro in range(accumulate):
            for stream in streams:
                out += stream.batch(step * accumulate + micro)[0][:, 0].tolist()
    return out


def test_the_global_batch_of_a_step_does_not_depend_on_devices_or_accumulation(token_file):
    one = windows(token_file, 3, batch_size=8)
    assert len(set(one)) > 20  # random windows, not one repeated
    assert windows(token_file, 3, batch_size=4, world_size=2) == one
    assert windows(token_file, 3, batch_size=4, accumulate=2) == one
    assert windows(token_file, 3, batch_size=1, accumulate=2, world_size=4) == one


def test_ranks_train_disjoint_slices(token_file):
    rank0, rank1 = (TrainWindows(token_file, 16, 4, seed=3, rank=r, world_size=2).batch(0)[0] for r in (0, 1))
    assert not set(rank0[:, 0].tolist()) & set(rank1[:, 0].tolist())


def run_dir_of(log_dir: Path) -> Path:
    (metrics,) = log_dir.rglob("metrics.json")
    return metrics.parent


def test_two_processes_train_the_losses_of_one_device_with_the_whole_batch(tmp_path, data_dir):
    run_cli(BATCH_8, tmp_path / "one", data_dir)
    two = run_cli([*BATCH_8, *TWO_CPU_PROCESSES], tmp_path / "two", data_dir)
    one_dir, two_dir = run_dir_of(tmp_path / "one"), run_dir_of(tmp_path / "two")

    expected, got = per_step(one_dir, "train/loss"), per_step(two_dir, "train/loss")
    assert sorted(got) == sorted(expected) and len(got) >= 3
    for step, values in got.items():  # one value per step: one TensorBoard run, written by rank 0
        assert values == pytest.approx(expected[step], rel=1e-5), step
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one_dir, two_dir))
    assert b["devices"] == 2 and a["devices"] == 1
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], rel=1e-5)
    assert [h["val_loss"] for h in b["val_history"]] == pytest.approx([h["val_loss"] for h in a["val_history"]], rel=1e-5)
    assert b["tokens"] == a["tokens"] and b["final_val_tokens"] == a["final_val_tokens"]  # global counts
    assert two.stdout.count("[denselab] final validation") == 1 and two.stdout.count("[denselab] model=") == 1
    assert (two_dir / "rank1.log").is_file()  # rank 1 ran this job (its own log), not the command line again


def test_a_sweep_of_two_process_jobs_runs_each_job_once_and_aggregates(tmp_path, data_dir):
    proc = run_cli(["-m", "seed=0,1", *BATCH_8, *TWO_CPU_PROCESSES], tmp_path, data_dir)
    assert proc.stdout.count("[denselab] sweep of 2 job(s)") == 1  # rank 1 did not start the sweep again
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    results = pd.read_csv(sweep_dir / "results.csv")
    assert sorted(results["hp.seed"]) == [0, 1] and set(results["status"]) == {"completed"}
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 2 and not (tmp_path / "runs").exists()


def test_a_process_lightning_starts_for_rank_1_runs_rank_0s_job_whatever_the_command_line():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from denselab.ranks import DDP_RUN_DIR_ENV, child_argv

    sweep = ["run.py", "-m", "seed=0,1", "trainer=ddp"]
    run_dir = "/logs/sweeps/s/batch_size=8,seed=1,it's"  # run folders hold '=' and ','
    assert child_argv(sweep, {}) == sweep  # not started by Lightning for a job
    assert child_argv(sweep, {DDP_RUN_DIR_ENV: run_dir, "LOCAL_RANK": "0"}) == sweep  # rank 0 itself
    argv = child_argv(sweep, {DDP_RUN_DIR_ENV: run_dir, "LOCAL_RANK": "1"})
    assert "-m" not in argv and argv[1:5] == ["--config-path", run_dir, "--config-name", "config"]
    (run_dir_override,) = [a for a in argv if a.startswith("hydra.run.dir=")]
    (parsed,) = OverridesParser.create().parse_overrides([run_dir_override])
    assert parsed.value() == run_dir
