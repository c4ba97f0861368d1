"""Run records (denselab/records.py): a report commits the metrics.json of every finished run it read
(experiments/<name>/<scale>/runs/), and a sweep on another machine skips the runs recorded there with
the same settings, so that a campaign can go on across machines. The end-to-end check (a whole league
skipped from its records) is in test_league.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from denselab import records
from denselab.config import register_resolvers, training_fingerprint
from denselab.report.runs import Run, read_run
from denselab.train import Job, finished_record
from tests.conftest import REPO

register_resolvers()


def experiment(name: str, tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", "scale=smoke", f"paths.root_dir={tmp_path}",
                                            f"report.out_dir={tmp_path / 'report'}",
                                            f"paths.output_dir={tmp_path / 'logs' / 'job'}", *overrides])


def recorded_run(cfg, tmp_path: Path, name: str = "model=transformer,seed=0", **changes) -> Path:
    """A finished record of `name` with cfg's fingerprint (as another machine's report committed it)."""
    metrics = {"status": "completed", "final_val_ppl": 42.5, "git": {"commit": "0123456789abcdef"},
               "finished_at": "2026-12-01T10:00:00+00:00", "started_at": "2026-12-01T09:50:00+00:00",
               "fingerprint": training_fingerprint(OmegaConf.to_container(cfg, resolve=True)), **changes}
    path = records.record_path(tmp_path / "report", name)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    return path


def job_for(tmp_path: Path, name: str = "model=transformer,seed=0") -> Job:
    out = tmp_path / "logs" / "sweeps" / "league-smoke" / name
    out.mkdir(parents=True)
    return Job(out=out, overrides=[], multirun=True)


def said(capsys, caplog) -> str:
    """What train.py's `[denselab]` lines said (printed, or logged where logging is set up)."""
    return capsys.readouterr().out + caplog.text


def test_a_sweep_skips_a_run_recorded_with_the_same_settings(tmp_path, capsys, caplog):
    cfg = experiment("league", tmp_path)
    recorded_run(cfg, tmp_path)
    skipped = finished_record(cfg, job_for(tmp_path))
    assert skipped is not None and skipped["final_val_ppl"] == 42.5
    text = said(capsys, caplog)
    assert "model=transformer,seed=0: recorded in" in text and "final val ppl 42.500; commit 0123456789" in text
    assert "skipping" in text


def test_a_record_of_other_settings_is_trained_again(tmp_path, capsys, caplog):
    recorded_run(experiment("league", tmp_path, "lr=0.5"), tmp_path)  # recorded at another learning rate
    assert finished_record(experiment("league", tmp_path), job_for(tmp_path)) is None
    assert "records this run with other settings; training it here" in said(capsys, caplog)


def test_a_run_started_here_is_resumed_from_its_folder_not_skipped_from_a_record(tmp_path):
    cfg = experiment("league", tmp_path)
    recorded_run(cfg, tmp_path)
    job = job_for(tmp_path)
    assert finished_record(cfg, job) is not None  # the record is used while the folder holds no run
    job.metrics_path.write_text(json.dumps({"status": "interrupted", "steps": 3}))
    assert finished_record(cfg, job) is None


def test_a_run_folder_with_an_unreadable_metrics_json_is_trained_not_skipped_from_a_record(tmp_path):
    cfg = experiment("league", tmp_path)
    recorded_run(cfg, tmp_path)
    job = job_for(tmp_path)
    assert finished_record(cfg, job) is not None  # the record is used while the folder holds no run
    job.metrics_path.write_bytes(b"\x00\x9f{")  # damaged on disk: this machine did start the run
    assert finished_record(cfg, job) is None


def test_table2s_same_time_runs_neither_write_nor_skip_from_records(tmp_path):
    """The same-time Transformer reads its reference run's metrics.json from the sweep folder."""
    cfg = experiment("table2", tmp_path)
    assert not records.uses_records(cfg) and not records.uses_records(experiment("fig3c", tmp_path))
    recorded_run(cfg, tmp_path, name="dilation=4,dwa_period=5,model=denseformer,seed=0")
    assert finished_record(cfg, job_for(tmp_path, "dilation=4,dwa_period=5,model=denseformer,seed=0")) is None


def test_ckpt_path_null_trains_a_recorded_run_again(tmp_path):
    recorded_run(experiment("league", tmp_path), tmp_path)
    job = job_for(tmp_path)
    assert finished_record(experiment("league", tmp_path), job) is not None  # ckpt_path=last: skipped
    assert finished_record(experiment("league", tmp_path, "ckpt_path=null"), job) is None


def test_figures_of_trained_models_do_not_skip_from_records(tmp_path):
    """Fig. 4's α heatmaps read the run's checkpoint, which a record does not hold."""
    cfg = experiment("fig4", tmp_path)
    assert cfg.report.figure in records.NEEDS_RUN_FOLDER and not records.uses_records(cfg)
    recorded_run(cfg, tmp_path, name="model=denseformer,seed=0")
    assert finished_record(cfg, job_for(tmp_path, "model=denseformer,seed=0")) is None


def test_every_analysis_that_loads_a_run_is_listed_as_needing_its_folder():
    from denselab.report.build import ANALYSES

    assert set(ANALYSES) - {"league"} == records.NEEDS_RUN_FOLDER  # the league reads metrics.json alone


def test_the_report_reads_a_missing_run_from_its_record(tmp_path):
    cfg = experiment("league", tmp_path)
    recorded_run(cfg, tmp_path)
    run = read_run(tmp_path / "logs" / "model=transformer,seed=0", ("model=transformer",), "0", tmp_path / "report")
    assert run.recorded and run.ok and run.metrics["final_val_ppl"] == 42.5
    assert read_run(tmp_path / "logs" / "model=mudd,seed=0", ("model=mudd",), "0", tmp_path / "report").status == "missing"


def test_records_hold_the_runs_config_and_name_no_folder_of_the_machine_that_wrote_them(tmp_path):
    run_dir = tmp_path / "logs" / "sweeps" / "league-mini" / "model=transformer,seed=1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"seq_len: 128\npaths:\n  root_dir: {tmp_path}\n"
                                         f"  data_dir: {tmp_path}/data\nmodel:\n  name: transformer\n")
    metrics = {"status": "completed", "final_val_ppl": 50.0, "run_dir": str(run_dir),
               "data": {"dir": str(tmp_path / "data" / "stdlib-bpe2048"), "tokens": 10},
               "same_train_time": {"reference_run": str(run_dir.with_name("x"))}}
    runs = [Run(run_dir, ("model=transformer",), "1", metrics),
            Run(run_dir.with_name("model=mudd,seed=1"), ("model=mudd",), "1", {"status": "running"}),
            Run(run_dir.with_name("model=last_k,seed=1"), ("model=last_k",), "1", None)]
    assert records.write_records(runs, tmp_path / "report", tmp_path) == 1  # the finished run only
    written = json.loads(records.record_path(tmp_path / "report", "model=transformer,seed=1").read_text())
    assert written["run_dir"] == "logs/sweeps/league-mini/model=transformer,seed=1"
    assert written["data"]["dir"] == "data/stdlib-bpe2048" and written["final_val_ppl"] == 50.0
    assert written["same_train_time"]["reference_run"] == "logs/sweeps/league-mini/x"
    assert written["config"] == {"seq_len": 128, "paths": {"root_dir": ".", "data_dir": "data"},
                                 "model": {"name": "transformer"}}
    assert str(tmp_path) not in json.dumps(written)
    assert metrics["run_dir"] == str(run_dir)  # the run's own record is left as it is
    assert records.run_config(tmp_path / "elsewhere", written).model.name == "transformer"  # the league's FLOPs


def in_experiments(name: str, tmp_path: Path, *overrides: str):
    """`experiment=name` at smoke with its report where the repository keeps it: experiments/<name>/smoke."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", "scale=smoke", f"paths.root_dir={tmp_path}",
                                            f"paths.output_dir={tmp_path / 'logs' / 'job'}", *overrides])


def fingerprint(cfg) -> str:
    return training_fingerprint(OmegaConf.to_container(cfg, resolve=True))


def league_record(tmp_path: Path, *overrides: str) -> Path:
    """The league's record of its Transformer, seed 0, as a report committed it."""
    league = in_experiments("league", tmp_path, "model=transformer", "seed=0", *overrides)
    path = records.record_path(league.report.out_dir, "model=transformer,seed=0")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "completed", "final_val_ppl": 42.5, "fingerprint": fingerprint(league),
                                "git": {"commit": "0123456789abcdef"}, "finished_at": "2026-12-01T10:00:00+00:00"}))
    return path


def test_the_leagues_transformer_is_the_same_training_as_table1s_48_block_transformer(tmp_path):
    league = in_experiments("league", tmp_path, "model=transformer", "seed=0")
    assert fingerprint(in_experiments("table1", tmp_path, "model=transformer", "paper.depth=48", "seed=0")) == fingerprint(league)
    assert fingerprint(in_experiments("table1", tmp_path, "model=transformer", "paper.depth=72", "seed=0")) != fingerprint(league)
    assert fingerprint(in_experiments("table1", tmp_path, "model=transformer", "paper.depth=48", "seed=1")) != fingerprint(league)


def test_a_run_recorded_by_another_experiment_is_not_trained_again_and_its_record_is_copied(tmp_path, capsys, caplog):
    league_record(tmp_path)
    table1 = in_experiments("table1", tmp_path, "model=transformer", "paper.depth=48", "seed=0")
    name = "model=transformer,paper.depth=48,seed=0"
    skipped = finished_record(table1, job_for(tmp_path, name))
    assert skipped is not None and skipped["final_val_ppl"] == 42.5
    text = said(capsys, caplog)
    assert "league/smoke/runs/model=transformer,seed=0.json, the same training (copied to" in text and "skipping" in text
    copied = json.loads(records.record_path(table1.report.out_dir, name).read_text())
    assert copied["recorded_from"] == "experiments/league/smoke/runs/model=transformer,seed=0.json"
    run = read_run(tmp_path / "logs" / name, ("model=transformer",), "0", table1.report.out_dir)
    assert run.recorded and run.ok and run.metrics["final_val_ppl"] == 42.5  # Table 1's report reads it


def test_another_experiments_record_of_other_settings_is_neither_used_nor_copied(tmp_path):
    league_record(tmp_path, "lr=0.5")
    table1 = in_experiments("table1", tmp_path, "model=transformer", "paper.depth=48", "seed=0")
    assert finished_record(table1, job_for(tmp_path, "model=transformer,paper.depth=48,seed=0")) is None
    assert not (Path(table1.report.out_dir) / records.FOLDER).exists()


def test_the_wall_time_of_a_campaign_spread_over_sessions_leaves_out_the_days_between_them():
    from datetime import datetime, timedelta

    from denselab.report.runs import busy_seconds

    t = datetime(2026, 12, 1, 9, 0)
    minutes = timedelta(minutes=1)
    two_lanes = [(t, t + 10 * minutes), (t + minutes, t + 11 * minutes), (t + 10 * minutes, t + 20 * minutes)]
    next_week = [(t + timedelta(days=7), t + timedelta(days=7) + 10 * minutes)]
    assert busy_seconds(two_lanes) == 20 * 60  # side by side: overlaps counted once
    assert busy_seconds(two_lanes + next_week) == 30 * 60
    assert busy_seconds([]) == 0.0


def test_the_recorded_commit_is_dirty_for_changed_code_not_for_rewritten_results(tmp_path):
    from denselab.io import git_info

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    for name in ("src/model.py", "experiments/table1/mini/summary.csv", "docs/notes.md", "README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "v1")
    for name in ("experiments/table1/mini/summary.csv", "docs/notes.md", "README.md"):  # what a report rewrites
        (tmp_path / name).write_text("v2\n")
    assert git_info(tmp_path / "src") == {"commit": git_info(tmp_path)["commit"], "dirty": False}
    (tmp_path / "src/model.py").write_text("v2\n")
    assert git_info(tmp_path / "src")["dirty"] is True
