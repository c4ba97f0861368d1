"""The league (conf/experiment/league.yaml, `make league`): every node of conf/model/ against the
Transformer under one paired design, reported as a table sorted by perplexity with the paired
difference to the Transformer and what each node costs."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats

from denselab.config import register_resolvers
from denselab.models.catalog import node_names
from denselab.plan import flops_per_token
from denselab.report.build import write_readme
from denselab.report.league import (OFF_SCALE, league_table, markdown, off_the_scale, row_name, train_flops_per_token,
                                    training_time_axis, with_bench_speeds)
from denselab.report.runs import Run, expected_runs
from hydra_plugins.denselab_sweeper.rows_sweeper import expand_rows
from tests.conftest import REPO, run_cli

register_resolvers()


def league_config(scale: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["experiment=league", f"scale={scale}"], return_hydra_config=True)


def test_every_node_in_conf_model_is_in_the_league():
    rows = OmegaConf.to_container(league_config("smoke").hydra.sweeper.rows)
    assert sorted({row["model"] for row in rows}) == sorted(node_names())  # a new node joins with one row
    assert rows[0] == {"model": "transformer"}  # the reference of every paired difference
    dense = [(r["dilation"], r["dwa_period"]) for r in rows if r["model"] == "denseformer"]
    assert dense == [(1, 1), (4, 5)]


@pytest.mark.parametrize("scale", ["mini", "small", "paper"])
def test_the_league_runs_three_paired_seeds_of_every_node(scale):
    cfg = league_config(scale)
    runs = expected_runs(cfg, ["experiment=league", f"scale={scale}"])
    seeds: dict[tuple, set] = {}
    for run in runs:
        seeds.setdefault(run.row, set()).add(run.seed)
    assert len(seeds) == len(cfg.hydra.sweeper.rows)
    assert all(s == {"0", "1", "2"} for s in seeds.values())


def test_every_league_job_trains_the_same_size_tokens_and_schedule():
    base = ["experiment=league", "scale=mini"]
    cfg = league_config("mini")
    jobs = expand_rows(OmegaConf.to_container(cfg.hydra.sweeper.rows, resolve=True), [*base, "seed=0"])
    shared = ["depth", "width", "heads", "seq_len", "batch_size", "steps", "lr", "seed", "optim", "data.tokenizer",
              "data._target_", "trainer.accumulate_grad_batches", "trainer.precision", "trainer.gradient_clip_val"]
    settings = []
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for job in jobs:
            job_cfg = compose("config", overrides=job)
            values = {k: OmegaConf.select(job_cfg, k) for k in shared}
            settings.append(json.dumps({k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                                        for k, v in values.items()}, sort_keys=True))
    assert len(jobs) == len(cfg.hydra.sweeper.rows) and len(set(settings)) == 1


def _run(tmp: Path, model: str, seed: int, ppl: float, time_s: float = 10.0, mixing: int = 0,
         dilation: int | None = None) -> Run:
    row = (f"model={model}",) + ((f"dilation={dilation}", "dwa_period=1") if dilation else ())
    hparams = {"model": model, "paper_depth": 48, "depth": 12, "width": 64, "dilation": dilation,
               "dwa_period": 1 if dilation else None}
    metrics = {"status": "completed", "final_val_ppl": ppl, "train_time_s": time_s, "inference_bps": 20.0,
               "train_bps": 5.0, "steps": 500, "tokens": 1_024_000, "hparams": hparams,
               "params": {"total": 1000 + mixing, "mixing": mixing, "dwa": mixing}}  # "dwa": its name in older records
    return Run(tmp / f"{model}-{seed}", tuple(sorted(row)), str(seed), metrics)


def test_league_table_sorts_by_perplexity_with_the_paired_difference_to_the_transformer(tmp_path):
    transformer = [7.0, 7.5, 8.0]
    better = [6.9, 7.38, 7.91]  # 0.1, 0.12, 0.09 below the Transformer, seed by seed
    noisy = [7.3, 7.2, 8.1]     # +0.3, -0.3, +0.1: no resolved difference
    runs = [_run(tmp_path, "transformer", s, p) for s, p in enumerate(transformer)]
    runs += [_run(tmp_path, "mudd", s, p, time_s=15.0, mixing=300) for s, p in enumerate(noisy)]
    runs += [_run(tmp_path, "denseformer", s, p, time_s=11.0, mixing=90, dilation=1) for s, p in enumerate(better)]
    runs += [Run(tmp_path / "attn_res-0", ("model=attn_res",), "0", None)]  # not run
    table = league_table(runs).set_index("row")

    assert table.index.tolist() == ["1x1-DenseFormer", "Transformer", "MUDDFormer", "AttnRes (full)"]
    assert table["rank"].tolist()[:3] == [1, 2, 3] and pd.isna(table.loc["AttnRes (full)", "rank"])
    assert table.loc["AttnRes (full)", "status"] == "missing"

    dense = table.loc["1x1-DenseFormer"]
    differences = [b - a for a, b in zip(transformer, better)]
    low, high = stats.ttest_rel(better, transformer).confidence_interval(0.95)
    assert dense["diff_reference"] == "Transformer" and dense["diff_test"] == "paired t" and dense["diff_n"] == 3
    assert dense["diff_ppl"] == pytest.approx(statistics.fmean(differences), abs=1e-4)
    assert (dense["diff_ppl_ci95_low"], dense["diff_ppl_ci95_high"]) == (pytest.approx(low, abs=1e-4),
                                                                          pytest.approx(high, abs=1e-4))
    assert dense["diff_resolved"] and not table.loc["MUDDFormer", "diff_resolved"]
    assert pd.isna(table.loc["Transformer", "diff_ppl"])

    assert table.loc["MUDDFormer", "mixing_params"] == 300 and table.loc["MUDDFormer", "params"] == 1300
    assert table.loc["MUDDFormer", "train_time_ratio"] == pytest.approx(1.5)
    assert table.loc["Transformer", "tokens"] == table.loc["MUDDFormer", "tokens"] == 1_024_000


def test_the_league_takes_its_side_by_side_speeds_from_speed_csv_by_node_name(tmp_path):
    runs = [_run(tmp_path, "transformer", s, 7.0 + s) for s in range(2)]
    runs += [_run(tmp_path, "mudd", s, 6.0 + s, time_s=15.0, mixing=300) for s in range(2)]
    table = league_table(runs)
    alone = markdown(with_bench_speeds(table.copy(), tmp_path / "speed.csv"))  # no speed.csv: the runs' speeds
    assert "| training time | inference speed |" in alone and "side by side" not in alone

    bench = pd.DataFrame({"row": [row_name({"model": "transformer"}), row_name({"model": "mudd"})],
                          "train_ratio": [1.0, 1.5], "train_ratio_q1": [1.0, 1.4], "train_ratio_q3": [1.0, 1.6],
                          "inference_ratio": [1.0, 0.75], "inference_ratio_q1": [1.0, 0.7],
                          "inference_ratio_q3": [1.0, 0.8]})
    bench.to_csv(tmp_path / "speed.csv", index=False)
    merged = with_bench_speeds(table.copy(), tmp_path / "speed.csv").set_index("row")
    assert merged.loc["MUDDFormer", "bench_train_step_ratio"] == 1.5
    assert merged.loc["MUDDFormer", "bench_inference_speed_ratio_q3"] == 0.8
    assert merged.loc["MUDDFormer", "train_time_ratio"] == pytest.approx(1.5)  # the runs' own, kept beside
    text = markdown(merged.reset_index())
    assert "| training time | training step, side by side | inference speed, side by side |" in text
    mudd = next(line for line in text.splitlines() if "MUDDFormer" in line)
    assert mudd.endswith("| ×1.50 | ×1.50 [1.40, 1.60] | ×0.75 [0.70, 0.80] |")



def test_the_figure_plots_the_side_by_side_training_time_when_there_is_one_and_names_far_worse_nodes(tmp_path):
    runs = [_run(tmp_path, "transformer", s, 50.0 + s) for s in range(2)]
    runs += [_run(tmp_path, "mudd", s, 48.0 + s, time_s=15.0, mixing=300) for s in range(2)]
    runs += [_run(tmp_path, "elc_bert", s, OFF_SCALE * 52.0 + s, time_s=11.0, mixing=90) for s in range(2)]
    table = league_table(runs)
    assert training_time_axis(table)[0] == "ours_train_time_s"
    pd.DataFrame({"row": [row_name({"model": m}) for m in ("transformer", "mudd", "elc_bert")],
                  **{k: [1.0, 1.5, 1.1] for k in ("train_ratio", "train_ratio_q1", "train_ratio_q3")},
                  **{k: [1.0, 0.8, 0.9] for k in ("inference_ratio", "inference_ratio_q1", "inference_ratio_q3")},
                  }).to_csv(tmp_path / "speed.csv", index=False)
    assert training_time_axis(with_bench_speeds(table, tmp_path / "speed.csv"))[0] == "bench_train_step_ratio"
    transformer_ppl = table.set_index("row").loc["Transformer", "ours_ppl"]
    assert off_the_scale(table, transformer_ppl)["row"].tolist() == ["ELC-BERT"]


def _model_cfg(name: str, depth: int = 4, width: int = 32):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"model={name}", f"depth={depth}", f"width={width}", "heads=2",
                                            "seq_len=16"]).model


def test_counted_flops_match_the_plans_estimate_for_the_transformer_and_see_mixing_without_parameters():
    vocab, seq = 64, 16
    transformer = train_flops_per_token(_model_cfg("transformer"), vocab, seq)
    params = 4 * 12 * 32 * 32 + vocab * 32 + 9 * 32  # blocks' matrices, tied embedding, 9 LayerNorm gains
    assert transformer == pytest.approx(flops_per_token(params, 4, seq, 32, 0), rel=0.05)
    # ResFormer has no parameter of its own, yet mixes V_1 into every later block's values
    assert train_flops_per_token(_model_cfg("value_residual"), vocab, seq) > transformer
    dense = train_flops_per_token(_model_cfg("denseformer"), vocab, seq)  # fast DWA: counted through the reference
    assert 0 < dense - transformer <= 3 * 2 * 32 * sum(range(2, 6))  # ≤ a multiply-add per α and channel, × 3


def test_the_league_readme_shows_the_league_table_of_each_scale_run(tmp_path):
    folder = tmp_path / "league"
    (folder / "mini").mkdir(parents=True)
    (folder / "mini" / "run_info.json").write_text(json.dumps(
        {"scale": "mini", "completed": 51, "expected": 51, "failed": 0, "span_s": 3600.0, "job_time_s": 3500.0,
         "machines": ["2-core x86_64 CPU"], "commits": ["0123456789abcdef"], "files": ["league.csv", "league.md"]}))
    (folder / "mini" / "league.md").write_text("| # | node |\n| ---: | --- |\n| 1 | 1x1-DenseFormer |\n")
    text = write_readme("league", folder).read_text()
    assert text.startswith("# league\n\nThe league (beyond the paper)") and "make league SCALE=mini" in text
    assert "### mini\n\n| # | node |\n| ---: | --- |\n| 1 | 1x1-DenseFormer |" in text
    assert "docs/adding_a_node.md" in text


def test_make_league_at_smoke_writes_the_table_and_the_figure(tmp_path, data_dir):
    out = tmp_path / "report"
    run_cli(["-m", "experiment=league", "scale=smoke", f"report.out_dir={out}"], tmp_path / "logs", data_dir,
            timeout=600)
    table = pd.read_csv(out / "league.csv")
    assert len(table) == len(node_names()) + 1  # denseformer twice: 1x1 and 4x5
    assert set(table["status"]) == {"ok"} and table["rank"].tolist() == list(range(1, len(table) + 1))
    assert table["ours_ppl"].is_monotonic_increasing and (table["ours_ppl"] > 1).all()
    assert table["tokens"].nunique() == 1  # matched tokens
    transformer = table.set_index("model").loc["transformer"]
    assert transformer["mixing_params"] == 0 and transformer["extra_flops_pct"] == 0
    assert (table.drop(table.index[table["model"] == "transformer"])["diff_reference"] == "Transformer").all()
    assert all(math.isfinite(x) and x > 0 for x in table["train_flops_per_token"])
    assert (out / "league.png").stat().st_size > 10_000
    assert (out / "league.md").read_text().count("\n") == len(table) + 2
    info = json.loads((out / "run_info.json").read_text())
    assert info["completed"] == info["expected"] == len(table)
    assert len(list((out / "runs").glob("*.json"))) == len(table)  # a record of every run, committed with the report

    # Another machine with the committed report and no run folders (a campaign spread over sessions):
    # every run is skipped from its record, none is trained, and the report is the same.
    shutil.rmtree(tmp_path / "logs")
    again = run_cli(["-m", "experiment=league", "scale=smoke", f"report.out_dir={out}"], tmp_path / "logs", data_dir,
                    timeout=600)
    said = again.stdout + again.stderr
    assert said.count(": recorded in ") == len(table) and "Epoch" not in said
    assert not list((tmp_path / "logs").rglob("metrics.json")) and not list((tmp_path / "logs").rglob("*.ckpt"))
    redrawn = pd.read_csv(out / "league.csv")
    pd.testing.assert_frame_equal(redrawn, table)  # FLOPs (from the records' configs) and times included
    assert json.loads((out / "run_info.json").read_text())["from_records"] == len(table)
