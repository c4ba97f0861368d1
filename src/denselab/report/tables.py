"""A table in the paper's layout: every row of the paper's table with its numbers, ours beside them
(mean, standard error, n over seeds), and our rows the paper does not have at the end.

Beside each row's mean, its difference to the table's reference row (its first row with results, the
paper's baseline) with a 95 % confidence interval: a paired t over the seeds both rows ran (same seed,
same initial block weights, same batches: models/__init__.py, data/datamodule.py), Welch's unpaired t
when they share fewer than two seeds. `diff_resolved` says whether the interval excludes 0; with fewer
than two seeds there is no interval, and nothing is resolved. `ours_ppl_by_seed` keeps each seed's
perplexity (JSON, seed → perplexity), so that any two rows can be paired later (report/claims.py).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from denselab.aggregate import is_finite, mixing_parameters
from denselab.models import num_dwa_parameters
from denselab.report.runs import Run, grouped

PAPER_TABLES = Path(__file__).resolve().parents[3] / "experiments" / "paper_tables.csv"
DWA_PATTERNS = ("denseformer", "last_k", "connect_to_last")
LABELS = {
    "transformer": "Transformer", "denseformer": "DenseFormer", "skips_with_gains": "Skips With Gains",
    "last_k": "Last K (K=4)", "connect_to_last": "Connect to Last",
}


COLUMNS = ["row", "model", "k_x_p", "depth", "width", "note", "paper_params_m", "ours_params_m", "paper_ppl",
           "paper_ppl_stderr", "ours_ppl", "ours_ppl_stderr", "ours_n", "ours_ppl_by_seed", "diff_reference", "diff_ppl",
           "diff_ppl_ci95_low", "diff_ppl_ci95_high", "diff_n", "diff_test", "diff_resolved",
           "paper_inference_bps", "ours_inference_bps",
           "ours_inference_bps_stderr", "ours_train_bps", "ours_train_bps_stderr", "paper_steps", "ours_steps",
           "ours_train_time_s", "ours_train_time_s_stderr", "ours_sparsity", "ours_depth", "ours_width",
           "ours_diverged", "ours_failed", "ours_unfinished", "ours_missing", "status", "errors"]


def paper_rows(table: str) -> pd.DataFrame:
    """The rows of one table of experiments/paper_tables.csv (the paper's numbers, transcribed)."""
    rows = pd.read_csv(PAPER_TABLES, dtype={"table": str})
    return rows[rows["table"] == str(table)].reset_index(drop=True)


def _num(value: Any) -> float | int | None:
    """CSV/hparam value → number or None ('', '-', NaN, None → None)."""
    if value is None or value == "" or value == "-":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return value
    if math.isnan(x):
        return None
    return int(x) if x.is_integer() else x


def paper_key(row: pd.Series, match: list[str]) -> dict[str, Any]:
    """The matching key of a paper row: model, depth, width, dilation, period, N (DWA start step)."""
    note = str(row.get("note") or "")
    n = re.search(r"from step (\d+)", note)
    values = {"model": row["model"], "depth": _num(row["depth"]), "width": _num(row["width"]),
              "dilation": _num(row["dilation"]), "period": _num(row["period"]),
              "N": int(n.group(1)) if n else None, "seq_len": _num(row["seq_len"])}
    return {k: values[k] for k in match}


def our_key(hp: dict[str, Any], has_mixing: bool, match: list[str]) -> dict[str, Any]:
    values = {"model": hp.get("model"), "depth": _num(hp.get("paper_depth")), "width": _num(hp.get("paper_width")),
              "dilation": _num(hp.get("dilation")), "period": _num(hp.get("dwa_period")),
              "N": _num(hp.get("paper_dwa_start_step")) if has_mixing else None,
              "seq_len": _num(hp.get("paper_seq_len"))}
    return {k: values[k] for k in match}


def label(model: str, dilation: Any = None, period: Any = None, depth: Any = None) -> str:
    name = LABELS.get(model, model)
    if model == "denseformer" and dilation is not None:
        name = f"{dilation}x{period}-DenseFormer"
    return f"{name} {depth}" if depth is not None else name


def _mean_stderr(values: list[Any]) -> tuple[float | None, float | None]:
    values = [v for v in values if is_finite(v)]  # a NaN or inf would make the mean NaN or inf: left out
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def summarize_group(runs: list[Run]) -> dict[str, Any]:
    """Our numbers for one row: mean and standard error over its seeds that completed with a finite
    perplexity; the diverged ones (non-finite loss) are counted in ours_diverged, not averaged."""
    done = [r for r in runs if r.ok]
    hp = (done or runs)[0].hparams
    out: dict[str, Any] = {"ours_n": len(done), "ours_diverged": sum(r.diverged for r in runs),
                           "ours_failed": sum(r.failed for r in runs),
                           "ours_unfinished": sum(r.unfinished for r in runs),  # of the failed: resumable
                           "ours_missing": sum(r.status == "missing" for r in runs)}
    for key, metric in (("ppl", "final_val_ppl"), ("inference_bps", "inference_bps"), ("train_bps", "train_bps"),
                        ("train_time_s", "train_time_s")):
        out[f"ours_{key}"], out[f"ours_{key}_stderr"] = _mean_stderr([r.metrics.get(metric) for r in done])
    out[SEED_PPL] = {r.seed: r.metrics["final_val_ppl"] for r in done if is_finite(r.metrics.get("final_val_ppl"))}
    if done:
        m = done[0].metrics
        out.update(ours_params_m=round(m["params"]["total"] / 1e6, 3), ours_steps=m["steps"],
                   ours_depth=hp.get("depth"), ours_width=hp.get("width"))
        if hp.get("model") in DWA_PATTERNS:  # Tables 3, 7: the share of a full DWA's α that are absent
            out["ours_sparsity"] = round(1 - mixing_parameters(m) / num_dwa_parameters(hp["depth"]), 3)
    out["errors"] = "; ".join(sorted({r.error for r in runs if r.failed or r.diverged} - {""}))
    return out


SEED_PPL = "ours_ppl_by_seed"  # a dict while the table is built, JSON in the table


def ppl_by_seed(value: Any) -> dict[str, float]:
    """A row's `ours_ppl_by_seed` (JSON, as the CSV has it) as {seed: perplexity}; {} when absent."""
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    if not isinstance(value, str) or not value:
        return {}
    return {str(k): float(v) for k, v in json.loads(value).items()}


def paired_difference(ours: dict[str, float], reference: dict[str, float]) -> dict[str, Any]:
    """Perplexity of a row minus the reference row's, over seeds, with its 95 % confidence interval."""
    shared = sorted(set(ours) & set(reference))
    if len(shared) >= 2:
        a, b = [ours[s] for s in shared], [reference[s] for s in shared]
        result, test, n = stats.ttest_rel(a, b), "paired t", len(shared)
    elif len(ours) >= 2 and len(reference) >= 2:
        a, b = list(ours.values()), list(reference.values())
        result, test, n = stats.ttest_ind(a, b, equal_var=False), "Welch t", min(len(a), len(b))
    else:
        a, b = list(ours.values()), list(reference.values())
        diff = statistics.fmean(a) - statistics.fmean(b) if a and b else None
        return {"diff_ppl": diff, "diff_n": min(len(a), len(b)), "diff_test": "n < 2", "diff_resolved": False}
    ci = result.confidence_interval(0.95)
    low, high = float(ci.low), float(ci.high)
    resolved = math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0)
    return {"diff_ppl": statistics.fmean(a) - statistics.fmean(b), "diff_ppl_ci95_low": low,
            "diff_ppl_ci95_high": high, "diff_n": n, "diff_test": test, "diff_resolved": resolved}


def _add_differences(rows: list[dict[str, Any]]) -> None:
    """diff_* of every row against the first row with results (the reference; its own diff is empty)."""
    reference = next((r for r in rows if r.get(SEED_PPL)), None)
    reference_seeds = reference[SEED_PPL] if reference is not None else {}
    for row in rows:
        seeds = row.get(SEED_PPL)
        if reference is not None and row is not reference and seeds:
            row.update(diff_reference=reference["row"], **paired_difference(seeds, reference_seeds))
    for row in rows:
        if SEED_PPL in row:
            row[SEED_PPL] = json.dumps({str(k): round(v, 4) for k, v in sorted(row[SEED_PPL].items())}) if row[SEED_PPL] else None


def build_table(runs: list[Run], table: str | None, match: list[str]) -> pd.DataFrame:
    """One output row per paper row (in the paper's order), then our rows the paper lacks."""
    groups = grouped(runs)
    ours = []
    for g in groups:
        hp = next((r.hparams for r in g if r.hparams), {})
        has_mixing = any((mixing_parameters(r.metrics or {}) or 0) > 0 for r in g)
        ours.append((our_key(hp, has_mixing, match) if hp else None, hp, g))
    used: set[int] = set()
    rows: list[dict[str, Any]] = []
    if table is not None:
        for _, p in paper_rows(table).iterrows():
            key = paper_key(p, match)
            hit = next((i for i, (k, _, _) in enumerate(ours) if k == key and i not in used), None)
            row = {"row": label(p["model"], _num(p["dilation"]), _num(p["period"]), _num(p["depth"])),
                   "model": p["model"], "k_x_p": _kxp(_num(p["dilation"]), _num(p["period"])),
                   "depth": _num(p["depth"]), "width": _num(p["width"]), "note": p.get("note") or None,
                   "paper_params_m": _num(p["params_m"]), "paper_steps": _num(p["steps"]),
                   "paper_ppl": _num(p["ppl"]), "paper_ppl_stderr": _num(p["ppl_stderr"]),
                   "paper_inference_bps": _num(p["inference_bps"])}
            if hit is None:
                row["status"] = "missing"
            else:
                used.add(hit)
                row.update(summarize_group(ours[hit][2]))
                row["status"] = _status(row)
            rows.append(row)
    for i, (key, hp, g) in enumerate(ours):
        if i in used or (table is not None and not hp):  # a row that never ran is its paper row's "missing"
            continue
        depth = _num(hp.get("paper_depth"))
        row = {"row": label(hp.get("model", "?"), _num(hp.get("dilation")), _num(hp.get("dwa_period")), depth),
               "model": hp.get("model"), "k_x_p": _kxp(_num(hp.get("dilation")), _num(hp.get("dwa_period"))),
               "depth": depth, "width": _num(hp.get("paper_width")), "note": _row_note(g[0].row)}
        row.update(summarize_group(g))
        row["status"] = _status(row) if table is None else "not in the paper's table"
        rows.append(row)
    _add_differences(rows)
    df = pd.DataFrame(rows)
    first = [c for c in COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]].round(4)


def _kxp(k: Any, p: Any) -> str | None:
    return f"{k}x{p}" if k is not None else None


def _row_note(row: tuple[str, ...]) -> str:
    return " ".join(o for o in row if not o.startswith(("model=", "paper.depth=", "dilation=", "dwa_period=")))


def _status(row: dict) -> str:
    if row.get("ours_n"):
        short = row.get("ours_diverged") or row.get("ours_failed") or row.get("ours_missing")
        return "partial" if short else "ok"
    if row.get("ours_diverged"):  # no seed gave a number because training blew up: a finding, not a gap
        return "diverged"
    if row.get("ours_failed"):  # only runs still running or stopped midway: a sweep in progress, not a failure
        return "unfinished" if row.get("ours_unfinished") == row.get("ours_failed") else "failed"
    return "missing"


def for_csv(table: pd.DataFrame) -> pd.DataFrame:
    """The table as written to CSV: a row whose every run diverged shows "diverged" as its
    perplexity, not an empty cell that reads as "not run". (build_table's own output stays numeric,
    for the figures.)"""
    shown = table.copy()
    if "ours_diverged" in shown:
        all_diverged = (shown["ours_diverged"].fillna(0) > 0) & (shown["ours_n"].fillna(0) == 0)
        shown["ours_ppl"] = shown["ours_ppl"].astype(object).where(~all_diverged, "diverged")
    return shown
