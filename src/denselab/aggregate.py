"""Collect the metrics.json of every run under a folder into CSVs.

    python -m denselab.aggregate logs/sweeps/<name>

writes `<folder>/results.csv` (one row per run, failed, diverged, unfinished and unreadable runs
included, with their status and error) and `<folder>/summary.csv` (runs that differ only in `seed`
grouped: n, the runs that completed with a finite final perplexity; each metric's mean and standard
error over them, NaN and inf left out; n_diverged and n_failed beside), and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from denselab.io import atomic_write_text

METRICS = ("final_val_ppl", "final_val_loss", "best_val_ppl", "inference_bps", "train_bps", "tokens_per_s",
           "train_time_s")


def read_metrics(path: str | Path) -> tuple[dict | None, str | None]:
    """The record in a run's metrics.json and None, or None and a one-line reason it is unusable.

    Not io.read_json: that returns None without a reason for unparsable JSON and raises
    UnicodeDecodeError on binary content (a file damaged on disk), and one bad file must not stop a
    sweep's aggregation, which runs after every job has finished."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        return None, f"metrics.json: cannot be read ({e.strerror or e})"
    except UnicodeDecodeError as e:
        byte = f"0x{e.object[e.start]:02x}"
        return None, f"metrics.json: not UTF-8 text (byte {byte} at offset {e.start}; binary or damaged)"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"metrics.json: not valid JSON ({e}; truncated?)"
    if not isinstance(record, dict):
        return None, f"metrics.json: not a JSON object (a {type(record).__name__})"
    return record, None


def mixing_parameters(record: dict) -> int | None:
    """The run's number of depth-mixing parameters: metrics.json's `params.mixing`, or `params.dwa`
    in the records written before that parameter group was named "mixing"."""
    params = record.get("params") or {}
    return params.get("mixing", params.get("dwa"))


def is_finite(value: Any) -> bool:
    """A real, finite number (None, NaN, ±inf, strings: False)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def collect(folder: str | Path) -> pd.DataFrame:
    """One row per metrics.json below `folder`; an unreadable one is a row with status "unreadable"
    and the reason in `error` (it has no hparams: the summary counts it in n_failed of a group of "-")."""
    folder = Path(folder)
    rows = []
    for path in sorted(folder.rglob("metrics.json")):
        run = str(path.parent.relative_to(folder))
        m, reason = read_metrics(path)
        if m is None:
            rows.append({"run": run, "status": "unreadable", "error": reason})
            continue
        row = {"run": run, "status": m.get("status"), "error": m.get("error")}
        if row["status"] == "completed" and not is_finite(m.get("final_val_ppl")):
            # Written before train.py recorded divergence as its own status. Its status stays what the
            # run wrote (a rerun skips a completed run, so relabelling it would not make it rerun), but
            # the summary counts it as diverged, and this says why.
            row["error"] = f"final_val_ppl is {m.get('final_val_ppl')} although the run completed: counted as diverged"
        row.update({f"hp.{k}": v for k, v in (m.get("hparams") or {}).items()})
        row.update({k: m.get(k) for k in METRICS + ("steps", "tokens")})
        row.update(params_total=(m.get("params") or {}).get("total"), params_mixing=mixing_parameters(m))
        row.update(git_commit=(m.get("git") or {}).get("commit"), overrides=" ".join(m.get("overrides") or []))
        rows.append(row)
    return pd.DataFrame(rows)


def outcome(results: pd.DataFrame) -> pd.Series:
    """Per run: "ok" (completed with a finite final perplexity: counted in n), "diverged" (stopped by a
    non-finite loss, or completed with a non-finite final perplexity) or "failed" (failed,
    interrupted, still running, unreadable: every other status)."""
    ppl = pd.to_numeric(results.get("final_val_ppl", pd.Series(math.nan, index=results.index)), errors="coerce")
    finite = pd.Series(np.isfinite(ppl.to_numpy(dtype=float)), index=results.index)
    completed = results["status"] == "completed"
    return pd.Series(np.select([completed & finite, completed | (results["status"] == "diverged")],
                               ["ok", "diverged"], "failed"), index=results.index)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Group runs that differ only in seed: n (runs with a finite final perplexity), n_diverged,
    n_failed, and each metric's mean and standard error over those n runs where it is finite (a NaN
    or inf would make the mean NaN or inf, so it is left out rather than averaged in)."""
    keys = [c for c in results.columns if c.startswith("hp.") and c != "hp.seed"]
    if not keys:
        return pd.DataFrame()
    table = results.copy()
    table["outcome"] = outcome(table)
    table[keys] = table[keys].astype(object).where(table[keys].notna(), "-")  # group None with None
    out = []
    for group, runs in table.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        counts = runs["outcome"].value_counts()
        row.update(n=int(counts.get("ok", 0)), n_diverged=int(counts.get("diverged", 0)),
                   n_failed=int(counts.get("failed", 0)))
        done = runs[runs["outcome"] == "ok"]
        for metric in METRICS:
            values = pd.to_numeric(done[metric], errors="coerce")
            values = values[np.isfinite(values.to_numpy(dtype=float))]
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
        report_bad_runs(results)
    return results_path, summary_path, results


def report_bad_runs(results: pd.DataFrame) -> None:
    """One line per run that is not in a mean: not completed (diverged, failed, ...) with its error,
    completed with a non-finite perplexity, or a metrics.json that could not be read."""
    for (_, r), kind in zip(results.iterrows(), outcome(results)):
        error = r.get("error") if isinstance(r.get("error"), str) else ""
        if r["status"] == "unreadable":
            print(f"[denselab] warning: {r['run']}/{error} (skipped, counted as not completed)")
        elif r["status"] != "completed":
            print(f"[denselab] NOT COMPLETED ({r['status']}): {r['run']}  {error}")
        elif kind == "diverged":
            print(f"[denselab] DIVERGED (recorded as completed): {r['run']}  {error}")


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
