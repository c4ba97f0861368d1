"""The Hydra task function that run.py decorates.

In a module of its own, not in run.py: launchers that run jobs in other processes (submitit, locally
or on SLURM) pickle it by reference, so a job's process imports this module, which registers the
`denselab.*` resolvers its config needs before Hydra resolves the job's folder.
"""

from __future__ import annotations

from omegaconf import DictConfig

from denselab.config import register_resolvers

register_resolvers()


def task(cfg: DictConfig) -> None:
    from denselab.train import train  # here: `run.py --help` and config errors need no torch

    train(cfg)
