"""Run records: the metrics.json of every finished run of a report, committed beside the report.

    experiments/<name>/<scale>/runs/<run folder name>.json

A sweep's run folders (logs/sweeps/<name>/...) hold gigabytes of checkpoints and stay on the machine
that trained them; the records are the few kilobytes a report is made of: the run's final numbers,
its validation curve, its configuration fingerprint, commit and machine. Committed, they let

* a reader check every number of a table or league against the run that produced it (per seed), and
* a campaign longer than one machine's session go on elsewhere: a sweep skips the runs whose record
  matches its configuration (the same training fingerprint) and trains only the missing ones, and
  the report reads the skipped ones from their records.

Only reports drawn from metrics use records (tables, curves, the league). Figures of trained models
(α heatmaps, pruning, spectra, ...) need the run's checkpoint, so their runs are trained where they
are drawn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from denselab.io import atomic_write_json

FOLDER = "runs"
FINISHED = ("completed", "diverged")
# Report kinds (report.figure) that read a trained model or a file of the run folder, not only metrics.json.
NEEDS_RUN_FOLDER = frozenset({"alpha_heatmaps", "alpha_evolution", "embedding_similarity", "alpha_pruning",
                              "singular_values"})


def uses_records(cfg: DictConfig) -> bool:
    """Whether `cfg` is an experiment whose report can be drawn from run records alone."""
    report = cfg.get("report")
    return report is not None and report.get("out_dir") is not None and report.get("figure") not in NEEDS_RUN_FOLDER


def record_path(out_dir: str | Path, run_name: str) -> Path:
    return Path(out_dir) / FOLDER / f"{run_name}.json"


def read_record(out_dir: str | Path, run_name: str) -> dict[str, Any] | None:
    """The finished run recorded under `out_dir` as `run_name`, or None (none, unreadable, unfinished)."""
    from denselab.aggregate import read_metrics

    path = record_path(out_dir, run_name)
    if not path.is_file():
        return None
    record, _ = read_metrics(path)
    return record if record is not None and record.get("status") in FINISHED else None


def write_records(runs: list, out_dir: str | Path, root: str | Path) -> int:
    """A record of every finished run read from its folder (not the ones read from records already);
    the machine's paths below `root` made relative to it. Returns how many were written."""
    written = 0
    for run in runs:
        if run.recorded or run.status not in FINISHED:
            continue
        atomic_write_json(record_path(out_dir, run.dir.name), _portable(run.metrics, Path(root)))
        written += 1
    return written


def _portable(metrics: dict[str, Any], root: Path) -> dict[str, Any]:
    """metrics.json with the run folder and the data folder relative to the repository root, so a
    committed record names no folder of the machine that wrote it."""
    record = json.loads(json.dumps(metrics))  # a deep copy
    record["run_dir"] = _below(record.get("run_dir"), root)
    if isinstance(record.get("data"), dict):
        record["data"]["dir"] = _below(record["data"].get("dir"), root)
    return record


def _below(path: str | None, root: Path) -> str | None:
    if not path:
        return path
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path
