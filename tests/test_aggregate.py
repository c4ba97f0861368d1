"""denselab.aggregate (results.csv, summary.csv, the printed summary) and the report's table, from
hand-written metrics.json records: diverged runs, NaN metrics and unreadable files. Nothing is trained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from scipy import stats
import pytest

from denselab.aggregate import aggregate, main
from denselab.report.runs import Run, run_info
from denselab.report.tables import build_table

HPARAMS = {"model": "denseformer", "depth": 2, "width": 32, "dilation": 1, "dwa_period": 1, "lr": 0.001,
           "paper_depth": 48, "paper_width": 768}


def completed(seed: int, ppl: float, **extra) -> dict:
    """A record as train.py writes it at the end of a run (the keys aggregate and the report read)."""
    return {"status": "completed", "hparams": HPARAMS | {"seed": seed}, "steps": 6, "tokens": 768,
            "final_val_ppl": ppl, "final_val_loss": math.log(ppl) if math.isfinite(ppl) else ppl,
            "best_val_ppl": ppl, "best_val_loss": math.log(ppl) if math.isfinite(ppl) else ppl,
            "train_time_s": 2.0, "tokens_per_s": 384.0, "inference_bps": 10.0, "train_bps": 5.0,
            "params": {"total": 100_000, "dwa": 5, "embedding": 50_000},
            "started_at": "2024-01-01T00:00:00+00:00", "finished_at": "2024-01-01T00:01:00+00:00",
            "overrides": [f"seed={seed}"], "git": {"commit": "0123456789abcdef"},
            "machine": {"cpu_count": 2, "processor": "x86_64", "torch": "2.0"}} | extra


def diverged(seed: int, step: int = 12) -> dict:
    """A run stopped by a non-finite training loss: no final validation (train.py's "diverged")."""
    return {"status": "diverged", "hparams": HPARAMS | {"seed": seed}, "steps": step,
            "error": f"Diverged: non-finite training loss nan at step {step}",
            "params": {"total": 100_000, "dwa": 5, "embedding": 50_000},
            "started_at": "2024-01-01T00:00:00+00:00", "finished_at": "2024-01-01T00:00:10+00:00"}


def write(folder: Path, name: str, record: dict | bytes) -> Path:
    path = folder / name / "metrics.json"
    path.parent.mkdir(parents=True)
    if isinstance(record, bytes):
        path.write_bytes(record)
    else:
        path.write_text(json.dumps(record))  # json writes NaN as NaN, as atomic_write_json does
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """One group of three seeds: a finite completed run, an old-style completed run whose final
    perplexity is NaN (written before train.py recorded divergence), and a diverged run."""
    write(tmp_path, "seed=0", completed(0, 40.0))
    write(tmp_path, "seed=1", completed(1, math.nan))
    write(tmp_path, "seed=2", diverged(2))
    return tmp_path


def test_summary_counts_only_finite_runs_and_counts_diverged_ones_apart(sweep, capsys):
    aggregate(sweep)
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["n"] == 1 and row["n_diverged"] == 2 and row["n_failed"] == 0
    assert row["final_val_ppl_mean"] == pytest.approx(40.0)
    assert row["final_val_loss_mean"] == pytest.approx(math.log(40.0))
    assert pd.isna(row["final_val_ppl_stderr"])  # one finite value: no standard error (not NaN-polluted)
    assert row["tokens_per_s_mean"] == pytest.approx(384.0)


def test_mean_and_stderr_skip_a_metric_that_is_not_finite(tmp_path):
    """A run counted in n may still miss another metric (inf, NaN or null): that metric's mean and
    standard error are over the runs where it is finite."""
    write(tmp_path, "seed=0", completed(0, 40.0, tokens_per_s=100.0))
    write(tmp_path, "seed=1", completed(1, 42.0, tokens_per_s=math.inf))
    write(tmp_path, "seed=2", completed(2, 44.0, tokens_per_s=None))
    write(tmp_path, "seed=3", completed(3, 46.0, tokens_per_s=300.0))
    aggregate(tmp_path, quiet=True)
    row = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    assert row["n"] == 4 and row["n_diverged"] == 0
    assert row["final_val_ppl_mean"] == pytest.approx(43.0)
    assert row["tokens_per_s_mean"] == pytest.approx(200.0)
    assert row["tokens_per_s_stderr"] == pytest.approx(pd.Series([100.0, 300.0]).std() / math.sqrt(2))


def test_results_keep_diverged_as_its_own_status_and_the_printout_names_it(sweep, capsys):
    aggregate(sweep)
    out = capsys.readouterr().out
    results = pd.read_csv(sweep / "results.csv").set_index("run")
    assert results.loc["seed=2", "status"] == "diverged"
    assert results.loc["seed=2", "steps"] == 12
    assert results.loc["seed=0", "status"] == "completed"
    assert "NOT COMPLETED (diverged): seed=2  Diverged: non-finite training loss nan at step 12" in out
    # the old-style record stays "completed" (that is what the run wrote, and a rerun skips it), but it
    # is named with the reason it counts as diverged
    assert results.loc["seed=1", "status"] == "completed"
    assert "final_val_ppl is nan" in results.loc["seed=1", "error"]
    assert "DIVERGED (recorded as completed): seed=1" in out and "counted as diverged" in out


def test_main_exits_nonzero_when_a_run_diverged(sweep):
    assert main([str(sweep)]) == 1


def test_main_exits_zero_when_every_run_completed(tmp_path):
    write(tmp_path, "seed=0", completed(0, 40.0))
    assert main([str(tmp_path)]) == 0


@pytest.mark.parametrize("content, reason", [
    (b"\x00\xff\xfe garbage \x80\x81", "not UTF-8 text"),           # binary: read_text() raises on this
    (b'{"status": "completed", "final_val_', "not valid JSON"),   # truncated
    (b"", "not valid JSON"),                                         # empty
    (b"[1, 2, 3]", "not a JSON object"),                             # valid JSON, but not a record
])
def test_an_unreadable_metrics_json_is_a_row_with_a_reason_not_a_crash(tmp_path, capsys, content, reason):
    write(tmp_path, "seed=0", completed(0, 40.0))
    write(tmp_path, "seed=1", content)
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    results = pd.read_csv(tmp_path / "results.csv").set_index("run")
    assert results.loc["seed=1", "status"] == "unreadable"
    error = results.loc["seed=1", "error"]
    assert error.startswith("metrics.json: ") and reason in error and "\n" not in error
    warnings = [line for line in out.splitlines() if line.startswith("[denselab] warning:")]
    assert len(warnings) == 1 and "seed=1" in warnings[0] and reason in warnings[0]
    # no hparams, so it cannot be put in a group: the finite run's group is unaffected
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["n"].sum() == 1


def test_a_folder_holding_only_an_unreadable_metrics_json_is_aggregated(tmp_path, capsys):
    write(tmp_path, "seed=0", b"\xff\xfe")
    assert main([str(tmp_path)]) == 1
    assert pd.read_csv(tmp_path / "results.csv").loc[0, "status"] == "unreadable"
    assert "[denselab] warning: seed=0/metrics.json: not UTF-8 text" in capsys.readouterr().out


def test_failed_interrupted_running_runs_count_as_failed(tmp_path):
    write(tmp_path, "seed=0", completed(0, 40.0))
    for seed, status in ((1, "failed"), (2, "interrupted"), (3, "running")):
        write(tmp_path, f"seed={seed}", {"status": status, "hparams": HPARAMS | {"seed": seed}, "error": "x"})
    aggregate(tmp_path, quiet=True)
    row = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    assert (row["n"], row["n_failed"], row["n_diverged"]) == (1, 3, 0)


# -- the report's table ---------------------------------------------------------------------------

def runs(folder: Path, records: dict[str, dict | bytes]) -> list[Run]:
    """Runs of one row (seeds only differ), as report.runs.expected_runs reads them."""
    from denselab.report.runs import read_run

    out = []
    for seed, record in records.items():
        write(folder, f"seed={seed}", record)
        out.append(read_run(folder / f"seed={seed}", ("model=denseformer",), seed))
    return out


def test_report_table_excludes_diverged_seeds_from_the_mean_and_says_so(tmp_path):
    table = build_table(runs(tmp_path, {"0": completed(0, 40.0), "1": completed(1, math.nan), "2": diverged(2)}),
                        None, ["model", "depth"])
    (row,) = table.to_dict("records")
    assert row["ours_ppl"] == pytest.approx(40.0) and row["ours_n"] == 1 and row["ours_diverged"] == 2
    assert row["status"] == "partial"
    assert "Diverged: non-finite training loss nan at step 12" in row["errors"]


def test_report_table_marks_a_row_whose_every_seed_diverged(tmp_path):
    from denselab.report.tables import for_csv

    table = build_table(runs(tmp_path, {"0": diverged(0), "1": completed(1, math.inf)}), None, ["model", "depth"])
    (row,) = table.to_dict("records")
    assert row["status"] == "diverged" and row["ours_n"] == 0 and row["ours_diverged"] == 2
    assert pd.isna(row["ours_ppl"])  # numeric for the figures: nothing drawn
    shown = for_csv(table).iloc[0]
    assert shown["ours_ppl"] == "diverged" and pd.isna(shown["ours_ppl_stderr"])


def test_report_reads_an_unreadable_metrics_json_without_crashing(tmp_path):
    found = runs(tmp_path, {"0": completed(0, 40.0), "1": b"\x00\xff\xfe garbage"})
    assert found[1].status == "unreadable" and "not UTF-8" in found[1].metrics["error"]
    (row,) = build_table(found, None, ["model", "depth"]).to_dict("records")
    assert row["ours_n"] == 1 and row["ours_failed"] == 1 and row["status"] == "partial"
    info = run_info(found)
    assert info["completed"] == 1 and info["failed"] == 1 and info["diverged"] == 0


def test_run_info_counts_an_interrupted_run_as_unfinished_not_failed(tmp_path):
    found = runs(tmp_path, {"0": completed(0, 40.0), "1": {"status": "interrupted", "error": "stopped by SIGTERM"}})
    info = run_info(found)
    assert info["completed"] == 1 and info["failed"] == 0 and info["unfinished"] == 1


def test_report_figure_labels_a_diverged_row_as_diverged(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from denselab.report import figures

    texts: list[str] = []
    draw_text = Axes.text
    monkeypatch.setattr(Axes, "text", lambda ax, x, y, s, *a, **k: texts.append(s) or draw_text(ax, x, y, s, *a, **k))

    found = runs(tmp_path / "a", {"0": completed(0, 40.0)})
    found += [Run(r.dir, ("model=transformer",), r.seed, r.metrics | {"hparams": HPARAMS | {"model": "transformer"}})
              for r in runs(tmp_path / "b", {"0": diverged(0)})]
    table = build_table(found, None, ["model", "depth"])
    assert list(table["status"]) == ["ok", "diverged"]
    path = figures.table_bars(table, "test", tmp_path / "bars.png")
    assert path.stat().st_size > 1000
    assert texts[-2:] == [" 40.000", " diverged"]  # ours: the number, then the diverged row (not "missing")


def test_readme_counts_diverged_runs_beside_the_failed_ones(tmp_path):
    from denselab.report.build import write_readme

    (tmp_path / "table1" / "mini").mkdir(parents=True)
    (tmp_path / "table1" / "mini" / "run_info.json").write_text(json.dumps(
        {"scale": "mini", "completed": 22, "expected": 24, "failed": 0, "diverged": 2, "span_s": 60.0,
         "job_time_s": 60.0, "machines": ["cpu"], "commits": ["0123456789abcdef"], "files": []}))
    assert "| mini | 22 / 24 | 0 (+2 diverged) | 1.0 min |" in write_readme("table1", tmp_path / "table1").read_text()


def rows_of(folder: Path, rows: dict[str, dict[int, float]]) -> list[Run]:
    """Runs of several rows (model name → seed → final perplexity)."""
    from denselab.report.runs import read_run

    out = []
    for model, seeds in rows.items():
        for seed, ppl in seeds.items():
            name = f"model={model},seed={seed}"
            write(folder, name, completed(seed, ppl, hparams=HPARAMS | {"model": model, "seed": seed}))
            out.append(read_run(folder / name, (f"model={model}",), str(seed)))
    return out


def test_each_row_gets_its_paired_difference_to_the_reference_row_with_a_95_percent_interval(tmp_path):
    # seed effects shared by both rows (pairing removes them); the DenseFormer 0.2 below, ± 0.01
    table = build_table(rows_of(tmp_path, {
        "transformer": {0: 7.70, 1: 7.90, 2: 7.60},
        "denseformer": {0: 7.51, 1: 7.69, 2: 7.40},
        "skips_with_gains": {0: 7.60, 1: 8.00, 2: 7.65},   # no consistent difference
        "last_k": {5: 7.0, 6: 7.3},                        # no seed in common: Welch's t
        "connect_to_last": {0: 7.0},                       # one seed: no interval
    }), None, ["model"]).set_index("model")
    ref = table.loc["transformer"]
    assert pd.isna(ref["diff_ppl"]) and pd.isna(ref["diff_reference"])
    dense = table.loc["denseformer"]
    assert dense["diff_reference"] == "Transformer 48" and dense["diff_test"] == "paired t" and dense["diff_n"] == 3
    assert dense["diff_ppl"] == pytest.approx(-0.2, abs=1e-9)
    assert dense["diff_ppl_ci95_low"] < -0.2 < dense["diff_ppl_ci95_high"] < 0 and dense["diff_resolved"]
    # unpaired, the same numbers would not resolve it: the seed spread (0.15) swamps 0.2 at n = 3
    unpaired = stats.ttest_ind([7.51, 7.69, 7.40], [7.70, 7.90, 7.60], equal_var=False).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high
    skips = table.loc["skips_with_gains"]
    assert skips["diff_ppl_ci95_low"] < 0 < skips["diff_ppl_ci95_high"] and not skips["diff_resolved"]
    assert table.loc["last_k", "diff_test"] == "Welch t" and table.loc["last_k", "diff_n"] == 2
    single = table.loc["connect_to_last"]
    assert single["diff_test"] == "n < 2" and pd.isna(single["diff_ppl_ci95_low"]) and not single["diff_resolved"]


def test_run_info_names_a_sweep_folder_below_the_repository_relative_to_it(tmp_path):
    from denselab.io import relative_to_root

    assert relative_to_root(tmp_path / "logs" / "sweeps" / "table1-mini", str(tmp_path)) == "logs/sweeps/table1-mini"
    assert relative_to_root(tmp_path / "elsewhere", str(tmp_path / "repo")) == str(tmp_path / "elsewhere")


def test_the_report_figures_show_the_seed_spread(tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer

    from denselab.report import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    table = pd.DataFrame({"row": ["Transformer 48", "1x1-DenseFormer 48"], "model": ["transformer", "denseformer"],
                          "depth": [48, 48], "k_x_p": [None, "1x1"], "ours_ppl": [7.7, 7.5],
                          "ours_ppl_stderr": [0.04, 0.03], "ours_inference_bps": [100.0, 90.0],
                          "ours_inference_bps_stderr": [2.0, 1.0], "ours_train_bps": [30.0, 28.0]})
    figures.speed_tradeoff(table, "t", tmp_path / "a.png")
    figures.kxp_tradeoff(table, "t", tmp_path / "b.png")
    for fig in drawn:
        bars = [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert bars and all(c.has_yerr for c in bars)
    curves = pd.DataFrame({"row": ["a", "a"], "step": [1, 2], "train_time_s": [1.0, 2.0], "val_ppl": [10.0, 8.0],
                           "val_ppl_min": [9.0, 7.5], "val_ppl_max": [11.0, 8.5]})
    figures.curves(curves, "train_time_s", "t", tmp_path / "c.png")
    assert drawn[-1].axes[0].collections  # the band between the seeds' minimum and maximum
