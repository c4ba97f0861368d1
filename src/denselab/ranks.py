"""Which process of a multi-device run this is, and what only one of them does.

A run on R devices is R processes (ranks) running train.py together. They all prepare the data, build
the model, resume the same checkpoint, train and evaluate; only rank 0 locks the run folder, writes
config.yaml, metrics.json and alpha_history.json, prints the `[denselab]` lines and measures speed.

The rank is known before Lightning's Trainer exists, from the launcher's environment (RANK or
LOCAL_RANK from Lightning's own launcher or torchrun, SLURM_PROCID under srun/submitit): Lightning
reads it into `rank_zero_only.rank` at import and sets it again once the Trainer has its strategy.

On one machine, Lightning starts ranks 1 … R-1 itself by running the command line again
(`_SubprocessScriptLauncher`). That command may be a whole `-m` sweep, which each child would run
from its first job; so before `fit`, rank 0 names its run folder in DENSELAB_DDP_RUN_DIR, and a child
started with it runs exactly that job, from the config.yaml rank 0 wrote there (`child_argv`).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from denselab.config import hydra_quoted

DDP_RUN_DIR_ENV = "DENSELAB_DDP_RUN_DIR"


def global_rank() -> int:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only  # here: run.py imports this module early

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_rank_zero() -> bool:
    return global_rank() == 0


# The `[denselab]` lines of a run. conf/hydra/job_logging/denselab.yaml shows them bare on the console
# (stdout, or stderr for a run that stopped) and writes them into the run's run.log.
_RUN_LOG = logging.getLogger("denselab.run")
_RUN_LOG_STDERR = logging.getLogger("denselab.run.stderr")


def say(message: str, stderr: bool = False) -> None:
    """A `[denselab]` line of the run, on rank 0 only (a multi-device run reports once): on the console
    and in run.log. Printed, as before, where logging is not configured (hydra/job_logging=none)."""
    if not is_rank_zero():
        return
    logger, level = (_RUN_LOG_STDERR, logging.WARNING) if stderr else (_RUN_LOG, logging.INFO)
    if logger.isEnabledFor(level) and logger.hasHandlers():
        logger.log(level, message)
    else:
        print(message, file=sys.stderr if stderr else sys.stdout)


def child_argv(argv: list[str], environ: dict[str, str] | os._Environ = os.environ) -> list[str]:
    """The command line a process should run: `argv` itself, or, for a rank > 0 that Lightning started
    for rank 0's run folder, that one job from its config.yaml (whatever sweep `argv` describes)."""
    run_dir = environ.get(DDP_RUN_DIR_ENV)
    local_rank = environ.get("LOCAL_RANK", "0")
    if not run_dir or local_rank == "0":
        return argv
    return [argv[0], "--config-path", str(Path(run_dir).resolve()), "--config-name", "config",
            f"hydra.run.dir={hydra_quoted(str(run_dir))}", "hydra.output_subdir=null",
            f"hydra.job.name=rank{local_rank}"]


def announce_run_dir_to_children(out: Path, trainer: Any) -> None:
    """Before fit on several devices: tell the processes Lightning is about to start which job to run."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    if isinstance(getattr(trainer.strategy, "launcher", None), _SubprocessScriptLauncher):
        os.environ[DDP_RUN_DIR_ENV] = str(out)  # the children inherit rank 0's environment


# What Lightning's launcher and process-group set up in rank 0's environment for one job; a sweep runs
# its jobs one after the other in this process, and with these left behind the next job's Trainer would
# take itself for an already launched child and wait for ranks that never start.
_LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", DDP_RUN_DIR_ENV)


@contextmanager
def distributed_job() -> Iterator[None]:
    """One job's multi-device set-up, undone afterwards: the launch variables restored and the
    process group destroyed (so the next job of a sweep launches and connects afresh)."""
    saved = {key: os.environ.get(key) for key in _LAUNCH_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
