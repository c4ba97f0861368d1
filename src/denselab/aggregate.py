"""Collect the metrics.json of every run under a folder into CSVs.

    python -m denselab.aggregate logs/sweeps/<name>

writes `<folder>/results.csv` (one row per run, failed and unfinished runs included, with their
status) and `<folder>/summary.csv` (runs that differ only in `seed` grouped: mean, standard error
and n of each metric over the completed ones, and how many failed), and prints the summary.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from denselab.io import atomic_write_text, read_json

METRICS = ("final_val_ppl", "final_val_loss", "best_val_ppl", "inference_bps", "train_bps", "tokens_per_s",
           "train_time_s")


def collect(folder: str | Path) -> pd.DataFrame:
    """One row per metrics.json below `folder`."""
    folder = Path(folder)
    rows = []
    for path in sorted(folder.rglob("metrics.json")):
        m = read_json(path)
        if m is None:
            rows.append({"run": str(path.parent.relative_to(folder)), "status": "unreadable"})
            continue
        row = {"run": str(path.parent.relative_to(folder)), "status": m.get("status"), "error": m.get("error")}
        row.update({f"hp.{k}": v for k, v in (m.get("hparams") or {}).items()})
        row.update({k: m.get(k) for k in METRICS + ("steps", "tokens")})
        params = m.get("params") or {}
        row.update(params_total=params.get("total"), params_dwa=params.get("dwa"))
        row.update(git_commit=(m.get("git") or {}).get("commit"), overrides=" ".join(m.get("overrides") or []))
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Group runs that differ only in seed: mean / stderr / n per metric over completed runs."""
    keys = [c for c in results.columns if c.startswith("hp.") and c != "hp.seed"]
    if not keys:
        return pd.DataFrame()
    table = results.copy()
    table[keys] = table[keys].astype(object).where(table[keys].notna(), "-")  # group None with None
    out = []
    for group, runs in table.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        done = runs[runs["status"] == "completed"]
        row["n"] = len(done)
        row["n_failed"] = int((runs["status"] != "completed").sum())
        for metric in METRICS:
            values = pd.to_numeric(done[metric], errors="coerce").dropna()
            row[f"{metric}_mean"] = values.mean() if len(values) else math.nan
            row[f"{metric}_stderr"] = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        out.append(row)
    summary = pd.DataFrame(out)
    summary.columns = [c.removeprefix("hp.") for c in summary.columns]
    return summary


def aggregate(folder: str | Path, quiet: bool = False) -> tuple[Path, Path, pd.DataFrame]:
    folder = Path(folder)
    results = collect(folder)
    if results.empty:
        raise FileNotFoundError(f"no metrics.json under {folder}")
    summary = summarize(results)
    results_path, summary_path = folder / "results.csv", folder / "summary.csv"
    atomic_write_text(results_path, results.to_csv(index=False))
    atomic_write_text(summary_path, summary.to_csv(index=False))
    if not quiet:
        shown = [c for c in summary.columns if not c.endswith("_stderr") or c == "final_val_ppl_stderr"]
        shown = [c for c in shown if summary[c].astype(str).ne("-").any()]
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 4):
            print(summary[shown].to_string(index=False))
        print(f"[denselab] {len(results)} run(s): {results_path}\n[denselab] grouped over seeds: {summary_path}")
        failed = results[results["status"] != "completed"]
        for _, r in failed.iterrows():
            print(f"[denselab] NOT COMPLETED ({r['status']}): {r['run']}  {r.get('error') or ''}")
    return results_path, summary_path, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m denselab.aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a sweep folder (logs/sweeps/<name>) or any folder holding runs")
    args = parser.parse_args(argv)
    try:
        _, _, results = aggregate(args.folder)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if (results["status"] == "completed").all() else 1


if __name__ == "__main__":
    sys.exit(main())
