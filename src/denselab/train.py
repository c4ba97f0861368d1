"""One training job, as `run.py` launches it for every run of a (multi)run.

    check the config → lock the run folder → skip it if it is finished →
    prepare data → build the model → resolve the checkpoint → fit → final evaluation → write the record

Every step is a function below; `train` runs them in that order, and `recorded_outcome` turns whatever
stops a run early into its status in metrics.json and the process exit status:

    status       when                                             exit (one run)     in a sweep
    completed    the run finished                                 0                  next job
    interrupted  Ctrl-C, SIGTERM, SIGUSR1/2 (interrupted.ckpt)    128 + signal       sweep aggregated, exits 128 + signal
    diverged     a non-finite loss (its NaN weights not saved)    1                  next job; the sweep exits 1
    failed       a bad config (one line) or an error (traceback)  2 / 1              next job; the sweep exits 1
    (unchanged)  another process holds the folder's lock           75                 next job; the sweep exits 1

Re-running the same command resumes an interrupted (or killed) run from its newest loadable
checkpoint and skips a completed or diverged one; `ckpt_path=null` starts it afresh. A run this machine
never started is skipped too when the experiment's report has a committed record of it (denselab/records.py).

On several devices every rank runs these steps; only rank 0 locks the folder, writes the record and
reports: its `[denselab]` lines go to the console and to the run's run.log (ranks.say).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
import traceback
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from denselab import records
from denselab.callbacks import Diverged, MixingParameterLogger, TrainTimer
from denselab.checkpoints import (CKPT_DIR, newest_loadable, remove_partial_saves, resumable_checkpoint, run_checkpoints,
                                  unloadable_reason)
from denselab.config import (NOT_TRAINING, NOT_TRAINING_NESTED, SHORTHANDS, ConfigError, changed_keys,
                             training_fingerprint, used_shorthands, validate_config)
from denselab.config.fingerprint import with_current_names
from denselab.aggregate import read_metrics
from denselab.data import instantiate_datamodule
from denselab.io import atomic_write_json, atomic_write_text, git_info, machine_info
from denselab.lit_module import LanguageModel
from denselab.models import build_model, count_parameters, padded_vocab_size
from denselab.plan import model_flops_per_token
from denselab.preemption import Preempted
from denselab.ranks import announce_run_dir_to_children, distributed_job, global_rank, say
from denselab.run_lock import RunLocked, run_lock
from denselab.same_time import resolve_steps, training_device
from denselab.speed import batches_per_second

log = logging.getLogger(__name__)

# Lightning hints that do not apply here: batches are cut from a memmap in the main process.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
# With OnExceptionCheckpoint configured Lightning treats fit(ckpt_path=None) as "last" and says so;
# resolve_checkpoint already chose the checkpoint to resume (or moved old ones aside for a fresh start).
warnings.filterwarnings("ignore", message=".*was called without a model. The last model.*")
warnings.filterwarnings("ignore", message=".*there is no last checkpoint available.*")
# On several devices: the validation numbers logged are already the mean over every rank (MeanMetric).
warnings.filterwarnings("ignore", message=r".*It is recommended to use `self.log\('(final_)?val/.*sync_dist=True.*")

PAPER_KEYS = ("depth", "width", "seq_len", "batch_size", "steps", "lr", "dwa_start_step")  # hparams at a scale


@dataclass
class Job:
    """Where a run writes and how it was launched."""

    out: Path
    overrides: list[str]
    multirun: bool
    sweep_dir: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)  # metrics.json as this attempt last wrote it
    trainer: L.Trainer | None = None
    rank: int = 0  # of this process among the run's devices; rank 0 writes and prints

    @property
    def step(self) -> int:
        return self.trainer.global_step if self.trainer is not None else 0

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.json"

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> "Job":
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return cls(out=Path(cfg.paths.output_dir), overrides=list(hc.overrides.task), multirun=multirun,
                   sweep_dir=Path(hc.sweep.dir) if multirun else None, rank=global_rank())


# -------------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------------

def train(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra task function; returns the run's record (None when a sweep job failed)."""
    _route_lightning_logs()
    job = Job.from_hydra(cfg)
    with recorded_outcome(cfg, job), distributed_job():
        check_config(cfg, job)
        with run_lock(job.out) if job.rank == 0 else nullcontext():
            finished = finished_record(cfg, job)
            if finished is not None:
                return finished
            set_up_torch(cfg)
            datamodule = prepare_data(cfg)
            net, vocab_size, params = build(cfg, datamodule)
            same_time = resolve_steps(cfg, job.out, net, vocab_size)  # Table 2: steps from another run's time
            start_record(cfg, job, datamodule, params, vocab_size, same_time)
            trainer, module = build_trainer(cfg, net)
            job.trainer = trainer
            ckpt_path = resolve_checkpoint(cfg, job.out, job.rank)
            t0 = time.perf_counter()
            fit(trainer, module, datamodule, ckpt_path, job.out)
            final = final_evaluation(trainer, module, datamodule, cfg.data.seq_len)
            if job.rank != 0:
                return None
            return write_record(cfg, job, trainer, module, net, final, vocab_size, wall_time_s=time.perf_counter() - t0)
    return None


def check_config(cfg: DictConfig, job: Job) -> None:
    """Every setting, and an explicit ckpt_path, is checked before any compute (a sweep's jobs were
    checked together before the first one started)."""
    from denselab.hydra_callbacks import VALIDATED_JOBS

    try:
        if tuple(job.overrides) not in VALIDATED_JOBS:
            validate_config(cfg, job.overrides)
    except InterpolationResolutionError as e:  # a resolver refused a value (e.g. a scaled batch)
        raise ConfigError(str(e.__cause__ or e).splitlines()[0]) from None
    if cfg.ckpt_path not in (None, "last"):
        reason = unloadable_reason(cfg.ckpt_path)
        if reason is not None:
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: {reason}; allowed: last, null or a checkpoint of this suite")


def finished_record(cfg: DictConfig, job: Job) -> dict[str, Any] | None:
    """The record of a run this folder already finished (completed or diverged), which a re-run skips."""
    previous, unreadable = read_metrics(job.metrics_path)
    if unreadable and job.metrics_path.exists():
        say(f"[denselab] {job.metrics_path}: {unreadable.removeprefix('metrics.json: ')}; "
            "it is replaced by this run's record")
    if cfg.ckpt_path != "last":
        return None
    if not previous:
        return None if job.metrics_path.exists() else committed_record(cfg, job)
    _check_same_training(cfg, job.out, previous)
    if previous.get("status") == "completed":
        say(f"[denselab] {job.out} already completed (final val ppl {previous['final_val_ppl']:.3f}); "
            "skipping. Pass ckpt_path=null to train it again.")
        return previous
    if previous.get("status") == "diverged":
        say(f"[denselab] {job.out} diverged before ({previous.get('error')}); skipping. "
            "Pass ckpt_path=null to train it again (with a lower lr, say).")
        return previous
    return None


def committed_record(cfg: DictConfig, job: Job) -> dict[str, Any] | None:
    """The record of this run committed beside the experiment's report (denselab/records.py), when it
    was trained with this configuration: the sweep skips it, and the report reads it from there. A
    run this machine never started, only; a record of other settings is trained again here. The same
    training recorded by another experiment at this scale counts too: its record is copied under this
    report (records.adopt_record)."""
    if not records.uses_records(cfg):
        return None
    fingerprint = training_fingerprint(OmegaConf.to_container(cfg, resolve=True))
    record = records.read_record(cfg.report.out_dir, job.out.name)
    where = records.record_path(cfg.report.out_dir, job.out.name)
    if record is not None and record.get("fingerprint") != fingerprint:
        say(f"[denselab] {where} records this run with other settings; training it here")
        return None
    if record is None:
        elsewhere = records.same_training_elsewhere(cfg, fingerprint)
        if elsewhere is None:
            return None
        record, source = elsewhere
        if job.rank == 0:
            records.adopt_record(cfg.report.out_dir, job.out.name, record, source, cfg.paths.root_dir)
        where = f"{source}, the same training (copied to {where})"
    made = f"commit {((record.get('git') or {}).get('commit') or '?')[:10]}, {record.get('finished_at', '?')[:10]}"
    ppl = record.get("final_val_ppl")
    completed = record["status"] == "completed" and isinstance(ppl, (int, float))
    result = f"final val ppl {ppl:.3f}" if completed else f"{record['status']}: {record.get('error')}"
    say(f"[denselab] {job.out.name}: recorded in {where} ({result}; {made}); skipping. "
        "Pass ckpt_path=null to train it here.")
    return record


def set_up_torch(cfg: DictConfig) -> None:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    precision = cfg.get("matmul_precision")
    if precision == "auto":
        precision = "high" if on_cuda(cfg) else None  # TF32 matmuls for the fp32 parts on GPUs that have them
    if precision:
        torch.set_float32_matmul_precision(precision)
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg.num_threads)


def on_cuda(cfg: DictConfig) -> bool:
    """Whether the run trains on CUDA GPUs (what the `auto` settings of compile and matmul_precision ask)."""
    return training_device(str(cfg.trainer.accelerator)).type == "cuda"


def prepare_data(cfg: DictConfig) -> L.LightningDataModule:
    """Tokenize (or reuse the cache) and run the data-dependent checks, before the model exists."""
    datamodule = instantiate_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build(cfg: DictConfig, datamodule: L.LightningDataModule) -> tuple[torch.nn.Module, int, dict[str, int]]:
    vocab_size = padded_vocab_size(datamodule.vocab_size, cfg.model.vocab_multiple)
    net = build_model(cfg.model, vocab_size)
    if cfg.get("compile") is True or (cfg.get("compile") == "auto" and on_cuda(cfg)):
        # In place (nn.Module.compile), so parameter names and checkpoints are those of the eager model.
        net.compile()
        say(f"[denselab] compile={cfg.compile}: the model runs through torch.compile (the first steps compile it)")
    params = count_parameters(net)
    say(f"[denselab] model={cfg.model.name}: {params['total']:,} parameters "
        f"({params['mixing']:,} depth-mixing, {params['embedding']:,} in the tied embedding), vocab {vocab_size:,}")
    return net, vocab_size, params


def start_record(cfg: DictConfig, job: Job, datamodule: L.LightningDataModule, params: dict[str, int],
                 vocab_size: int, same_time: dict[str, Any] | None) -> None:
    """config.yaml and a `running` metrics.json, before training starts (rank 0)."""
    if job.rank != 0:
        return
    resolved = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(job.out / "config.yaml", OmegaConf.to_yaml(resolved))
    job.record = {
        "status": "running",
        "started_at": datetime.now(timezone.utc).isoformat(),
        "run_dir": str(job.out),
        "overrides": job.overrides,
        "hparams": run_hparams(cfg, job.overrides),
        "fingerprint": training_fingerprint(resolved),
        "params": params,
        "vocab_size": vocab_size,
        "data": {"dir": str(datamodule.directory), "tokens": datamodule.meta["tokens"],
                 "source": datamodule.meta["source"]},
        "git": git_info(),
        "machine": machine_info(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if same_time is not None:
        job.record["same_train_time"] = same_time
    atomic_write_json(job.metrics_path, job.record)


def build_trainer(cfg: DictConfig, net: torch.nn.Module) -> tuple[L.Trainer, LanguageModel]:
    module = LanguageModel(net, OmegaConf.to_container(cfg.optim, resolve=True), max_steps=cfg.trainer.max_steps,
                           config=OmegaConf.to_container(cfg, resolve=True),
                           flops_per_token=model_flops_per_token(net, cfg.data.seq_len))
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=instantiate(cfg.logger), callbacks=callbacks)
    return trainer, module


def resolve_checkpoint(cfg: DictConfig, out: Path, rank: int = 0) -> str | None:
    """What fit starts from: ckpt_path=last → the newest checkpoint of the run folder that loads
    (damaged ones are moved to a damaged/ folder beside them, temp files of killed saves removed);
    ckpt_path=null → nothing (the run folder's checkpoints are moved aside first); else that file.
    Only rank 0 moves or removes files; the other ranks pick the same newest loadable checkpoint."""
    if rank != 0:
        if cfg.ckpt_path == "last":
            found = newest_loadable(run_checkpoints(out), set_damaged_aside=False)
            return str(found[0]) if found is not None else None
        return None if cfg.ckpt_path is None else str(cfg.ckpt_path)
    if cfg.ckpt_path == "last":
        found = resumable_checkpoint(out)
        if found is None:
            return None
        path, step = found
        say(f"[denselab] resuming from step {step}: {path}")
        return str(path)
    if cfg.ckpt_path is None:
        old = run_checkpoints(out)
        if old:  # a fresh start: keep the earlier run's checkpoints, out of the way of ckpt_path="last"
            aside = out / f"{CKPT_DIR}.before-{datetime.now():%Y%m%d-%H%M%S}"
            aside.mkdir()
            for path in old:
                path.rename(aside / path.name)
            remove_partial_saves(out / CKPT_DIR)
            say(f"[denselab] ckpt_path=null: starting afresh; the earlier checkpoints are now in {aside}")
        return None
    say(f"[denselab] starting from {cfg.ckpt_path}")
    return str(cfg.ckpt_path)


def fit(trainer: L.Trainer, module: LanguageModel, datamodule: L.LightningDataModule, ckpt_path: str | None,
        out: Path) -> None:
    """trainer.fit, then the final state saved as last.ckpt whatever the save interval.

    A stop from outside leaves fit after InterruptCheckpoint saved interrupted.ckpt, as SIGTERMException
    (Lightning's, for SIGTERM), Preempted (StopOnSignal's, for SIGUSR1) or, for Ctrl-C, Lightning's
    sys.exit(1), which is turned back into the KeyboardInterrupt it was; recorded_outcome takes it from there."""
    announce_run_dir_to_children(out, trainer)  # several devices on one machine: Lightning starts them in fit
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as e:
        if e.code == 1 and not isinstance(e, SIGTERMException):
            raise KeyboardInterrupt from None
        raise
    trainer.save_checkpoint(out / CKPT_DIR / "last.ckpt", weights_only=False)


def final_evaluation(trainer: L.Trainer, module: LanguageModel, datamodule: L.LightningDataModule,
                     seq_len: int) -> dict[str, Any]:
    """The reported number: one pass over the validation split in non-overlapping windows (on several
    devices each rank evaluates every R-th window, and the token-weighted mean is taken over all)."""
    module.eval_prefix = "final_val"
    windows, total = datamodule.final_val_windows_count(), datamodule.total_val_windows()
    part = "the whole validation split" if windows == total else f"{windows:,} of the split's {total:,} windows"
    say(f"[denselab] final evaluation: {part} ({windows * seq_len:,} tokens in batches of {datamodule.eval_batch_size}; "
        "data.final_val_windows=N for N evenly spaced windows, null for all)")
    trainer.validate(module, dataloaders=datamodule.final_val_dataloader(), verbose=False)
    return {**module.last_eval, "tokens": datamodule.final_val_windows_count() * seq_len}


def write_record(cfg: DictConfig, job: Job, trainer: L.Trainer, module: LanguageModel, net: torch.nn.Module,
                 final: dict[str, Any], vocab_size: int, wall_time_s: float) -> dict[str, Any]:
    """The completed metrics.json (and alpha_history.json), and the final numbers in every logger."""
    record = job.record
    if cfg.speed.enabled:  # the paper's speed measures, on the accelerator the run trained on
        record.update(measure_speed(net.to(trainer.strategy.root_device), cfg, vocab_size))
    best = module.best_val_loss
    tokens = trainer.global_step * cfg.batch_size * cfg.data.seq_len  # every step reads the same shape
    timer = next((c for c in trainer.callbacks if isinstance(c, TrainTimer)), None)
    train_time = timer.train_time_s if timer is not None else None
    mixing_log = next((c for c in trainer.callbacks if isinstance(c, MixingParameterLogger)), None)
    if mixing_log is not None and mixing_log.alpha_history:
        atomic_write_json(job.out / "alpha_history.json", mixing_log.alpha_history)
    record.update(
        status="completed",
        finished_at=datetime.now(timezone.utc).isoformat(),
        steps=trainer.global_step,
        devices=trainer.world_size,
        tokens=tokens,
        train_time_s=train_time,
        tokens_per_s=tokens / train_time if train_time else None,
        wall_time_s=wall_time_s,
        final_val_loss=final["loss"],
        final_val_ppl=final["ppl"],
        final_val_tokens=final["tokens"],
        best_val_loss=best if math.isfinite(best) else None,
        best_val_ppl=math.exp(best) if math.isfinite(best) else None,
        val_history=timer.history if timer is not None else [],
    )
    log_final_metrics(trainer, record)
    atomic_write_json(job.metrics_path, record)

    say(f"[denselab] final validation: loss {final['loss']:.4f}, perplexity {final['ppl']:.3f} "
        f"over {record['final_val_tokens']:,} tokens ({trainer.global_step} steps, "
        f"{record['tokens_per_s'] or 0:,.0f} tokens/s)")
    say(f"[denselab] outputs: {job.out}  (metrics.json, config.yaml, checkpoints/, tensorboard/)")
    if any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
        say(f"[denselab] inspect: tensorboard --logdir {job.out / 'tensorboard'}")
    return record


def log_final_metrics(trainer: L.Trainer, record: dict[str, Any]) -> None:
    """The run's settings with its final numbers, in whatever loggers the run has: TensorBoard's HParams
    tab takes them together; other loggers (CSV, W&B) take the settings, and the numbers as metrics."""
    params = {k: ("none" if v is None else v) for k, v in record["hparams"].items()}
    params["params_total"] = record["params"]["total"]
    final = {"hparams/final_val_loss": record["final_val_loss"], "hparams/final_val_ppl": record["final_val_ppl"],
             "hparams/best_val_ppl": record["best_val_ppl"] or float("nan")}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=final)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(final, step=trainer.global_step)
        logger.finalize("success")


# -------------------------------------------------------------------------------------------------
# How a run ends early
# -------------------------------------------------------------------------------------------------

@contextmanager
def recorded_outcome(cfg: DictConfig, job: Job) -> Iterator[None]:
    """Whatever stops a run early becomes its status in metrics.json, a one-line message and the exit
    status (see the module docstring). In a sweep, a failed or diverged job lets the others run;
    an interrupted one stops the sweep (the machine is going away), after aggregating its results."""
    try:
        yield
    except ConfigError as e:
        if not job.multirun:  # refused before it started: the command is what needs fixing, no record
            if job.record:
                _record(job, cfg, "failed", e)
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        _record(job, cfg, "failed", e)  # a sweep's row says why this job did not run
        log.error("Job %s not started: %s", job.out, e)
    except RunLocked as e:  # the folder belongs to the other process: its record is not ours to touch
        print(f"error: {e}", file=sys.stderr)
        if not job.multirun:
            raise SystemExit(75) from None  # EX_TEMPFAIL: try again later
        FAILED_ATTEMPTS.append(str(job.out))
    except Diverged as e:
        _record(job, cfg, "diverged", e, steps=job.step)
        say(f"[denselab] diverged: {e}. Its NaN weights were not checkpointed; metrics.json says "
            "'diverged'; a re-run skips it, ckpt_path=null trains it again.", stderr=True)
        if not job.multirun:
            raise SystemExit(1) from None
    except (Preempted, SIGTERMException, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Preempted) else signal.SIGTERM if isinstance(e, SIGTERMException) else signal.SIGINT
        name = signal.Signals(signum).name
        _record(job, cfg, "interrupted", RuntimeError(f"stopped by {name}"), steps=job.step)
        say(f"[denselab] interrupted by {name} at step {job.step}"
            f"{'; checkpoint saved' if job.trainer is not None else ''}: run the same command again to resume",
            stderr=True)
        if job.multirun and job.sweep_dir is not None:
            _aggregate_stopped_sweep(job.sweep_dir)
        raise SystemExit(128 + signum) from None
    except Exception as e:
        _record(job, cfg, "failed", e)
        if not job.multirun:
            raise
        log.error("Job %s failed:\n%s", job.out, traceback.format_exc())


# Jobs of this process's sweep whose failure is in no metrics.json (their folder was locked, or holds an
# earlier finished run that is kept); the sweep callback exits non-zero when there are any.
FAILED_ATTEMPTS: list[str] = []


def _record(job: Job, cfg: DictConfig, status: str, error: BaseException, steps: int | None = None) -> None:
    """Write the early end of this attempt into metrics.json, unless the folder holds a finished run:
    a completed (or diverged) record is never overwritten by a later attempt that failed. Rank 0's to write."""
    if job.rank != 0:
        return
    record = job.record or read_metrics(job.metrics_path)[0] or {}
    if record.get("status") in records.FINISHED and not job.record:
        log.error("%s: this attempt failed (%s: %s); its earlier %s record is kept", job.metrics_path,
                  type(error).__name__, error, record["status"])
        FAILED_ATTEMPTS.append(str(job.out))
        return
    record.update(
        status=status,
        error=f"{type(error).__name__}: {error}",
        finished_at=datetime.now(timezone.utc).isoformat(),
        overrides=job.overrides,
        hparams=record.get("hparams") or _safe_hparams(cfg, job.overrides),
    )
    if steps is not None:
        record["steps"] = steps
    atomic_write_json(job.metrics_path, record)


def _aggregate_stopped_sweep(sweep_dir: Path) -> None:
    from denselab.aggregate import aggregate

    try:
        aggregate(sweep_dir)
    except FileNotFoundError:
        return
    say("[denselab] the sweep stopped here; run the same command again to resume it (completed runs are skipped)",
        stderr=True)


def _check_same_training(cfg: DictConfig, out: Path, previous: dict) -> None:
    """Refuse to resume or skip a run folder that holds a different training configuration (e.g. two
    experiments sharing a sweep folder with different settings)."""
    if "fingerprint" not in previous or cfg.get("match_train_time_of"):
        return  # a same-time run fixes its steps at its first start; checked against its config.yaml there
    now = training_fingerprint(OmegaConf.to_container(cfg, resolve=True))
    if now != previous["fingerprint"]:
        # today's names for keys renamed since (the fingerprint hashes them under their former names)
        before = with_current_names(OmegaConf.to_container(OmegaConf.load(out / "config.yaml"))
                                    if (out / "config.yaml").is_file() else {})
        diff = changed_keys(before, OmegaConf.to_container(cfg, resolve=True))
        ignored = (*NOT_TRAINING, *(".".join(path) for path in NOT_TRAINING_NESTED))
        diff = [k for k in diff if not any(k == key or k.startswith(key + ".") for key in ignored)]
        if before and not diff:
            return  # recorded by a version that fingerprinted paths too (a moved folder): same training
        raise ConfigError(f"{out} holds a {previous.get('status')} run of another configuration "
                          f"(differs in {', '.join(diff[:5]) or 'settings'}): pass ckpt_path=null to replace it, "
                          "or use another sweep name=")


# -------------------------------------------------------------------------------------------------
# What a run records
# -------------------------------------------------------------------------------------------------

def run_hparams(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The settings that identify a run: the model name, the shorthands it uses (others None), the
    data, and at a scale the paper-unit settings of its row. The aggregator groups runs that differ
    only in `seed`."""
    used = used_shorthands(cfg)
    hp: dict[str, Any] = {"model": cfg.model.name}
    hp.update({k: (cfg[k] if k in used else None) for k in SHORTHANDS})
    hp.update(
        data=cfg.data.get("name") or cfg.data.get("_target_", "").rsplit(".", 1)[-1].removesuffix("_data"),
        tokenizer=cfg.data.tokenizer,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        experiment=cfg.get("experiment_name"),
    )
    if cfg.get("scale") is not None:
        hp["scale"] = cfg.scale.name
        hp.update({f"paper_{k}": cfg.paper[k] for k in PAPER_KEYS})
    return hp


def _safe_hparams(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    try:
        return run_hparams(cfg, overrides)
    except Exception:  # the config itself may be what failed
        return {"model": OmegaConf.select(cfg, "model.name", default=None)}


def measure_speed(net: torch.nn.Module, cfg: DictConfig, vocab_size: int) -> dict[str, Any]:
    """Inference and training batches per second (metrics.json keys inference_bps, train_bps)."""
    s = cfg.speed
    train_batch = s.train_batch_size or cfg.data.batch_size
    common = dict(seq_len=cfg.data.seq_len, vocab_size=vocab_size, precision=str(cfg.trainer.precision),
                  repeats=s.repeats, warmup=s.warmup)
    return {
        "inference_bps": batches_per_second(net, s.inference_batch_size, train=False, **common),
        "train_bps": batches_per_second(net, train_batch, train=True, **common),
        "speed_setup": {"inference_batch_size": s.inference_batch_size, "train_batch_size": train_batch,
                        "seq_len": cfg.data.seq_len, "precision": str(cfg.trainer.precision),
                        "device": str(next(net.parameters()).device), "repeats": s.repeats, "warmup": s.warmup},
    }


def _route_lightning_logs() -> None:
    """Print Lightning's messages once, through Hydra's handlers (console and the job's .log file),
    instead of also through the handler Lightning installs; drop its advertisement."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())
