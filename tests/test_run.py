"""run.py end to end, as a researcher runs it: a job, a sweep, Ctrl-C and its resumption (kills, signals,
divergence and damaged files: tests/test_reliability.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from denselab.checkpoints import load_checkpoint
from tests.conftest import REPO, TINY, run_cli


def only_run_dir(log_dir: Path) -> Path:
    (metrics,) = log_dir.rglob("metrics.json")
    return metrics.parent


def tensorboard_tags(run_dir: Path) -> tuple[set[str], set[str]]:
    scalars, plugins = set(), set()
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        try:
            plugins |= set(acc.PluginTagToContent("hparams"))
        except KeyError:  # this event file holds no HParams
            pass
    return scalars, plugins


def scalar_events(run_dir: Path, tag: str) -> list:
    events = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            events += acc.Scalars(tag)
    return events


def test_job_writes_metrics_config_checkpoint_and_tensorboard(tmp_path, data_dir):
    proc = run_cli([*TINY, "callbacks.throughput.window_size=2"], tmp_path, data_dir)  # 6 steps: rates from step 2
    run_dir = only_run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert metrics["tokens"] == 6 * 4 * 32
    assert math.isclose(metrics["final_val_ppl"], math.exp(metrics["final_val_loss"]), rel_tol=1e-9)
    assert 1 < metrics["final_val_ppl"] < 320  # better than uniform over the padded byte vocabulary
    assert metrics["final_val_tokens"] == 16 * 32
    assert metrics["params"]["mixing"] == 2 * 5 // 2 and metrics["hparams"]["dilation"] == 1
    assert metrics["data"]["source"]["python_version"] and metrics["machine"]["torch"]
    assert metrics["inference_bps"] > 0 and metrics["train_bps"] > 0
    assert metrics["speed_setup"]["inference_batch_size"] == 64 and metrics["speed_setup"]["train_batch_size"] == 4
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # weights_only=True: the suite's own load
    assert checkpoint["denselab_config"]["model"]["name"] == "denseformer" and checkpoint["global_step"] == 6
    scalars, hparams = tensorboard_tags(run_dir)
    assert {"train/loss", "train/tokens_per_s", "val/loss", "val/ppl", "final_val/loss", "final_val/ppl",
            "lr-AdamW/decay", "lr-AdamW/mixing", "hparams/final_val_ppl", "train/grad_norm",
            "train/device/items_per_sec", "train/device/flops_per_sec"} <= scalars  # ThroughputMonitor: MFU on GPUs
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= hparams
    assert "[denselab] final validation: loss" in proc.stdout and "tensorboard --logdir" in proc.stdout
    assert "parameters (5 depth-mixing" in proc.stdout
    # Figure 3c is drawn from val_history: it is TensorBoard's val/loss, step for step
    # (TensorBoard's step counts the batches before the one that triggered the validation, 2 and 5)
    val_loss = scalar_events(run_dir, "val/loss")
    assert [h["step"] for h in metrics["val_history"]] == [e.step + 1 for e in val_loss] == [3, 6]
    assert [h["val_loss"] for h in metrics["val_history"]] == pytest.approx([e.value for e in val_loss], rel=1e-6)


def test_the_result_lines_are_in_the_runs_log_as_on_the_console(tmp_path, data_dir):
    proc = run_cli([*TINY, "speed.enabled=false"], tmp_path, data_dir)
    final = [line for line in proc.stdout.splitlines() if line.startswith("[denselab] final validation: loss")]
    assert len(final) == 1  # on the console once, bare, as print() showed it
    logged = [line for line in (only_run_dir(tmp_path) / "run.log").read_text().splitlines() if "[denselab]" in line]
    final_logged = [line for line in logged if "final validation" in line]
    assert len(final_logged) == 1 and final_logged[0].endswith("] - " + final[0])  # after Hydra's time and logger
    assert any("[denselab] model=denseformer:" in line for line in logged)


def test_sweep_over_dilation_writes_one_csv_row_per_run(tmp_path, data_dir):
    proc = run_cli(["-m", "model=denseformer", "dilation=1,2", *TINY], tmp_path, data_dir)
    sweep = tmp_path / "sweeps"
    (sweep_dir,) = [p for p in sweep.iterdir() if p.is_dir()]
    assert sweep_dir.name.startswith("batch_size=4") and "dilation=1,2" in sweep_dir.name
    results = pd.read_csv(sweep_dir / "results.csv")
    assert len(results) == 2 and set(results["status"]) == {"completed"}
    assert sorted(results["hp.dilation"]) == [1, 2]
    assert sorted(results["params_mixing"]) == [3, 5]  # 2 blocks: 1x1 → 2+3 α, 2x1 → 1+2 α
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert len(summary) == 2 and list(summary["n"]) == [1, 1]
    assert "grouped over seeds" in proc.stdout


def test_seeds_are_grouped_with_mean_and_standard_error(tmp_path, data_dir):
    run_cli(["-m", "seed=0,1", *TINY], tmp_path, data_dir)
    (sweep_dir,) = [p for p in (tmp_path / "sweeps").iterdir() if p.is_dir()]
    results = pd.read_csv(sweep_dir / "results.csv")
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert len(results) == 2 and len(summary) == 1 and summary.loc[0, "n"] == 2
    ppl = results["final_val_ppl"]
    assert summary.loc[0, "final_val_ppl_mean"] == pytest.approx(ppl.mean())
    assert summary.loc[0, "final_val_ppl_stderr"] == pytest.approx(ppl.std(ddof=1) / math.sqrt(2))
    assert ppl.iloc[0] != ppl.iloc[1]  # different seeds: different models and data order


def test_failed_job_is_recorded_the_sweep_finishes_and_exits_nonzero(tmp_path, data_dir):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(40)))
    proc = run_cli(["-m", "data=text", f"data.paths=[{corpus}]", "data.text_field=text,body", *TINY],
                   tmp_path / "logs", data_dir, check=False)
    assert proc.returncode == 1
    (sweep_dir,) = [p for p in (tmp_path / "logs" / "sweeps").iterdir() if p.is_dir()]
    results = pd.read_csv(sweep_dir / "results.csv").set_index("hp.model")
    statuses = sorted(pd.read_csv(sweep_dir / "results.csv")["status"])
    assert statuses == ["completed", "failed"]
    failed = pd.read_csv(sweep_dir / "results.csv").query("status == 'failed'").iloc[0]
    assert "data.text_field='body'" in failed["error"]
    assert "NOT COMPLETED (failed)" in proc.stdout
    del results


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, data_dir):
    args = [*[a for a in TINY if not a.startswith(("steps=", "trainer.val_check_interval="))],
            "steps=400", "trainer.val_check_interval=400"]
    # Ctrl-C as a terminal sends it becomes Python's KeyboardInterrupt. The child installs that handler
    # itself: where the tests run with SIGINT ignored (nohup, a background job) it inherits the ignored
    # disposition and Python installs none. Not preexec_fn, which runs between fork and exec and can
    # deadlock the child while pytest-xdist's threads hold a lock.
    with_ctrl_c = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    cmd = [sys.executable, "-c", with_ctrl_c, str(REPO / "run.py"), *args, f"paths.log_dir={tmp_path}",
           f"paths.data_dir={data_dir}"]
    job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 240
    while not list(tmp_path.rglob("events.out.tfevents.*")) and time.time() < deadline and job.poll() is None:
        time.sleep(0.01)
    assert job.poll() is None and list(tmp_path.rglob("events.out.tfevents.*")), "the run did not start training"
    time.sleep(0.5)  # well inside training, before the first checkpoint, at the end (step 400)
    job.send_signal(signal.SIGINT)
    output, _ = job.communicate(timeout=120)
    assert job.returncode != 0
    run_dir = only_run_dir(tmp_path)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and 0 < record["steps"] < 400
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()
    assert f"interrupted by SIGINT at step {record['steps']}; checkpoint saved" in output
    assert record["error"] == "RuntimeError: stopped by SIGINT" and job.returncode == 128 + signal.SIGINT

    resumed = run_cli(args, tmp_path, data_dir)
    assert "interrupted.ckpt" in resumed.stdout.split("resuming from")[1].splitlines()[0]
    done = json.loads((run_dir / "metrics.json").read_text())
    assert done["status"] == "completed" and done["steps"] == 400
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()  # Lightning removes it after a clean end


def test_one_sweep_trains_every_architecture_node_with_a_csv_row_each(tmp_path, data_dir):
    from denselab.models.catalog import node_names

    nodes = node_names()
    run_cli(["-m", "model=" + ",".join(nodes), *TINY], tmp_path, data_dir, timeout=900)
    (sweep_dir,) = [p for p in (tmp_path / "sweeps").iterdir() if p.is_dir()]
    results = pd.read_csv(sweep_dir / "results.csv")
    assert sorted(results["hp.model"]) == sorted(nodes)
    assert set(results["status"]) == {"completed"}
    assert (results["final_val_ppl"] < 320).all()
    assert results.loc[results["hp.model"] == "transformer", "params_mixing"].item() == 0
    dilation = results.set_index("hp.model")["hp.dilation"]
    assert dilation["denseformer"] == 1 and dilation.drop("denseformer").isna().all()  # only DWA uses it
