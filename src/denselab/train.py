"""One training job, as `run.py` launches it for every run of a (multi)run.

validate config → tokenize (or reuse) → build model → Lightning fit (resumable) → evaluation pass →
speed → metrics.json, resolved config, histories and TensorBoard HParams, all written atomically.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from denselab.callbacks import MixingParameterLogger, TrainTimer
from denselab.config import (NOT_TRAINING, NOT_TRAINING_NESTED, SHORTHANDS, ConfigError, changed_keys,
                             training_fingerprint, used_shorthands, validate_config)
from denselab.io import atomic_write_json, atomic_write_text, git_info, machine_info, read_json
from denselab.lit_module import LanguageModel
from denselab.models import build_model, count_parameters, padded_vocab_size
from denselab.same_time import steps_for_same_train_time
from denselab.speed import batches_per_second

log = logging.getLogger(__name__)

# Lightning hints that do not apply here: batches are cut from a memmap in the main process.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
# With OnExceptionCheckpoint configured Lightning treats fit(ckpt_path=None) as "last" and says so;
# train.py already resolves the checkpoint to resume (or moves old ones aside for a fresh start).
warnings.filterwarnings("ignore", message=".*was called without a model. The last model.*")
warnings.filterwarnings("ignore", message=".*there is no last checkpoint available.*")

PAPER_KEYS = ("depth", "width", "seq_len", "batch_size", "steps", "lr", "dwa_start_step")  # hparams at a scale


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


def train(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra task function; returns the run's metrics."""
    _route_lightning_logs()
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    multirun = hc.mode == RunMode.MULTIRUN
    out = Path(cfg.paths.output_dir)
    metrics_path = out / "metrics.json"
    try:
        try:
            validate_config(cfg, overrides)
        except InterpolationResolutionError as e:  # a resolver refused a value (e.g. a scaled batch)
            raise ConfigError(str(e.__cause__ or e).splitlines()[0]) from None
        previous = read_json(metrics_path)
        if previous and cfg.ckpt_path == "last":
            _check_same_training(cfg, out, previous)
            if previous.get("status") == "completed":
                print(f"[denselab] {out} already completed (final val ppl {previous['final_val_ppl']:.3f}); "
                      "skipping. Pass ckpt_path=null to train it again.")
                return previous
        return _train(cfg, overrides, out)
    except ConfigError as e:
        if not multirun:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        _record_failure(metrics_path, cfg, overrides, e)
    except Exception as e:  # a failed job is recorded; a sweep carries on with its other jobs
        _record_failure(metrics_path, cfg, overrides, e)
        if not multirun:
            raise
        log.error("Job %s failed:\n%s", out, traceback.format_exc())
    return None


def _check_same_training(cfg: DictConfig, out: Path, previous: dict) -> None:
    """Refuse to resume or skip a run folder that holds a different training configuration (e.g. two
    experiments sharing a sweep folder with different settings)."""
    if "fingerprint" not in previous or cfg.get("match_train_time_of"):
        return  # a same-time run fixes its steps at its first start; checked against its config.yaml there
    now = training_fingerprint(OmegaConf.to_container(cfg, resolve=True))
    if now != previous["fingerprint"]:
        before = OmegaConf.to_container(OmegaConf.load(out / "config.yaml")) if (out / "config.yaml").is_file() else {}
        diff = changed_keys(before, OmegaConf.to_container(cfg, resolve=True))
        ignored = (*NOT_TRAINING, *(".".join(path) for path in NOT_TRAINING_NESTED))
        diff = [k for k in diff if not any(k == key or k.startswith(key + ".") for key in ignored)]
        raise ConfigError(f"{out} holds a {previous.get('status')} run of another configuration "
                          f"(differs in {', '.join(diff[:5]) or 'settings'}): pass ckpt_path=null to replace it, "
                          "or use another sweep name=")


def _record_failure(metrics_path: Path, cfg: DictConfig, overrides: list[str], error: BaseException) -> None:
    record = read_json(metrics_path) or {}
    record.update(
        status="failed",
        error=f"{type(error).__name__}: {error}",
        finished_at=datetime.now(timezone.utc).isoformat(),
        overrides=overrides,
        hparams=record.get("hparams") or _safe_hparams(cfg, overrides),
    )
    atomic_write_json(metrics_path, record)


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


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest of last.ckpt (periodic) and interrupted.ckpt (written by OnExceptionCheckpoint when a
    run is stopped by Ctrl-C or an error), or None."""
    found = [p for p in (ckpt_dir / "last.ckpt", ckpt_dir / "interrupted.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _train(cfg: DictConfig, overrides: list[str], out: Path) -> dict[str, Any]:
    started = datetime.now(timezone.utc).isoformat()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg.num_threads)

    # Data first: tokenization and the data-dependent checks happen before the model exists.
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    vocab_size = padded_vocab_size(datamodule.vocab_size, cfg.model.vocab_multiple)

    net = build_model(cfg.model, vocab_size)
    if cfg.get("compile"):
        # In place (nn.Module.compile), so parameter names and checkpoints are those of the eager model.
        net.compile()
        print("[denselab] compile=true: the model runs through torch.compile (the first steps compile it)")
    params = count_parameters(net)
    print(f"[denselab] model={cfg.model.name}: {params['total']:,} parameters "
          f"({params['dwa']:,} depth-mixing, {params['embedding']:,} in the tied embedding), vocab {vocab_size:,}")

    same_time = None
    if cfg.get("match_train_time_of"):  # Table 2: the step count comes from another run's training time
        first = OmegaConf.load(out / "config.yaml") if (out / "config.yaml").is_file() else None
        same_time = {"steps": first.steps} if first is not None else steps_for_same_train_time(cfg, out, net, vocab_size)
        with open_dict(cfg):
            cfg.steps = int(same_time["steps"])
        print(f"[denselab] same training time as {dict(cfg.match_train_time_of)}: {cfg.steps} steps")

    hparams = run_hparams(cfg, overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(resolved))
    record: dict[str, Any] = {
        "status": "running",
        "started_at": started,
        "run_dir": str(out),
        "overrides": overrides,
        "hparams": hparams,
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
        record["same_train_time"] = same_time
    atomic_write_json(out / "metrics.json", record)

    module = LanguageModel(net, OmegaConf.to_container(cfg.optim, resolve=True), max_steps=cfg.trainer.max_steps,
                           config=resolved)
    logger = instantiate(cfg.logger)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)

    ckpt_dir = out / "checkpoints"
    latest = latest_checkpoint(ckpt_dir)
    ckpt_path = latest if cfg.ckpt_path == "last" else cfg.ckpt_path
    if cfg.ckpt_path is None and latest is not None:  # a fresh start: keep the old run's checkpoints aside
        aside = ckpt_dir.with_name(f"checkpoints.before-{datetime.now():%Y%m%d-%H%M%S}")
        ckpt_dir.rename(aside)
        print(f"[denselab] ckpt_path=null: starting afresh; the earlier checkpoints are now in {aside}")
    if ckpt_path:
        print(f"[denselab] resuming from {ckpt_path}")

    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning turns Ctrl-C into exit(1), after OnExceptionCheckpoint saved interrupted.ckpt
        record.update(status="interrupted", steps=trainer.global_step, finished_at=datetime.now(timezone.utc).isoformat())
        atomic_write_json(out / "metrics.json", record)
        print(f"[denselab] interrupted at step {trainer.global_step}: run the same command again to resume")
        raise
    trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # the final state, whatever the save interval

    # The reported number: one pass over the validation split in non-overlapping windows.
    module.eval_prefix = "final_val"
    trainer.validate(module, dataloaders=datamodule.final_val_dataloader(), verbose=False)
    final = module.last_eval
    n_final_windows = len(datamodule.final_val_dataloader().dataset)

    if cfg.speed.enabled:  # the paper's speed measures, on the accelerator the run trained on
        record.update(measure_speed(net.to(trainer.strategy.root_device), cfg, vocab_size))

    best = module.best_val_loss
    tokens = trainer.global_step * cfg.batch_size * cfg.data.seq_len  # every step reads the same shape
    timer = next((c for c in trainer.callbacks if isinstance(c, TrainTimer)), None)
    train_time = timer.train_time_s if timer is not None else None
    mixing_log = next((c for c in trainer.callbacks if isinstance(c, MixingParameterLogger)), None)
    if mixing_log is not None and mixing_log.alpha_history:
        atomic_write_json(out / "alpha_history.json", mixing_log.alpha_history)
    record.update(
        status="completed",
        finished_at=datetime.now(timezone.utc).isoformat(),
        steps=trainer.global_step,
        tokens=tokens,
        train_time_s=train_time,
        tokens_per_s=tokens / train_time if train_time else None,
        wall_time_s=time.perf_counter() - t0,
        final_val_loss=final["loss"],
        final_val_ppl=final["ppl"],
        final_val_tokens=n_final_windows * cfg.data.seq_len,
        best_val_loss=best if math.isfinite(best) else None,
        best_val_ppl=math.exp(best) if math.isfinite(best) else None,
        val_history=timer.history if timer is not None else [],
    )
    if trainer.logger is not None:
        tb_params = {k: ("none" if v is None else v) for k, v in hparams.items()}
        tb_params["params_total"] = params["total"]
        trainer.logger.log_hyperparams(
            tb_params,
            metrics={"hparams/final_val_loss": final["loss"], "hparams/final_val_ppl": final["ppl"],
                     "hparams/best_val_ppl": record["best_val_ppl"] or float("nan")},
        )
        trainer.logger.finalize("success")
    atomic_write_json(out / "metrics.json", record)

    print(f"[denselab] final validation: loss {final['loss']:.4f}, perplexity {final['ppl']:.3f} "
          f"over {record['final_val_tokens']:,} tokens ({trainer.global_step} steps, "
          f"{record['tokens_per_s'] or 0:,.0f} tokens/s)")
    print(f"[denselab] outputs: {out}  (metrics.json, config.yaml, checkpoints/, tensorboard/)")
    print(f"[denselab] inspect: tensorboard --logdir {out / 'tensorboard'}")
    return record
