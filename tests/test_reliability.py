"""What clusters do to long runs, done to tiny ones: kills, SIGTERM, SIGUSR1 on SLURM, divergence,
moved folders, double submission, damaged checkpoints. Each test runs run.py as a user (or a
scheduler) would and checks the mechanism, not only the end state."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO, TINY, run_cli

# Long enough that a signal reliably lands in the middle of training (~60 steps/s here).
LONG = [*[a for a in TINY if not a.startswith(("steps=", "trainer.val_check_interval=", "trainer.log_every_n_steps="))],
        "steps=300", "trainer.val_check_interval=100", "trainer.log_every_n_steps=1"]


def start_cli(args: list[str], log_dir: Path, data_dir: Path, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "run.py"), *args, f"paths.log_dir={log_dir}", f"paths.data_dir={data_dir}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


def wait_for(predicate, job: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if job.poll() is not None:
            raise AssertionError(f"the job ended (exit {job.returncode}) before the awaited moment:\n"
                                 f"{job.stdout.read()[-3000:]}")
        if time.time() > deadline:
            job.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def training_started(log_dir: Path) -> bool:
    return any(log_dir.rglob("events.out.tfevents.*"))


def per_step(run_dir: Path, tag: str) -> dict[int, list[float]]:
    """Every value TensorBoard holds for `tag`, by step, over all event files of the run."""
    values: dict[int, list[float]] = {}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), purge_orphaned_data=False)
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                values.setdefault(e.step, []).append(e.value)
    return values


def run_dir_of(log_dir: Path) -> Path:
    (metrics,) = log_dir.rglob("metrics.json")
    return metrics.parent


def kill_after_first_checkpoint(args: list[str], log_dir: Path, data_dir: Path) -> Path:
    """Start a run and SIGKILL it as soon as its first mid-run last.ckpt exists; returns the run folder."""
    job = start_cli(args, log_dir, data_dir)
    wait_for(lambda: any(log_dir.rglob("checkpoints/last.ckpt")), job)
    job.send_signal(signal.SIGKILL)  # a crash: no chance to clean up
    job.communicate()
    return run_dir_of(log_dir)


def test_killed_run_resumes_from_its_mid_run_checkpoint_with_the_same_losses(tmp_path, data_dir):
    run_cli(LONG, tmp_path / "reference", data_dir)
    reference = run_dir_of(tmp_path / "reference")
    run_dir = kill_after_first_checkpoint(LONG, tmp_path / "crashed", data_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"

    resumed = run_cli(LONG, tmp_path / "crashed", data_dir)
    (line,) = [ln for ln in resumed.stdout.splitlines() if "resuming from step" in ln]
    step = int(line.split("resuming from step ")[1].split(":")[0])
    assert 100 <= step < 300 and step % 100 == 0 and line.endswith("last.ckpt")  # a mid-run checkpoint

    expected, got = per_step(reference, "train/loss"), per_step(run_dir, "train/loss")
    assert sorted(got) == sorted(expected) == list(range(300))
    for s, values in got.items():  # every step as the uninterrupted run had it, before and after the kill
        assert values == pytest.approx([expected[s][0]] * len(values), rel=1e-5), s
    done = json.loads((run_dir / "metrics.json").read_text())
    ref = json.loads((reference / "metrics.json").read_text())
    assert done["status"] == "completed" and done["steps"] == 300
    assert done["final_val_loss"] == pytest.approx(ref["final_val_loss"], rel=1e-5)
    assert [h["val_loss"] for h in done["val_history"]] == pytest.approx([h["val_loss"] for h in ref["val_history"]])


def test_sigterm_interrupts_the_sweep_exits_nonzero_and_aggregates_the_other_runs(tmp_path, data_dir):
    job = start_cli(["-m", "steps=6,3000", *[a for a in LONG if not a.startswith("steps=")]], tmp_path, data_dir)
    long_run = lambda: [p for p in tmp_path.glob("sweeps/*/*") if p.is_dir() and "steps=3000" in p.name]  # noqa: E731
    wait_for(lambda: long_run() and training_started(long_run()[0]), job)
    time.sleep(0.3)
    job.send_signal(signal.SIGTERM)  # what SLURM sends on preemption and at the time limit
    output, _ = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGTERM, output[-3000:]
    record = json.loads((long_run()[0] / "metrics.json").read_text())
    assert record["status"] == "interrupted" and 0 < record["steps"] < 3000
    assert (long_run()[0] / "checkpoints" / "interrupted.ckpt").is_file()
    assert f"interrupted by SIGTERM at step {record['steps']}" in output
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    results = pd.read_csv(sweep_dir / "results.csv")
    assert sorted(results["status"]) == ["completed", "interrupted"]


def test_sigusr1_on_slurm_requeues_the_job_and_stops_it_with_a_checkpoint(tmp_path, data_dir):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    scontrol = fake_bin / "scontrol"  # records what Lightning's requeue handler asks SLURM to do
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "denselab", "SLURM_JOB_ID": "4242",
             "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    log_dir = tmp_path / "logs"
    job = start_cli(LONG, log_dir, data_dir, env=slurm)
    wait_for(lambda: training_started(log_dir), job)
    time.sleep(0.3)
    job.send_signal(signal.SIGUSR1)  # sbatch --signal=USR1@90: the time limit is near
    output, _ = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGUSR1, output[-3000:]
    run_dir = run_dir_of(log_dir)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert list(run_dir.glob("hpc_ckpt_*.ckpt")) and (run_dir / "checkpoints" / "interrupted.ckpt").is_file()
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and "SIGUSR1" in record["error"]

    requeued = run_cli(LONG, log_dir, data_dir)  # what the requeued job runs: the same command
    assert f"resuming from step {record['steps']}: " in requeued.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_diverging_run_stops_early_as_diverged_and_the_sweep_exits_nonzero(tmp_path, data_dir):
    proc = run_cli(["-m", "lr=1e-3,1e4", *TINY], tmp_path, data_dir, check=False)
    assert proc.returncode == 1
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    results = pd.read_csv(sweep_dir / "results.csv").set_index("hp.lr")
    assert results.loc[1e-3, "status"] == "completed" and results.loc[1e4, "status"] == "diverged"
    assert results.loc[1e4, "steps"] < 6 and "non-finite training loss" in results.loc[1e4, "error"]
    diverged_dir = sweep_dir / results.loc[1e4, "run"]
    assert not list(diverged_dir.rglob("*.ckpt"))  # no checkpoint of NaN weights to resume from
    summary = pd.read_csv(sweep_dir / "summary.csv").set_index("lr")
    assert summary.loc[1e4, "n"] == 0 and summary.loc[1e4, "n_diverged"] == 1

    again = run_cli(["-m", "lr=1e-3,1e4", *TINY], tmp_path, data_dir, check=False)  # the same command again
    assert "diverged before" in again.stdout and "already completed" in again.stdout  # neither is retrained
    assert again.returncode == 1  # and the sweep still reports its diverged run


def test_a_moved_sweep_folder_keeps_its_completed_runs(tmp_path, data_dir):
    run_cli(["-m", "seed=0,1", *TINY], tmp_path / "old", data_dir)
    shutil.move(tmp_path / "old", tmp_path / "new")  # e.g. copied to shared storage
    # one run recorded by an earlier version, whose fingerprint covered the folder paths too
    (old_record,) = [p for p in (tmp_path / "new").rglob("metrics.json") if "seed=1" in str(p)]
    old_record.write_text(json.dumps({**json.loads(old_record.read_text()), "fingerprint": "0" * 64}))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "new").rglob("last.ckpt")}
    proc = run_cli(["-m", "seed=0,1", *TINY], tmp_path / "new", data_dir)
    assert proc.stdout.count("already completed") == 2
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "new").rglob("last.ckpt")} == stamps  # not retrained
    (sweep_dir,) = (tmp_path / "new" / "sweeps").iterdir()
    assert set(pd.read_csv(sweep_dir / "results.csv")["status"]) == {"completed"}


def test_a_second_run_into_the_same_folder_stops_at_once_naming_the_first(tmp_path, data_dir):
    first = start_cli([*LONG, "steps=100000"], tmp_path, data_dir)  # busy for as long as the test takes
    try:
        wait_for(lambda: training_started(tmp_path), first)
        started = time.time()
        second = run_cli([*LONG, "steps=100000"], tmp_path, data_dir, check=False)
        assert second.returncode == 75 and time.time() - started < 60
        assert f"is in use by pid {first.pid} on " in second.stderr
        assert first.poll() is None  # the first one trains on, undisturbed
    finally:
        first.kill()
        first.communicate()


def test_damaged_checkpoints_are_set_aside_and_the_run_resumes_from_the_newest_loadable(tmp_path, data_dir):
    run_dir = kill_after_first_checkpoint(LONG, tmp_path, data_dir)
    ckpt = run_dir / "checkpoints"
    shutil.copy(ckpt / "last.ckpt", ckpt / "last-v1.ckpt")  # an older, good one
    os.utime(ckpt / "last-v1.ckpt", (1, 1))
    data = (ckpt / "last.ckpt").read_bytes()
    (ckpt / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated by a full disk
    (ckpt / "interrupted.ckpt").write_bytes(b"")  # 0 bytes: killed during the save
    (ckpt / ".last.ckpt.tmp-12345").write_bytes(data[:100])  # the temp file of a killed save

    proc = run_cli(LONG, tmp_path, data_dir)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "resuming from step " in proc.stdout and "last-v1.ckpt" in proc.stdout
    assert sorted(p.name for p in (ckpt / "damaged").iterdir()) == ["interrupted.ckpt", "last.ckpt"]
    assert not (ckpt / ".last.ckpt.tmp-12345").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_missing_or_foreign_ckpt_path_is_refused_before_the_data_is_prepared(tmp_path):
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    for path in (tmp_path / "missing.ckpt", not_a_checkpoint):
        data_dir = tmp_path / f"data-{path.stem}"
        proc = run_cli([*TINY, f"ckpt_path={path}"], tmp_path / "logs", data_dir, check=False)
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: ckpt_path={path}: ") and "allowed: last, null" in line
        assert not data_dir.exists() or not any(data_dir.iterdir())  # nothing tokenized


def test_logger_csv_trains_and_records_the_final_metrics(tmp_path, data_dir):
    run_cli([*TINY, "logger=csv"], tmp_path, data_dir)
    run_dir = run_dir_of(tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    logged = pd.read_csv(run_dir / "csv" / "metrics.csv")
    assert {"train/loss", "val/loss", "hparams/final_val_ppl"} <= set(logged.columns)
    assert (run_dir / "csv" / "hparams.yaml").read_text().count("model: denseformer") == 1


def test_logger_wandb_offline_trains_and_records_the_final_metrics(tmp_path, data_dir):
    pytest.importorskip("wandb")
    run_cli([*TINY, "logger=wandb"], tmp_path, data_dir, env_extra={"WANDB_SILENT": "true"})
    run_dir = run_dir_of(tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    (records,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")  # offline: every record in one file for `wandb sync`
    logged = records.read_bytes()
    assert b"hparams/final_val_ppl" in logged and b"train/loss" in logged and b"denseformer" in logged


# ----------------------------------------------------------------------------------------------
# The record of a run folder, in-process
# ----------------------------------------------------------------------------------------------

def test_a_later_failed_attempt_keeps_the_completed_record(tmp_path):
    from omegaconf import OmegaConf

    from denselab.train import FAILED_ATTEMPTS, Job, _record

    completed = {"status": "completed", "final_val_ppl": 3.5, "hparams": {"model": "denseformer"}}
    (tmp_path / "metrics.json").write_text(json.dumps(completed))
    _record(Job(out=tmp_path, overrides=[], multirun=True), OmegaConf.create({}), "failed", OSError("disk full"))
    assert json.loads((tmp_path / "metrics.json").read_text()) == completed
    assert FAILED_ATTEMPTS[-1] == str(tmp_path)  # the sweep still exits non-zero for it
    FAILED_ATTEMPTS.pop()


def test_a_binary_metrics_json_is_named_in_one_line_and_the_run_is_trained(tmp_path, capsys):
    from omegaconf import OmegaConf

    from denselab.train import Job, finished_record

    (tmp_path / "metrics.json").write_bytes(b"\x00\x9f\xff" * 10)
    job = Job(out=tmp_path, overrides=[], multirun=True)
    assert finished_record(OmegaConf.create({"ckpt_path": "last"}), job) is None  # not skipped: trained again
    (line,) = capsys.readouterr().out.splitlines()
    assert "metrics.json: not UTF-8 text (byte 0x9f at offset 1" in line
