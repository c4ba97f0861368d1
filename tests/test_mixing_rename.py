"""The optimiser group of the depth-mixing parameters is "mixing" (it holds every mixer's parameters, not
DWA's α alone): its keys are `optim.mixing_weight_decay` / `optim.mixing_lr_scale`. The former names are
refused in one line naming the new ones, and what runs recorded under them still reads: their folders
resume and skip, their checkpoints resume, their metrics.json counts reach results.csv and the report."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from denselab.config import ConfigError, training_fingerprint, validate_config
from tests.conftest import REPO
from tests.test_config import composed


def composed_resolved() -> dict:
    return OmegaConf.to_container(composed("scale=smoke", "paths.output_dir=/runs/a"), resolve=True)


def with_old_names(resolved: dict) -> dict:
    """A resolved config as runs recorded it before the rename."""
    old = json.loads(json.dumps(resolved))
    old["optim"]["dwa_weight_decay"] = old["optim"].pop("mixing_weight_decay")
    old["optim"]["dwa_lr_scale"] = old["optim"].pop("mixing_lr_scale")
    return old


def test_an_old_key_on_the_command_line_is_refused_in_one_line_before_hydra_starts(tmp_path):
    proc = subprocess.run([sys.executable, "run.py", "optim.dwa_weight_decay=0.1", f"paths.log_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: optim.dwa_weight_decay=0.1: renamed optim.mixing_weight_decay (the group holds every mixer's "
        "parameters, not DWA's alone); pass optim.mixing_weight_decay=0.1"]
    assert not any(tmp_path.iterdir())  # no run folder: nothing was composed or started


def test_an_old_key_added_to_the_config_is_refused_naming_the_new_one():
    with pytest.raises(ConfigError, match=r"^optim\.dwa_lr_scale=2: renamed optim\.mixing_lr_scale .*; "
                                          r"pass optim\.mixing_lr_scale=2$"):
        validate_config(composed("+optim.dwa_lr_scale=2"))


def test_the_fingerprint_of_a_training_is_the_one_recorded_under_the_old_names():
    resolved = composed_resolved()
    assert training_fingerprint(resolved) == training_fingerprint(with_old_names(resolved))
    decayed = composed_resolved()
    decayed["optim"]["mixing_weight_decay"] = 0.3
    assert training_fingerprint(decayed) != training_fingerprint(resolved)  # still part of what is trained


def test_a_folder_whose_config_yaml_has_the_old_names_is_the_same_training(tmp_path):
    """A run recorded by a version whose fingerprint differed for another reason (it covered the
    folder paths) is compared key by key with its config.yaml: the old names are no difference."""
    from denselab.train import _check_same_training

    now = composed_resolved()
    OmegaConf.save(OmegaConf.create(with_old_names(now)), tmp_path / "config.yaml")
    previous = {"status": "completed", "fingerprint": "0" * 64}
    _check_same_training(OmegaConf.create(now), tmp_path, previous)  # accepted
    with pytest.raises(ConfigError, match=r"\(differs in lr, optim\.lr\)"):  # only what differs, no renamed keys
        _check_same_training(OmegaConf.create({**now, "lr": 0.5, "optim": {**now["optim"], "lr": 0.5}}), tmp_path,
                             previous)


def test_a_checkpoint_of_the_dwa_group_resumes_into_the_mixing_group():
    from denselab.lit_module import LanguageModel
    from denselab.models import DWA, GPT

    def module() -> LanguageModel:
        optim = {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1, "mixing_weight_decay": 0.0,
                 "mixing_lr_scale": 1.0, "warmup_fraction": 0.0, "min_lr_ratio": 0.1}
        return LanguageModel(GPT(64, 2, 16, 1, 8, mixer=DWA(2)), optim, max_steps=4)

    state = module().configure_optimizers()["optimizer"].state_dict()
    for group in state["param_groups"]:
        group["name"] = "dwa" if group["name"] == "mixing" else group["name"]  # as saved before the rename
    checkpoint = {"optimizer_states": [state]}
    resuming = module()
    resuming.on_load_checkpoint(checkpoint)  # Lightning calls it before it restores the optimiser
    optimizer = resuming.configure_optimizers()["optimizer"]
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])  # torch takes each group's name from the state
    assert [g["name"] for g in optimizer.param_groups] == ["decay", "no_decay", "mixing"]  # LearningRateMonitor's tags


def test_results_csv_and_the_report_read_the_count_of_a_run_recorded_as_dwa(tmp_path):
    from denselab.aggregate import aggregate
    from denselab.report.runs import read_run
    from denselab.report.tables import build_table
    from tests.test_aggregate import completed, write

    write(tmp_path, "seed=0", completed(0, 40.0, params={"total": 100_000, "dwa": 2, "embedding": 50_000}))
    write(tmp_path, "seed=1", completed(1, 41.0, params={"total": 100_000, "mixing": 2, "embedding": 50_000}))
    aggregate(tmp_path, quiet=True)
    assert list(pd.read_csv(tmp_path / "results.csv")["params_mixing"]) == [2, 2]
    old = read_run(tmp_path / "seed=0", ("model=denseformer",), 0)
    (row,) = build_table([old], None, ["model", "depth"]).to_dict("records")
    assert row["ours_sparsity"] == pytest.approx(round(1 - 2 / 5, 3))  # a full DWA over 2 blocks has 5 α


def test_an_old_key_in_an_experiments_row_is_refused_in_one_line_naming_the_new_one(tmp_path):
    proc = subprocess.run([sys.executable, "run.py", "-m", "experiment=table1", "scale=smoke",
                           "hydra.sweeper.rows=[{model:transformer,optim.dwa_lr_scale:2}]", f"paths.log_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    error, last = proc.stderr.splitlines()[-2:]
    assert error.startswith("error: job 0 (model=transformer optim.dwa_lr_scale=2 seed=0 ")
    assert error.endswith("): optim.dwa_lr_scale=2: renamed optim.mixing_lr_scale (the group holds every mixer's "
                          "parameters, not DWA's alone); pass optim.mixing_lr_scale=2")
    assert last == "[denselab] none of the 1 jobs was started"
