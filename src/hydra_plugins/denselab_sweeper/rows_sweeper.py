"""The "rows" sweeper: a paper table is a union of grids, which Hydra's basic sweeper (one cartesian
product) cannot express. Each row is a mapping of overrides whose values may be comma-separated
sweeps; every row's grid is crossed with the sweeper's `params` and the command line (which wins
over a row's value of the same key), and the jobs of all rows run in one multirun, in row order.

    hydra:
      sweeper:
        rows:
          - {model: transformer, paper.depth: "48,64"}
          - {model: denseformer, paper.depth: 48, dilation: "1,4"}
        params: {seed: "0,1"}

Jobs that read another job's result (`match_train_time_of`: Table 2, Fig. 3c) run in a second phase,
after every other job has finished: under a launcher that runs jobs in parallel (submitit) the
reference run is then complete when they start.

Kept free of torch imports: Hydra imports every plugin at start-up.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

log = logging.getLogger(__name__)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def expand_rows(rows: Sequence[Mapping[str, Any]], arguments: Sequence[str]) -> list[list[str]]:
    """The override list of every job: ∪_rows (row grid × arguments), duplicates removed."""
    parser = OverridesParser.create()
    jobs: list[list[str]] = []
    for row in rows or [{}]:
        given = {override_key(a) for a in arguments}
        row_args = [f"{k}={_format(v)}" for k, v in row.items() if k not in given]
        for job in BasicSweeper.split_arguments(parser.parse_overrides(row_args + list(arguments)), None)[0]:
            if job not in jobs:
                jobs.append(job)
    return jobs


# Overrides whose job reads the finished run of another job of the sweep.
DEPENDENT_KEYS = ("match_train_time_of",)


def phases(jobs: list[list[str]]) -> list[list[list[str]]]:
    """The jobs in the order of their dependencies: those that read no other job's run first, then
    the ones that do; each phase in row order, empty phases left out."""
    def dependent(job: list[str]) -> bool:
        return any(override_key(o) in DEPENDENT_KEYS and o.split("=", 1)[1] != "null" for o in job)

    ordered = [[j for j in jobs if not dependent(j)], [j for j in jobs if dependent(j)]]
    return [phase for phase in ordered if phase]


def _format(value: Any) -> str:
    """A row value in Hydra's override grammar (dicts as {k:v,...}, lists as [a,b])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_format(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return str(value)


class RowsSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: Mapping[str, str] | None = None,
                 rows: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__(max_batch_size, params)
        self.rows = [dict(r) for r in (OmegaConf.to_container(rows) if OmegaConf.is_config(rows) else rows or [])]

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        jobs = expand_rows(self.rows, self._parse_config() + list(arguments))
        # one launch per phase (and per chunk of max_batch_size): a launch returns when its jobs are done
        self.overrides = [chunk for phase in phases(jobs) for chunk in self.split_overrides_to_chunks(phase, self.max_batch_size)]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, first = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first)
            for r in results:
                _ = r.return_value  # re-raises a job's exception, as the basic sweeper does
            first += len(batch)
            returns.append(results)
        return returns
