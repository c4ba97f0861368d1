"""Checkpoints (denselab.checkpoints): loaded with weights_only=True, damaged files reported in one line
and set aside instead of failing every retry, saves atomic in the target's own folder."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf, open_dict
from torch.utils.data import DataLoader

from denselab import checkpoints
from denselab.checkpoints import (AtomicCheckpointIO, CheckpointError, load_checkpoint, newest_loadable,
                                  remove_partial_saves, resumable_checkpoint, run_checkpoints, set_aside,
                                  unloadable_reason)
from denselab.config import register_resolvers
from denselab.lit_module import LanguageModel
from denselab.models import build_model
from tests.conftest import REPO

register_resolvers()


class Tiny(L.LightningModule):
    """The smallest trainable module: a checkpoint of it is a real Lightning checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[L.Trainer, bytes]:
    """A Trainer after 2 steps of Tiny, and the bytes of its checkpoint (global_step 2)."""
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(Tiny(), DataLoader(torch.randn(8, 4), batch_size=2))
    path = tmp_path_factory.mktemp("trained") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return trainer, path.read_bytes()


@pytest.fixture
def good_bytes(trained) -> bytes:
    return trained[1]


class RunsCode:
    """Unpickling it calls open(marker, "w"), which creates the marker file: stands for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """(a checkpoint whose unpickling would run code, the marker file that code would create)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "denselab_config": {}, "payload": RunsCode(marker)}, path)
    return path, marker


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def aged(path: Path, seconds_ago: float) -> Path:
    """Set the mtime, so that which file is newest does not depend on the order they were written."""
    t = path.stat().st_mtime - seconds_ago
    os.utime(path, (t, t))
    return path


# -- loading ---------------------------------------------------------------------------------------
def test_a_lightning_checkpoint_loads_with_weights_only(tmp_path, good_bytes):
    checkpoint = load_checkpoint(write(tmp_path / "last.ckpt", good_bytes))
    assert checkpoint["global_step"] == 2 and checkpoint["state_dict"]["layer.weight"].shape == (2, 4)


@pytest.mark.filterwarnings("ignore:.*ckpt_path:UserWarning")  # OnExceptionCheckpoint: fit resolves "last"
def test_a_checkpoint_of_the_suites_trainer_and_callbacks_loads_with_weights_only(tmp_path):
    """The content run.py puts in its checkpoints (denselab_config, the callbacks' states, ModelCheckpoint,
    the optimizer and the LR schedule) is all tensors and plain containers."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["depth=2", "width=32", "heads=1", "seq_len=16", "steps=2",
                                           "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
                                           "trainer.enable_progress_bar=false"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)  # what ${hydra:runtime.output_dir} gives in a job
    resolved = OmegaConf.to_container(cfg, resolve=True)
    module = LanguageModel(build_model(cfg.model, 64), resolved["optim"], max_steps=2, config=resolved)
    callbacks = [instantiate(c) for name, c in cfg.callbacks.items() if c is not None and name != "progress_bar"]
    logger = CSVLogger(tmp_path)  # the learning-rate monitor needs one; TensorBoard's figures would be slow
    trainer = instantiate(cfg.trainer, accelerator="cpu", logger=logger, callbacks=callbacks)
    windows = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    loader = DataLoader([(w[:-1], w[1:]) for w in windows], batch_size=2)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    trainer.save_checkpoint(tmp_path / "checkpoints" / "last.ckpt")

    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2 and checkpoint["denselab_config"]["model"]["name"] == "denseformer"
    assert {"TrainTimer", "MixingParameterLogger"} <= set(checkpoint["callbacks"])


def test_the_crafted_checkpoint_runs_code_under_the_full_unpickler(crafted):
    """The payload of the tests below is live: torch.load(weights_only=False), as generate.py and the
    report's analysis did, runs it."""
    path, marker = crafted
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(crafted):
    path, marker = crafted
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: holds objects other than tensors and plain containers")
    assert "refusing to unpickle it (weights_only=True)" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_reported_in_one_line(tmp_path, good_bytes):
    path = write(tmp_path / "last.ckpt", good_bytes[: len(good_bytes) // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == f"{path}: not a loadable checkpoint (truncated or not a torch file)"


@pytest.mark.parametrize("kind,reason", [
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("empty", "empty file (0 bytes"),
    ("text", "not a loadable checkpoint (truncated or not a torch file)"),
    ("truncated", "not a loadable checkpoint (truncated or not a torch file)"),
    ("cut at the end", "not a loadable checkpoint (truncated or not a torch file)"),
    ("runs code", "holds objects other than tensors and plain containers"),
    ("no lightning keys", "not a Lightning checkpoint (no state_dict / global_step)"),
])
def test_unloadable_reason_says_why_a_file_cannot_be_resumed_from(tmp_path, good_bytes, crafted, kind, reason):
    path = tmp_path / "x.ckpt"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        write(path, b"")
    elif kind == "text":
        write(path, b"step,loss\n1,2.5\n")
    elif kind == "truncated":
        write(path, good_bytes[: len(good_bytes) // 2])
    elif kind == "cut at the end":
        write(path, good_bytes[:-20])
    elif kind == "runs code":
        path = crafted[0]
    elif kind == "no lightning keys":
        torch.save({"weights": torch.zeros(2)}, path)
    found = unloadable_reason(path)
    assert found is not None and found.startswith(reason) and "\n" not in found
    assert kind != "runs code" or not crafted[1].exists()


def test_unloadable_reason_accepts_a_lightning_checkpoint(tmp_path, good_bytes):
    assert unloadable_reason(write(tmp_path / "last.ckpt", good_bytes)) is None


# -- atomic saves ----------------------------------------------------------------------------------
def test_the_trainer_saves_through_atomic_checkpoint_io_and_leaves_only_the_checkpoint(tmp_path):
    trainer = tiny_trainer(max_steps=1, plugins=[AtomicCheckpointIO()])
    trainer.fit(Tiny(), DataLoader(torch.randn(4, 4), batch_size=2))
    trainer.save_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 1


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_save_that_fails_half_way_keeps_the_previous_checkpoint(tmp_path, good_bytes, monkeypatch, failure):
    target = write(tmp_path / "last.ckpt", good_bytes)

    def half_a_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes of a zip")
        raise failure

    monkeypatch.setattr(torch, "save", half_a_save)
    with pytest.raises(type(failure)):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 3}, target)
    assert target.read_bytes() == good_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_the_temp_file_is_written_in_the_targets_folder_not_the_system_temp_dir(tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    renamed, real_replace = [], os.replace

    def recorded_replace(src, dst):
        renamed.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recorded_replace)
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"

    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 3}, target)

    [(src, dst)] = renamed
    assert dst == target and src == checkpoints.temp_path(target) and src.parent == target.parent
    assert list(system_tmp.iterdir()) == []
    assert load_checkpoint(target)["global_step"] == 3


def test_remove_partial_saves_deletes_only_the_leftovers_of_killed_saves(tmp_path, good_bytes):
    keep = [write(tmp_path / name, good_bytes) for name in ("last.ckpt", "interrupted.ckpt")]
    keep.append(write(tmp_path / "notes.tmp", b"not a checkpoint"))
    leftovers = [write(tmp_path / name, good_bytes[:100])
                 for name in (".last.ckpt.tmp-4242", ".hpc-ckpt-3.ckpt.tmp-4242", "interrupted.ckpt.tmp")]
    assert sorted(remove_partial_saves(tmp_path)) == sorted(leftovers)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


# -- resuming --------------------------------------------------------------------------------------
def test_run_checkpoints_lists_last_interrupted_and_the_slurm_requeue_checkpoints(tmp_path, good_bytes):
    for name in ("checkpoints/last.ckpt", "checkpoints/interrupted.ckpt", "hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt",
                 "checkpoints/.last.ckpt.tmp-4242", "checkpoints/damaged/last.ckpt", "metrics.json"):
        write(tmp_path / name, good_bytes)
    assert run_checkpoints(tmp_path) == [tmp_path / "checkpoints" / "last.ckpt",
                                         tmp_path / "checkpoints" / "interrupted.ckpt",
                                         tmp_path / "hpc_ckpt_2.ckpt", tmp_path / "hpc_ckpt_10.ckpt"]


def test_temp_and_set_aside_files_leave_lightnings_slurm_checkpoint_numbering_alone(tmp_path, good_bytes):
    """Lightning numbers hpc_ckpt_<n>.ckpt by the digits after "ckpt_" in every name of the run folder:
    neither a temp file of ours nor a damaged checkpoint set aside may change what it resumes from."""
    write(tmp_path / "hpc_ckpt_1.ckpt", good_bytes)
    set_aside(write(tmp_path / "hpc_ckpt_2.ckpt", b""))
    write(checkpoints.temp_path(tmp_path / "hpc_ckpt_3.ckpt"), b"half a save")  # a save in progress
    connector = tiny_trainer(default_root_dir=tmp_path)._checkpoint_connector
    assert connector._hpc_resume_path == str(tmp_path / "hpc_ckpt_1.ckpt")
    assert connector.hpc_save_path(tmp_path) == str(tmp_path / "hpc_ckpt_2.ckpt")  # the number 2 is free again


def test_newest_loadable_returns_the_newest_checkpoint_and_its_step(tmp_path, good_bytes):
    older = aged(write(tmp_path / "interrupted.ckpt", good_bytes), 60)  # global_step 2
    newer = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 7}, newer)
    assert newest_loadable([older, newer, tmp_path / "missing.ckpt"]) == (newer, 7)


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_next_one_is_used(tmp_path, good_bytes, caplog):
    ckpt_dir = tmp_path / "checkpoints"
    older = aged(write(ckpt_dir / "interrupted.ckpt", good_bytes), 60)
    damaged = write(ckpt_dir / "last.ckpt", good_bytes[:1000])
    with caplog.at_level(logging.WARNING, logger="denselab.checkpoints"):
        assert newest_loadable([damaged, older]) == (older, 2)
    assert not damaged.exists() and (ckpt_dir / "damaged" / "last.ckpt").read_bytes() == good_bytes[:1000]
    assert caplog.messages == ["checkpoints/last.ckpt cannot be resumed from: not a loadable checkpoint (truncated "
                               "or not a torch file); set aside as checkpoints/damaged/last.ckpt, trying the next"]


def test_when_no_checkpoint_loads_none_is_returned_and_each_is_set_aside(tmp_path, crafted):
    empty = write(tmp_path / "checkpoints" / "interrupted.ckpt", b"")
    unsafe = write(tmp_path / "checkpoints" / "last.ckpt", crafted[0].read_bytes())
    assert newest_loadable([empty, unsafe]) is None
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "damaged").iterdir()) == ["interrupted.ckpt", "last.ckpt"]
    assert not crafted[1].exists()


def test_setting_aside_twice_keeps_both_files(tmp_path):
    first = set_aside(write(tmp_path / "last.ckpt", b"first"))
    second = set_aside(write(tmp_path / "last.ckpt", b"second"))
    assert first != second and first.read_bytes() == b"first" and second.read_bytes() == b"second"


def test_resumable_checkpoint_cleans_a_killed_save_and_skips_a_damaged_checkpoint(tmp_path, good_bytes):
    write(tmp_path / "hpc_ckpt_1.ckpt", b"")  # newest, but left empty by a full disk
    aged(write(tmp_path / "checkpoints" / "last.ckpt", good_bytes), 60)
    write(tmp_path / "checkpoints" / ".last.ckpt.tmp-4242", good_bytes[:50])
    assert resumable_checkpoint(tmp_path) == (tmp_path / "checkpoints" / "last.ckpt", 2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (tmp_path / "damaged" / "hpc_ckpt_1.ckpt").is_file() and not (tmp_path / "hpc_ckpt_1.ckpt").exists()


# -- generate.py and the report's analysis ---------------------------------------------------------
def generate_cli(ckpt: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "denselab.generate", f"ckpt={ckpt}", "max_new_tokens=2"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_generate_refuses_a_checkpoint_that_would_run_code_in_one_line(crafted):
    path, marker = crafted
    proc = generate_cli(path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {path}: holds objects other than tensors and plain containers "
                                                "(io.open); refusing to unpickle it (weights_only=True); "
                                                "only load checkpoints you trust with torch.load yourself"]
    assert not marker.exists()


def test_generate_on_a_truncated_checkpoint_says_so_in_one_line(tmp_path, good_bytes):
    path = write(tmp_path / "last.ckpt", good_bytes[: len(good_bytes) // 2])
    proc = generate_cli(path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {path}: not a loadable checkpoint (truncated or not a "
                                                "torch file)"]


def test_generate_load_checkpoint_raises_checkpoint_error_for_a_crafted_file(crafted):
    from denselab.generate import load_checkpoint as generate_load

    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        generate_load(crafted[0])
    assert not crafted[1].exists()


def test_the_reports_analysis_refuses_a_checkpoint_that_would_run_code(tmp_path, crafted):
    from denselab.report.analysis import load_trained

    write(tmp_path / "run" / "checkpoints" / "last.ckpt", crafted[0].read_bytes())
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_trained(tmp_path / "run")
    assert not crafted[1].exists()
