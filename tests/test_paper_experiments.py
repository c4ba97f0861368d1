"""Every paper table and figure runs end to end at scale=smoke, and its report has the paper's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from denselab.report.build import write_readme
from denselab.report.tables import label, paper_rows
from tests.conftest import REPO, run_cli

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml") if not p.stem.startswith("_"))
TABLES = [e for e in EXPERIMENTS if e.startswith("table") or e == "longseq"]
FIGURES = [e for e in EXPERIMENTS if e.startswith("fig")]
PAPER_TABLE = {**{f"table{i}": str(i) for i in range(1, 9)}, "longseq": "longseq"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """One log folder for the module: the figures drawn from a table's runs reuse them."""
    return tmp_path_factory.mktemp("paper_logs"), tmp_path_factory.mktemp("paper_reports")


def run_experiment(name: str, shared: tuple[Path, Path], data_dir: Path, *extra: str):
    logs, reports = shared
    return run_cli(["-m", f"experiment={name}", "scale=smoke", f"report.out_dir={reports / name}", *extra],
                   logs, data_dir, timeout=600)


def test_every_paper_table_and_figure_has_an_experiment():
    assert set(TABLES) == {f"table{i}" for i in range(1, 9)} | {"longseq"}
    assert set(FIGURES) >= {"fig2b", "fig3", "fig3c", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9", "fig10",
                            "fig11", "fig12", "fig14", "fig15"}


@pytest.mark.parametrize("name", TABLES)
def test_table_sweep_reports_every_row_of_the_papers_table(name, shared, data_dir):
    run_experiment(name, shared, data_dir)
    out = shared[1] / name
    table = pd.read_csv(out / f"{name}.csv")
    paper = paper_rows(PAPER_TABLE[name])
    expected = [label(r.model, None if pd.isna(r.dilation) else int(r.dilation),
                      None if pd.isna(r.period) else int(r.period), int(r.depth)) for r in paper.itertuples()]
    assert table["row"].tolist()[: len(paper)] == expected
    assert (table["paper_ppl"].tolist()[: len(paper)] == paper["ppl"].tolist())
    assert set(table["status"][: len(paper)]) == {"ok"}
    assert (table["ours_ppl"][: len(paper)] > 1).all() and (table["ours_n"][: len(paper)] == 1).all()
    assert (out / f"{name}.png").stat().st_size > 10_000
    info = json.loads((out / "run_info.json").read_text())
    assert info["completed"] == info["expected"] and info["failed"] == 0


@pytest.mark.parametrize("name", FIGURES)
def test_figure_sweep_draws_its_figure(name, shared, data_dir):
    run_experiment(name, shared, data_dir)
    out = shared[1] / name
    data = pd.read_csv(out / f"{name}.csv")
    assert len(data) > 0
    assert (out / f"{name}.png").stat().st_size > 10_000
    info = json.loads((out / "run_info.json").read_text())
    assert info["completed"] == info["expected"]


def test_same_training_time_gives_the_transformer_the_denseformers_time(shared, data_dir):
    run_experiment("table2", shared, data_dir)
    runs = [json.loads(p.read_text()) for p in (shared[0] / "sweeps" / "table2-smoke").glob("*/metrics.json")]
    (transformer,) = [r for r in runs if r["hparams"]["model"] == "transformer"]
    (dense,) = [r for r in runs if r["hparams"]["model"] == "denseformer"]
    chosen = transformer["same_train_time"]
    assert chosen["reference_steps"] == dense["steps"] and transformer["steps"] == chosen["steps"]
    expected = dense["steps"] * chosen["train_bps"] / chosen["reference_train_bps"]
    assert expected <= transformer["steps"] < expected + 1  # rounded up: never less time than the reference


def test_rerunning_a_table_skips_finished_runs_and_redoes_missing_and_failed_ones(shared, data_dir):
    run_experiment("table3", shared, data_dir)
    sweep = shared[0] / "sweeps" / "table3-smoke"
    runs = sorted(sweep.glob("*/metrics.json"))
    deleted, failed, kept = runs[0].parent, runs[1], runs[2]
    record = json.loads(failed.read_text())
    failed.write_text(json.dumps(record | {"status": "failed", "error": "RuntimeError: simulated"}))
    import shutil

    shutil.rmtree(deleted)
    (shared[1] / "table3" / "runs" / f"{deleted.name}.json").unlink()  # and its record: a run that never ran
    stamp = kept.stat().st_mtime_ns
    proc = run_experiment("table3", shared, data_dir)
    assert proc.stdout.count("already completed") == len(runs) - 2
    assert kept.stat().st_mtime_ns == stamp
    assert json.loads(failed.read_text())["status"] == "completed"
    assert json.loads((deleted / "metrics.json").read_text())["status"] == "completed"


def test_report_marks_missing_runs_and_keeps_their_rows(shared, data_dir, tmp_path):
    run_experiment("longseq", shared, data_dir)
    sweep = shared[0] / "sweeps" / "longseq-smoke"
    dense = next(p for p in sweep.glob("*/metrics.json") if "denseformer" in p.parent.name)
    dense.rename(dense.with_suffix(".moved"))
    try:
        from denselab.report.__main__ import main

        assert main(["experiment=longseq", "scale=smoke", f"paths.log_dir={shared[0]}",
                     f"paths.data_dir={data_dir}", f"report.out_dir={tmp_path}"]) == 0
    finally:
        dense.with_suffix(".moved").rename(dense)
    table = pd.read_csv(tmp_path / "longseq.csv").set_index("model")
    assert table.loc["denseformer", "status"] == "missing" and pd.isna(table.loc["denseformer", "ours_ppl"])
    assert table.loc["transformer", "status"] == "ok"
    assert json.loads((tmp_path / "run_info.json").read_text())["missing"] == 1


def test_experiment_readme_lists_each_scale_with_its_measured_time(tmp_path):
    folder = tmp_path / "table1"
    (folder / "mini").mkdir(parents=True)
    (folder / "mini" / "run_info.json").write_text(json.dumps(
        {"scale": "mini", "completed": 24, "expected": 24, "failed": 0, "span_s": 2520.0, "job_time_s": 2400.0,
         "machines": ["2-core x86_64 CPU, torch 2.13.0+cpu"], "commits": ["0123456789abcdef"],
         "files": ["table1.csv", "table1.png"]}))
    text = write_readme("table1", folder).read_text()
    assert text.startswith("# table1\n\nTable 1 (paper §4)")
    assert "make table1 SCALE=mini" in text
    assert "| mini | 24 / 24 | 0 | 42.0 min | 40.0 min | 2-core x86_64 CPU, torch 2.13.0+cpu | 0123456789 |" in text


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_run_of_the_experiment_is_valid_at_the_papers_scale(name):
    """The paper-scale jobs (GPU jobs, not trained here) pass every config check, model built on meta."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from denselab.config import register_resolvers, validate_config
    from hydra_plugins.denselab_sweeper.rows_sweeper import expand_rows

    register_resolvers()
    base = [f"experiment={name}", "scale=paper"] + (["data=pg19"] if name == "table4" else [])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        rows = OmegaConf.to_container(compose("config", overrides=base, return_hydra_config=True).hydra.sweeper.rows)
        jobs = expand_rows(rows, base)
        for job in jobs:
            cfg = compose("config", overrides=job)
            validate_config(cfg, job)
            assert cfg.data.tokenizer == "gpt2" and cfg.trainer.precision == "bf16-mixed"
            assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == cfg.paper.batch_size
    assert jobs
