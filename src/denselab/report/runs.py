"""Which runs an experiment expects, and what they recorded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from denselab.aggregate import is_finite, read_metrics
from denselab.config import dirname
from denselab.records import read_record, uses_records
from hydra_plugins.denselab_sweeper.rows_sweeper import expand_rows


@dataclass
class Run:
    """One expected run of an experiment: its folder and (if it ran) its metrics."""

    dir: Path
    row: tuple[str, ...]  # the row's overrides without the seed: runs differing only in seed share it
    seed: str
    metrics: dict | None
    recorded: bool = False  # read from its committed record (denselab/records.py): its folder is not here

    @property
    def status(self) -> str:
        return (self.metrics or {}).get("status", "missing")

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def diverged(self) -> bool:
        """Stopped by a non-finite training loss, or completed with a non-finite final perplexity (a
        record from before train.py wrote "diverged"): a result, but not a number to average."""
        return self.status == "diverged" or (self.completed and not is_finite(self.metrics.get("final_val_ppl")))

    @property
    def ok(self) -> bool:
        """Completed with a finite final perplexity: the runs the report's numbers are made of."""
        return self.completed and not self.diverged

    @property
    def unfinished(self) -> bool:
        """Started and not ended (running, or stopped by a signal or a kill): the same command resumes it."""
        return self.status in ("running", "interrupted")

    @property
    def failed(self) -> bool:
        """Ran but gave no result: failed, interrupted, still running, or its metrics.json is unreadable."""
        return not (self.completed or self.diverged or self.status == "missing")

    @property
    def error(self) -> str:
        error = (self.metrics or {}).get("error")
        if not error and self.diverged:
            error = f"final_val_ppl is {self.metrics.get('final_val_ppl')} although the run completed"
        return error or ""

    @property
    def hparams(self) -> dict[str, Any]:
        return (self.metrics or {}).get("hparams") or {}


def sweep_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.log_dir) / "sweeps" / str(cfg.name)


def expected_runs(cfg: DictConfig, extra_overrides: list[str] = ()) -> list[Run]:
    """The runs of `cfg`'s rows × its scale's seeds, in row order, as the rows sweeper launches them."""
    rows = OmegaConf.to_container(cfg.hydra.sweeper.rows, resolve=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True) or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(extra_overrides)
    exclude = list(cfg.hydra.job.config.override_dirname.exclude_keys)
    folder = sweep_dir(cfg)
    records = cfg.report.out_dir if uses_records(cfg) else None
    runs = []
    for job in expand_rows(rows, arguments):
        name = dirname(job, exclude, ["experiment", "scale"])
        row = tuple(sorted(o for o in job if not o.startswith("seed=")))
        seed = next((o.split("=", 1)[1] for o in job if o.startswith("seed=")), "0")
        runs.append(read_run(folder / name, row, seed, records))
    return runs


def read_run(run_dir: Path, row: tuple[str, ...], seed: str, records: str | Path | None = None) -> Run:
    """The run in `run_dir`: no metrics.json is a missing run, unless `records` (a report folder) holds
    its record; one that cannot be read (binary, truncated) is a run with status "unreadable" and the
    reason as its error, so that one damaged file shows up in the report instead of stopping it."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        record = read_record(records, run_dir.name) if records is not None else None
        return Run(run_dir, row, seed, record, recorded=record is not None)
    metrics, reason = read_metrics(path)
    return Run(run_dir, row, seed, metrics if metrics is not None else {"status": "unreadable", "error": reason})


def select(runs: list[Run], selector: dict[str, Any]) -> list[Run]:
    """Completed (not diverged) runs whose hparams equal `selector` (e.g. {model: denseformer, paper_depth: 48})."""
    return [r for r in runs if r.ok and all(_same(r.hparams.get(k), v) for k, v in selector.items())]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b)
    return a == b


def grouped(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by row (all seeds of a row together), in row order."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(r.row, []).append(r)
    return list(groups.values())


def run_info(runs: list[Run]) -> dict[str, Any]:
    """How many runs completed (with a finite perplexity), diverged, failed, are unfinished (interrupted,
    running) or missing, how long
    the completed ones took, on what, from which commits."""
    from datetime import datetime

    done = [r for r in runs if r.ok]
    starts = [datetime.fromisoformat(r.metrics["started_at"]) for r in done]
    ends = [datetime.fromisoformat(r.metrics["finished_at"]) for r in done]
    durations = [(e - s).total_seconds() for s, e in zip(starts, ends)]
    return {
        "expected": len(runs),
        "completed": len(done),
        "failed": sum(r.failed and not r.unfinished for r in runs),
        "unfinished": sum(r.unfinished for r in runs),  # interrupted or running: the same command resumes them
        "diverged": sum(r.diverged for r in runs),
        "missing": sum(r.status == "missing" for r in runs),
        "job_time_s": sum(durations),
        "span_s": busy_seconds(list(zip(starts, ends))),
        "commits": sorted({(r.metrics.get("git") or {}).get("commit") or "?" for r in done}),
        "machines": sorted({_machine(r.metrics) for r in done}),
    }


def busy_seconds(intervals: list[tuple]) -> float:
    """The wall time during which at least one run was training: the length of the union of the runs'
    (start, end) intervals (a resumed run's from its last start). A sweep spread over several sessions
    (run records) does not count the days between them; one uninterrupted sweep's is its first start to
    its last end, less idle gaps."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += (end - start).total_seconds()
            reach = end
        elif end > reach:
            total += (end - reach).total_seconds()
            reach = end
    return total


def _machine(metrics: dict) -> str:
    m = metrics.get("machine") or {}
    device = m.get("cuda") or f"{m.get('cpu_count')}-core {m.get('processor')} CPU"
    return f"{device}, torch {m.get('torch')}"
