"""Sweeps through submitit (hydra/launcher=submitit_local here, slurm on a cluster): jobs run in their own
processes, in parallel, and the jobs that read another job's run wait for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from denselab.config import register_resolvers
from hydra_plugins.denselab_sweeper.rows_sweeper import phases
from tests.conftest import REPO, run_cli

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")


def test_jobs_that_read_another_jobs_run_come_in_a_later_phase():
    dense = ["model=denseformer", "dilation=4", "dwa_period=5", "seed=0"]
    matched = ["model=transformer", "match_train_time_of={model:denseformer,dilation:4,dwa_period:5}", "seed=0"]
    plain = ["model=transformer", "match_train_time_of=null", "seed=1"]
    assert phases([matched, dense, plain]) == [[dense, plain], [matched]]
    assert phases([dense, plain]) == [[dense, plain]]


def test_the_slurm_launcher_asks_for_one_task_per_gpu_on_every_node():
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                           "trainer.num_nodes=2", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 2)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        one = compose("config", overrides=["hydra/launcher=slurm", "trainer=gpu"], return_hydra_config=True)
    assert (one.hydra.launcher.gpus_per_node, one.hydra.launcher.tasks_per_node, one.hydra.launcher.nodes) == (1, 1, 1)


def test_make_table3_through_submitit_local_completes_and_writes_the_report(tmp_path, data_dir):
    reports = tmp_path / "reports"
    args = (f"hydra/launcher=submitit_local paths.log_dir={tmp_path / 'logs'} paths.data_dir={data_dir} "
            f"report.out_dir={reports}")
    # -o: the test's interpreter already has the suite installed; make must not reinstall it
    proc = subprocess.run(["make", "-s", "-o", ".venv/.installed", "table3", "SCALE=smoke", f"PY={sys.executable}",
                           f"ARGS={args}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = tmp_path / "logs" / "sweeps" / "table3-smoke"
    assert list((sweep / ".submitit").iterdir())  # the jobs went through submitit, not the basic launcher
    table = pd.read_csv(reports / "table3.csv")
    assert set(table["status"]) == {"ok"} and len(table) >= 4
    assert (reports / "table3.png").stat().st_size > 10_000


def test_table2_under_a_parallel_launcher_gives_the_transformer_the_denseformers_time(tmp_path, data_dir):
    run_cli(["-m", "experiment=table2", "scale=smoke", "hydra/launcher=submitit_local",
             f"report.out_dir={tmp_path / 'reports'}"], tmp_path, data_dir, timeout=600)
    runs = [json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "table2-smoke").glob("*/metrics.json")]
    (transformer,) = [r for r in runs if r["hparams"]["model"] == "transformer"]
    (dense,) = [r for r in runs if r["hparams"]["model"] == "denseformer"]
    assert transformer["status"] == dense["status"] == "completed"
    assert Path(transformer["same_train_time"]["reference_run"]) == Path(dense["run_dir"])
    assert transformer["same_train_time"]["reference_steps"] == dense["steps"]


def test_submitits_sigusr2_requeues_and_the_run_stops_as_preempted():
    """submitit (hydra/launcher=slurm) asks SLURM for SIGUSR2 before the time limit; its handler requeues
    the job and exits. StopOnSignal calls it at the batch boundary and stops the run itself."""
    import signal
    from types import SimpleNamespace

    from denselab.preemption import Preempted, StopOnSignal

    requeued = []

    def submitit_handler(signum, frame):  # what submitit's checkpoint_and_try_requeue ends with
        requeued.append(signum)
        raise SystemExit(-1)

    before = signal.signal(signal.SIGUSR2, submitit_handler)
    trainer = SimpleNamespace(world_size=1)
    try:
        stop = StopOnSignal(signals=("SIGUSR1", "SIGUSR2"))
        stop.on_train_start(trainer, None)
        stop.on_train_batch_end(trainer)  # no signal yet: training goes on
        signal.raise_signal(signal.SIGUSR2)
        assert requeued == []  # the handler only noted it: submitit's runs at the batch boundary
        with pytest.raises(Preempted) as stopped:
            stop.on_train_batch_end(trainer)
        assert requeued == [signal.SIGUSR2] and stopped.value.signum == signal.SIGUSR2
        stop.teardown(trainer, None, "fit")
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler
    finally:
        signal.signal(signal.SIGUSR2, before)
