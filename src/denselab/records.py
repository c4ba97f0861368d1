"""Run records: the metrics.json of every finished run of a report, written beside the report.

    experiments/<name>/<scale>/runs/<run folder name>.json     metrics.json, and config.yaml under "config"

A sweep's run folders (logs/sweeps/<name>/...) hold gigabytes of checkpoints and stay on the machine
that trained them; the records are the few kilobytes a report is made of: the run's final numbers,
its validation curve, its resolved configuration and fingerprint, commit and machine. Committed with
the report, they let

* a reader check every number of a table or league against the run that produced it (per seed), and
* a campaign longer than one machine's session go on elsewhere: a sweep skips the runs whose record
  matches its configuration (the same training fingerprint) and trains only the missing ones, and
  the report reads the skipped ones from their records;
* one training serves every experiment that asks for it: a run recorded by another experiment at the
  same scale with the same fingerprint (the league's Transformer is Table 1's 48-block Transformer) is
  not trained again; the sweep copies its record under its own report (`recorded_from` says whence).

Only reports drawn from metrics use records (tables, curves, the league). Figures of trained models
(α heatmaps, pruning, spectra, ...) need the run's checkpoint, and Table 2's same-time Transformer
reads its reference run's folder (`report.records: false`), so their runs are trained where they are
reported. A report reads a record as it reads a run folder's metrics.json: as the run's result, whatever
the settings are now (a sweep checks them: it trains a run whose record has other settings again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from denselab.io import atomic_write_json, relative_to_root

FOLDER = "runs"
FINISHED = ("completed", "diverged")  # statuses a re-run skips (ckpt_path=null trains them again)
# Report kinds (report.figure) that read a trained model or a file of the run folder, not only metrics.json.
NEEDS_RUN_FOLDER = frozenset({"alpha_heatmaps", "alpha_evolution", "embedding_similarity", "alpha_pruning",
                              "singular_values"})


def uses_records(cfg: DictConfig) -> bool:
    """Whether `cfg` is an experiment whose report can be drawn from run records alone."""
    report = cfg.get("report")
    return (report is not None and report.get("out_dir") is not None and report.get("records", True)
            and report.get("figure") not in NEEDS_RUN_FOLDER)


def record_path(out_dir: str | Path, run_name: str) -> Path:
    return Path(out_dir) / FOLDER / f"{run_name}.json"


def read_record(out_dir: str | Path, run_name: str) -> dict[str, Any] | None:
    """The finished run recorded under `out_dir` as `run_name`, or None (none, unreadable, unfinished)."""
    return _finished_record(record_path(out_dir, run_name))


def _finished_record(path: Path) -> dict[str, Any] | None:
    """The record in `path` when it is a finished run's (completed or diverged), else None."""
    from denselab.aggregate import read_metrics

    if not path.is_file():
        return None
    record, _ = read_metrics(path)
    return record if record is not None and record.get("status") in FINISHED else None


def same_training_elsewhere(cfg: DictConfig, fingerprint: str) -> tuple[dict[str, Any], Path] | None:
    """A finished record of the same training (`fingerprint`) in another experiment's report at cfg's
    scale (<root>/experiments/*/<scale>/runs/), with its path, or None. Table 1's 48-block Transformer
    and the league's Transformer are one run at a given scale and seed: it is trained once."""
    own = Path(cfg.report.out_dir).resolve()
    experiments = Path(cfg.paths.root_dir) / "experiments"
    for path in sorted(experiments.glob(f"*/{cfg.scale.name}/{FOLDER}/*.json")):
        if path.parent.parent.resolve() == own:
            continue
        record = _finished_record(path)
        if record is not None and record.get("fingerprint") == fingerprint:
            return record, path
    return None


def adopt_record(out_dir: str | Path, run_name: str, record: dict[str, Any], source: Path,
                 root: str | Path) -> dict[str, Any]:
    """`record` (another experiment's) written as this report's record of `run_name`, naming where it
    came from (`recorded_from`, relative to the repository root; the first record's, for a copy of a
    copy): the report reads it as its own."""
    adopted = record | {"recorded_from": record.get("recorded_from") or relative_to_root(source, root)}
    atomic_write_json(record_path(out_dir, run_name), adopted)
    return adopted


def write_records(runs: list, out_dir: str | Path, root: str | Path) -> int:
    """A record of every finished run read from its folder (not the ones read from records already):
    its metrics.json, with its config.yaml under "config" (the league counts a model's FLOPs from it),
    every path below `root` made relative to it. Returns how many were written."""
    written = 0
    for run in runs:
        if run.recorded or run.status not in FINISHED:
            continue
        record = dict(run.metrics)
        config = run.dir / "config.yaml"
        if config.is_file():
            record["config"] = OmegaConf.to_container(OmegaConf.load(config))
        atomic_write_json(record_path(out_dir, run.dir.name), relative_to_root(record, root))
        written += 1
    return written


def run_config(run_dir: Path, record: dict[str, Any] | None) -> DictConfig | None:
    """The resolved configuration a run trained with: its folder's config.yaml, else its record's."""
    if (run_dir / "config.yaml").is_file():
        return OmegaConf.load(run_dir / "config.yaml")
    if record and isinstance(record.get("config"), dict):
        return OmegaConf.create(record["config"])
    return None
