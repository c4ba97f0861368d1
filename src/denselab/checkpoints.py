"""Reading and writing run checkpoints safely.

Loading: every checkpoint is read with `torch.load(weights_only=True)`. A Lightning checkpoint of this
suite holds only tensors and plain containers (dicts, lists, numbers, strings), so nothing needs the
full unpickler, and the full unpickler runs whatever code a crafted file names. Files that cannot be
read give a `CheckpointError` with one line naming the file and why, instead of a traceback.

Writing: `AtomicCheckpointIO` (a Trainer plugin) writes every checkpoint to a temporary file next to its
target, fsyncs it and renames it over the target, so a full disk or a kill during a save never leaves a
truncated `last.ckpt`. (Lightning's own save goes through fsspec's local transaction, which writes to
the system temp dir and moves the file across filesystems: not atomic when /tmp is another disk.)

Resuming: `resumable_checkpoint(run_dir)` removes the temp files of killed saves, then returns the newest
candidate of the run folder that loads, moving each damaged one into a `damaged/` folder beside it
(nothing is deleted), so a damaged file does not fail every retry. Lightning's own `fit(ckpt_path="last")`
picks the newest file by time and fails on it when it is damaged, so train.py passes fit the file
chosen here instead.

Names: Lightning numbers SLURM checkpoints by concatenating all digits after the last "ckpt_" in every
file name of the run folder that contains "ckpt_" (`_CheckpointConnector.__max_ckpt_version_in_folder`),
and resumes from `hpc_ckpt_<that number>.ckpt`. So no file of ours may have "ckpt_" in its name there:
the temp file of `hpc_ckpt_4.ckpt` is `.hpc-ckpt-4.ckpt.tmp-<pid>` (`.hpc_ckpt_4.ckpt.tmp-<pid>` would
read as version 4<pid>), and damaged files go into a subfolder instead of being renamed in place
(`hpc_ckpt_4.ckpt.damaged` would still read as version 4, and Lightning would try the missing file).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch
import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint

from denselab.callbacks import Diverged

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"  # <run dir>/checkpoints/, conf/callbacks/default.yaml
DAMAGED_DIR = "damaged"  # damaged checkpoints are moved to <their folder>/damaged/
LIGHTNING_KEYS = ("state_dict", "global_step")
# Leftovers of interrupted saves: ours (`.<name>.tmp-<pid>`) and the usual `<name>.tmp` / `<name>.part`.
PARTIAL_SAVE_PATTERNS = ("*.ckpt.tmp", "*.ckpt.tmp-*", "*.ckpt.part")

NOT_A_CHECKPOINT = "not a loadable checkpoint (truncated or not a torch file)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, reported in one line: '<path>: <why>'."""


# -- loading ---------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at `path`, loaded with weights_only=True (no code in the file can run).

    Raises CheckpointError for a missing, empty, truncated or foreign file, and for one that holds
    objects other than tensors and plain containers (those would need the full unpickler)."""
    checkpoint, reason = _read(Path(path), map_location, mmap=False)
    if reason is not None:
        raise CheckpointError(f"{path}: {reason}")
    return checkpoint


def unloadable_reason(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be resumed from, in a few words, or None if it can.

    Cheap enough to validate a user's `ckpt_path` before any data preparation: the tensors are
    memory-mapped, not read. Checks that the file exists, is not empty, is a complete torch file that
    loads with weights_only=True, and holds the Lightning keys `state_dict` and `global_step`."""
    checkpoint, reason = _read(Path(path), "cpu", mmap=True)
    return reason if reason is not None else _lightning_problem(checkpoint)


def _read(path: Path, map_location: Any, mmap: bool) -> tuple[dict[str, Any] | None, str | None]:
    """(checkpoint, None), or (None, why it cannot be loaded): torch.load(weights_only=True) with
    every failure turned into a few words."""
    problem = _file_problem(path)
    if problem:
        return None, problem
    # mmap needs torch's zip format; an old-format file (or garbage) is read in full instead.
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        return None, _unpickling_problem(e)
    except PermissionError:
        return None, "cannot read it (permission denied)"
    except Exception:  # torch raises OSError, EOFError, RuntimeError, KeyError... for damaged files
        return None, NOT_A_CHECKPOINT
    if not isinstance(checkpoint, dict):
        return None, f"holds a {type(checkpoint).__name__}, not a checkpoint dict"
    return checkpoint, None


def _file_problem(path: Path) -> str | None:
    """What is wrong with the file itself (before torch reads it), or None."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory, not a checkpoint file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes; left by an interrupted save?)"
    return None


def _unpickling_problem(error: pickle.UnpicklingError) -> str:
    """torch's weights-only unpickler names the class or function it refused ("GLOBAL posix.system");
    without such a name the pickle stream itself is broken (random bytes also fail this way)."""
    refused = re.search(r"GLOBAL ([\w.]+)", str(error))
    if refused is None:
        return NOT_A_CHECKPOINT
    return (f"holds objects other than tensors and plain containers ({refused.group(1)}); refusing to "
            "unpickle it (weights_only=True); only load checkpoints you trust with torch.load yourself")


def _lightning_problem(checkpoint: dict[str, Any]) -> str | None:
    missing = [key for key in LIGHTNING_KEYS if key not in checkpoint]
    return f"not a Lightning checkpoint (no {' / '.join(missing)})" if missing else None


# -- writing ---------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic on every filesystem: `Trainer(plugins=[AtomicCheckpointIO()])`.

    The checkpoint is written to `.<name>.tmp-<pid>` (temp_path) in the target's own folder, fsynced and renamed
    over the target (a rename within one filesystem is atomic), so the target is always either the
    previous complete checkpoint or the new one. Remote paths (s3://...) go to Lightning's save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by "
                            f"{type(self).__name__}")
        atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save(obj, path) through a temp file beside `path`; the temp is removed if anything fails
    (an error, a full disk, Ctrl-C). Only a kill leaves it behind: see remove_partial_saves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def temp_path(path: Path) -> Path:
    """Where atomic_torch_save writes `path` first: `.<name>.tmp-<pid>` beside it (hidden, unique per
    process), with "ckpt_" spelled "ckpt-" so that Lightning's SLURM numbering does not count it."""
    return path.with_name(f".{path.name.replace('ckpt_', 'ckpt-')}.tmp-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a crash right after it would otherwise be able to undo it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_partial_saves(directory: str | os.PathLike) -> list[Path]:
    """Delete the temp files that killed saves left in `directory` (not its subfolders); returns them.

    Call it before training starts, not while another process may be saving into the same folder."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        if entry.is_file() and any(fnmatch.fnmatch(entry.name, p) for p in PARTIAL_SAVE_PATTERNS):
            entry.unlink()
            log.warning("removed %s (left by an interrupted checkpoint save)", entry)
            removed.append(entry)
    return removed


# -- when to save ----------------------------------------------------------------------------------
class ValidationCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes `last.ckpt` after every periodic validation.

    Lightning's ModelCheckpoint(save_top_k=0, save_last=True) writes last.ckpt only at the end of
    training: after a validation it saves "last" only when it has just saved a top-k checkpoint. Saving
    after the validation (not at the batch end before it) means the checkpoint holds that
    validation's result, so a resumed run has the same validation history as an uninterrupted one.
    Lightning runs checkpoint callbacks after all others, so the other callbacks' state is current."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # fitting, not sanity checking, not saved yet
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class InterruptCheckpoint(OnExceptionCheckpoint):
    """OnExceptionCheckpoint (interrupted.ckpt on Ctrl-C, SIGTERM, SIGUSR1 or a crash), except when the
    run diverged: its weights are NaN, and resuming from them could only diverge again."""

    def on_exception(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        exception = args[-1] if args else kwargs.get("exception")
        if isinstance(exception, Diverged):
            return
        super().on_exception(trainer, *args, **kwargs)


# -- resuming --------------------------------------------------------------------------------------
def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints a run folder holds that a resume may start from: checkpoints/last*.ckpt
    (ModelCheckpoint save_last; Lightning's own ckpt_path="last" also takes last-v<n>.ckpt),
    checkpoints/interrupted.ckpt (OnExceptionCheckpoint) and hpc_ckpt_<n>.ckpt (Lightning's SLURM
    requeue handler, saved in trainer.default_root_dir, which is the run folder)."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CKPT_DIR
    found = sorted(ckpt_dir.glob("last*.ckpt")) + [ckpt_dir / "interrupted.ckpt"]
    found += sorted(run_dir.glob("hpc_ckpt_*.ckpt"), key=lambda p: _hpc_number(p.name))
    return [p for p in found if p.exists()]


def _hpc_number(name: str) -> int:
    digits = re.sub(r"\D", "", name.removeprefix("hpc_ckpt_"))
    return int(digits) if digits else -1


def newest_loadable(candidates: Iterable[str | os.PathLike], set_damaged_aside: bool = True) -> tuple[Path, int] | None:
    """The newest (by mtime) of the existing `candidates` that loads, with its global_step; None if none does.

    Each newer one that does not load is moved aside (set_aside), with one warning line, so that neither
    this function nor Lightning's ckpt_path="last" picks it up again on the next retry."""
    existing = sorted((Path(p) for p in candidates if Path(p).exists()),
                      key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for i, path in enumerate(existing):
        checkpoint, reason = _read(path, "cpu", mmap=True)
        reason = reason or _lightning_problem(checkpoint)
        if reason is None:
            return path, int(checkpoint["global_step"])
        del checkpoint  # drop the memory map before the file is moved
        then = "trying the next" if i + 1 < len(existing) else "no other checkpoint to resume from"
        shown = _shown(path, path)
        if set_damaged_aside:
            log.warning("%s cannot be resumed from: %s; set aside as %s, %s", shown, reason,
                        _shown(set_aside(path), path), then)
        else:
            log.warning("%s cannot be resumed from: %s; %s", shown, reason, then)
    return None


def set_aside(path: str | os.PathLike) -> Path:
    """Move a damaged checkpoint to `<its folder>/damaged/<name>` (`<name>.<n>` if that is taken) and
    return the new path. Kept, not deleted: it may still be worth a look."""
    path = Path(path)
    target_dir = path.parent / DAMAGED_DIR
    target_dir.mkdir(exist_ok=True)
    target, n = target_dir / path.name, 1
    while target.exists():
        target, n = target_dir / f"{path.name}.{n}", n + 1
    path.rename(target)
    return target


def resumable_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, int] | None:
    """What a run folder should resume from: removes the temp files of killed saves (in the run folder
    and in checkpoints/), then returns newest_loadable(run_checkpoints(run_dir)), setting damaged
    checkpoints aside. None: start from scratch."""
    run_dir = Path(run_dir)
    remove_partial_saves(run_dir)
    remove_partial_saves(run_dir / CKPT_DIR)
    return newest_loadable(run_checkpoints(run_dir))


def _shown(path: Path, original: Path) -> str:
    """`path` relative to the folder above the original's (`checkpoints/last.ckpt`,
    `checkpoints/damaged/last.ckpt`): short, and enough to tell the files of a run apart."""
    try:
        return str(path.relative_to(original.parent.parent))
    except ValueError:
        return str(path)
