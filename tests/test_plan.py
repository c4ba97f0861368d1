"""`make plan`: an experiment's jobs, which are done, and the GPU-hours of the rest, before spending them."""

from __future__ import annotations

import json

import pytest

from denselab.plan import flops_per_token, main, plan, render
from denselab.report.build import write_readme


def test_flops_per_token_is_six_n_plus_attention_plus_the_dwa():
    # 48 x 768 Transformer (378.4M parameters, Table 1): 6N + 12·L·T·C
    assert flops_per_token(378_446_592, 48, 256, 768, 0) == 6 * 378_446_592 + 12 * 48 * 256 * 768
    assert flops_per_token(100, 2, 8, 4, mixing_weights=5) - flops_per_token(100, 2, 8, 4, 0) == 6 * 4 * 5


def test_plan_lists_every_job_and_what_is_left_to_run(tmp_path):
    overrides = ["experiment=table3", "scale=smoke", f"paths.log_dir={tmp_path}"]
    costs = plan(overrides)
    assert len(costs) == 5 and {c.status for c in costs} == {"missing"}
    transformer = next(c for c in costs if "model=transformer" in c.overrides)
    assert transformer.tokens == 4 * 4 * 32  # smoke: 4 steps of 4 sequences of 32 tokens
    assert transformer.flops == pytest.approx(transformer.tokens * flops_per_token(transformer.params, 6, 32, 32, 0))

    done = tmp_path / "sweeps" / "table3-smoke" / "model=transformer,seed=0"  # as the sweep names its folder
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"status": "completed", "hparams": {"model": "transformer"}}))
    again = plan(overrides)
    assert [c.status for c in again].count("completed") == 1
    total, left = (sum(c.gpu_hours(0.5, 100.0) for c in cs) for cs in (again, [c for c in again if c.status != "completed"]))
    assert render(again, 0.5, 100.0).endswith(f"5 jobs, 1 completed; {total:,.1f} GPU-hours in all, {left:,.1f} still "
                                              "to run (at MFU 0.50 of 100 TFLOP/s)")


def test_plan_counts_a_job_another_experiment_recorded_as_not_to_run(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from denselab.config import register_resolvers, training_fingerprint
    from denselab.records import record_path
    from tests.conftest import REPO

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        league = compose("config", overrides=["experiment=league", "scale=smoke", "model=transformer", "seed=0",
                                              f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'job'}"])
    path = record_path(league.report.out_dir, "model=transformer,seed=0")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "completed", "final_val_ppl": 42.5,
                                "fingerprint": training_fingerprint(OmegaConf.to_container(league, resolve=True))}))

    costs = plan(["experiment=table1", "scale=smoke", f"paths.root_dir={tmp_path}"])
    statuses = {" ".join(o for o in c.overrides if o.startswith(("model=", "paper.depth="))): c.status for c in costs}
    assert statuses["model=transformer paper.depth=48"] == "recorded:league"  # the same training: Table 1's 48-block row
    assert statuses["model=transformer paper.depth=72"] == "missing"
    left = sum(c.gpu_hours(0.5, 100.0) for c in costs if c.status == "missing")
    assert render(costs, 0.5, 100.0).endswith(
        f"{len(costs)} jobs, 0 completed, 1 recorded by league (the sweep copies those records instead of training); "
        f"{sum(c.gpu_hours(0.5, 100.0) for c in costs):,.1f} GPU-hours in all, {left:,.1f} still to run "
        "(at MFU 0.50 of 100 TFLOP/s)")


def test_plan_cli_refuses_a_missing_experiment_and_a_bad_mfu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["scale=paper"])
    assert exit_info.value.code == 2 and "give experiment=<name>" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment=table1", "--mfu", "2"])
    assert "--mfu=2.0: allowed 0 < mfu <= 1" in capsys.readouterr().err


def test_an_experiments_readme_gives_its_gpu_hours_at_each_gpu_scale(tmp_path):
    text = write_readme("table1", tmp_path / "table1").read_text()
    assert "## On GPUs" in text and "| small | 36 |" in text and "| paper | 36 | 366.3 |" in text
