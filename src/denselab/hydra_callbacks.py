"""Hydra callbacks for sweeps: check every job's config before the first one starts, aggregate after."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from denselab.config import ConfigError, hydra_quoted, validate_config
from denselab.config.validation import check_renamed_keys
from hydra_plugins.denselab_sweeper.rows_sweeper import expand_rows


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override list of every job the sweeper will launch (config sweeps and table rows included)."""
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    if config.hydra.sweeper.get("rows") is not None:
        return expand_rows(OmegaConf.to_container(config.hydra.sweeper.rows, resolve=True), arguments)
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def pin_sweep_dir(config: DictConfig) -> str:
    """Resolve hydra.sweep.dir once, from the sweep's own overrides, and hand it to every job.

    The folder name depends on `hydra.overrides.task`, which inside a job holds that job's overrides
    only; the launcher rebuilds each job's config from `hydra.overrides.hydra`, so the resolved
    folder travels as a hydra override.
    """
    sweep_dir = str(config.hydra.sweep.dir)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = sweep_dir
        config.hydra.overrides.hydra.append(f"hydra.sweep.dir={hydra_quoted(sweep_dir)}")
    return sweep_dir


# The override lists of the jobs this process's sweep validated before starting any: train.py does not
# check them a second time (composing and checking a config takes about as long as a toy run).
VALIDATED_JOBS: set[tuple[str, ...]] = set()


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        pin_sweep_dir(config)
        jobs = sweep_jobs(config)
        for n, job in enumerate(jobs):
            try:
                check_renamed_keys(job)  # a row's old key: the new name in one line, not Hydra's "not in struct"
                validate_config(compose(config_name=config.hydra.job.config_name, overrides=job), job)
                VALIDATED_JOBS.add(tuple(job))
            except (ConfigError, HydraException) as e:
                print(f"error: job {n} ({' '.join(job)}): {e}".splitlines()[0], file=sys.stderr)
                print(f"[denselab] none of the {len(jobs)} jobs was started", file=sys.stderr)
                raise SystemExit(2) from None
        print(f"[denselab] sweep of {len(jobs)} job(s) into {config.hydra.sweep.dir}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from denselab.aggregate import aggregate

        reported = config.get("report") is not None and config.get("experiment_name")
        try:
            _, _, results = aggregate(Path(config.hydra.sweep.dir))
        except FileNotFoundError as e:
            if not reported:
                print(f"[denselab] nothing to aggregate: {e}", file=sys.stderr)
                raise SystemExit(1) from None
            results = None  # e.g. every run was skipped from its committed record (denselab/records.py)
            print("[denselab] no run folder of this sweep holds a result: the report is drawn from the run records "
                  "(where there are any)")
        if reported:
            from denselab.report import report_experiment

            for path in report_experiment(config, list(config.hydra.overrides.task)):
                print(f"[denselab] wrote {path}")
        from denselab.train import FAILED_ATTEMPTS

        for run_dir in FAILED_ATTEMPTS:
            print(f"[denselab] NOT COMPLETED (this attempt failed, see above): {run_dir}")
        if FAILED_ATTEMPTS or (results is not None and not (results["status"] == "completed").all()):
            raise SystemExit(1)
