"""The claims scoreboard: the paper's main claims (experiments/claims.yaml) against our report CSVs.

    python -m denselab.report --claims     # experiments/claims.csv and the scoreboard of experiments/README.md

Each claim names its experiment, and its rule turns that experiment's report CSV at one scale
(experiments/<experiment>/<scale>/<experiment>.csv) into a verdict:

    reproduced                        our 95 % interval lies on the paper's side (of 0, or of the margin)
    same direction, not resolved      our estimate is on the paper's side, its interval is not (or no interval: n < 2)
    opposite direction, not resolved  our estimate is on the other side, its interval is not
    contradicted                      our 95 % interval lies on the other side
    not resolved at this scale        a gate failed (the claim's own `gate` rule, or a gate the report recorded in
                                      run_info.json) or the claim is not tested at this scale (`scales`)
    not run                           a row or an experiment the rule needs has no result

A difference a − b of a metric ("ppl" by default; "inference_bps", "params_m", ...: the CSV's ours_<metric>
with ours_<metric>_stderr and ours_n) is, in order of preference: a paired t over the seeds both rows ran
(their `ours_ppl_by_seed`, perplexity only: same seed, same batches and, at one depth, the same initial
block weights); Welch's t from the two rows' means, standard errors and n (rows that share fewer than two
seeds: a wider interval than the paired one would be, never a narrower one); exact, for a metric without a
standard error (parameters); a point estimate without interval when a row has one seed.

Rule kinds (the keys of each in claims.yaml):

    less / greater   {row, reference, metric=ppl}: row's metric below / above the reference's
    not_worse        {row, reference, margin_rel}: row − reference < margin_rel × reference (non-inferiority)
    equivalent       {row, reference, margin_rel}: |row − reference| < margin_rel × reference (interval inside ±margin)
    ordering         {rows: [a, b, c, ...]}: a < b < c ... (each adjacent pair a `less`)
    monotone         {rows, direction=increasing, min_spearman=0.8}: the metric grows along rows — reproduced when the
                     last − first difference is resolved, the Spearman ρ of the means with the position is at
                     least min_spearman, and no adjacent step is resolved the other way
    gap_compare      {a: {row, reference, experiment?}, b: {...}, relation: larger|smaller}: the relative gain
                     (reference − row) / reference of b is larger / smaller than a's (difference of the two,
                     standard errors combined, the smaller of the two degrees of freedom)
    all              {rules: [...]}: every part must hold; the verdict is the worst part's
    alpha_moved      {panel, min}: the largest |α − identity| of a heatmap panel (fig4.csv) is at least `min`
    alpha_pattern    {panel}: Fig. 4's three features in the panel's mean α (see `_alpha_pattern`)
    pruning          {series, at_percent, min_increase_rel}: fig6.csv — the perplexity after zeroing the smallest
                     at_percent % of α exceeds the unpruned one by more than min_increase_rel (relative)

A row is named by its `row` label or by a mapping of CSV columns ({row: Transformer 24, width: 384}); any rule
may name another `experiment` than the claim's (same scale). Gates recorded by the report: run_info.json may
carry "gates", either {"passed": bool, "label": str} or {"<gate>": bool | {"passed": bool, "detail": str}, ...}
(or a list of {"name", "passed", "detail"}); a failed one makes every claim on that experiment and scale
"not resolved at this scale". `evaluate_claim(..., gates=...)` takes the same per (experiment, scale).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from denselab.report.tables import SEED_PPL, paired_difference, ppl_by_seed

EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"
CONF = Path(__file__).resolve().parents[3] / "conf"

REPRODUCED = "reproduced"
SAME = "same direction, not resolved"
OPPOSITE = "opposite direction, not resolved"
CONTRADICTED = "contradicted"
NOT_RESOLVED = "not resolved at this scale"
NOT_RUN = "not run"
VERDICTS = (REPRODUCED, SAME, OPPOSITE, CONTRADICTED, NOT_RESOLVED, NOT_RUN)
# the verdict of an `all`: its worst part's (a resolved contradiction outweighs a missing part)
_WORST_FIRST = (CONTRADICTED, NOT_RESOLVED, NOT_RUN, OPPOSITE, SAME, REPRODUCED)
SCALE_ORDER = ("mini", "small", "paper")   # smoke outputs are not kept in the repository
CSV_COLUMNS = ["claim", "text", "experiment", "scale", "verdict", "n", "ours", "paper", "detail",
               "diff", "diff_ci95_low", "diff_ci95_high"]


class ClaimsError(ValueError):
    """A malformed claims file: an unknown rule kind, a row name matching several rows, ..."""


@dataclass
class Result:
    verdict: str
    text: str = ""                       # our (or the paper's) numbers, for the scoreboard
    n: int | None = None                 # seeds behind the weakest part
    detail: str = ""                     # why: a missing row, a failed gate
    estimate: "Estimate | None" = None   # the first difference (for the CSV's numeric columns)


@dataclass
class Estimate:
    """a − b of a metric, with its 95 % interval when there is one."""
    a: float
    b: float
    low: float | None = None
    high: float | None = None
    n: int | None = None
    test: str = "point"
    se: float | None = None
    df: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def diff(self) -> float:
        return self.a - self.b


# -- reading the results --------------------------------------------------------------------------

def load_claims(path: Path | None = None) -> list[dict]:
    claims = yaml.safe_load(Path(path or EXPERIMENTS / "claims.yaml").read_text())["claims"]
    ids = [c["id"] for c in claims]
    if len(set(ids)) != len(ids):
        raise ClaimsError(f"claim ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return claims


def load_frame(folder: Path, experiment: str, scale: str) -> pd.DataFrame | None:
    path = Path(folder) / experiment / scale / f"{experiment}.csv"
    return pd.read_csv(path) if path.is_file() else None


def load_gate(folder: Path, experiment: str, scale: str, names: Any = None) -> tuple[bool, str] | None:
    """The gates a report recorded in run_info.json: (all passed, what failed), None when it has none.
    Named gates (report/gates.py: depth, alpha) count only when `names` lists them: a claim names the
    gates it depends on (`needs_gates`), so a failed depth gate does not withhold a same-depth claim."""
    path = Path(folder) / experiment / scale / "run_info.json"
    if not path.is_file():
        return None
    gates = json.loads(path.read_text()).get("gates")
    if isinstance(gates, dict) and "passed" not in gates:
        gates = {name: g for name, g in gates.items() if name in (names or ())}
    return parse_gates(gates)


def parse_gates(gates: Any) -> tuple[bool, str] | None:
    if gates is None or gates == {} or gates == []:
        return None
    if isinstance(gates, bool):
        return gates, "" if gates else "gate failed"
    if isinstance(gates, dict) and "passed" in gates:
        passed = bool(gates["passed"])
        return passed, "" if passed else str(gates.get("label") or gates.get("detail") or "gate failed")
    items = gates.items() if isinstance(gates, dict) else [(g.get("name", "gate"), g) for g in gates]
    failed = []
    for name, g in items:
        ok = g if isinstance(g, bool) else bool(g.get("passed"))
        if not ok:
            detail = "" if isinstance(g, bool) else (g.get("detail") or g.get("label") or "")
            failed.append(f"{name}" + (f" ({detail})" if detail else ""))
    return not failed, "gate failed: " + "; ".join(failed) if failed else ""


def scales_with_results(folder: Path, experiment: str) -> list[str]:
    found = {p.parent.name for p in (Path(folder) / experiment).glob(f"*/{experiment}.csv")} - {"smoke"}
    return sorted(found, key=lambda s: (SCALE_ORDER.index(s) if s in SCALE_ORDER else len(SCALE_ORDER), s))


def paper_table_of(experiment: str) -> str | None:
    """Which table of experiments/paper_tables.csv an experiment reproduces (its report.paper_table)."""
    path = CONF / "experiment" / f"{experiment}.yaml"
    if path.is_file():
        report = (yaml.safe_load(path.read_text()) or {}).get("report") or {}
        if report.get("paper_table") is not None:
            return str(report["paper_table"])
    match = re.fullmatch(r"table(\d+)", experiment)
    return match.group(1) if match else ("longseq" if experiment == "longseq" else None)


def paper_frame(experiment: str) -> pd.DataFrame | None:
    """The paper's rows of the experiment's table, named and laid out as our report names them (paper_*)."""
    from denselab.report.tables import _num, label, paper_rows

    table = paper_table_of(experiment)
    if table is None:
        return None
    rows = []
    for _, p in paper_rows(table).iterrows():
        k, per = _num(p["dilation"]), _num(p["period"])
        rows.append({"row": label(p["model"], k, per, _num(p["depth"])), "model": p["model"],
                     "k_x_p": f"{k}x{per}" if k is not None else None, "depth": _num(p["depth"]),
                     "width": _num(p["width"]), "note": p["note"] if isinstance(p["note"], str) else None,
                     "paper_ppl": p["ppl"], "paper_ppl_stderr": p["ppl_stderr"],
                     "paper_inference_bps": p["inference_bps"], "paper_inference_bps_stderr": p["inference_bps_stderr"],
                     "paper_params_m": p["params_m"]})
    return pd.DataFrame(rows) if rows else None


# -- the pieces of a rule -------------------------------------------------------------------------

class Missing(Exception):
    """A row or an experiment the rule needs has no result: the verdict is "not run"."""


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
        return bool(np.isfinite(number)) and math.isclose(float(number), float(wanted))
    return str(value) == str(wanted)


def _name(selector: Any) -> str:
    if isinstance(selector, dict):
        extra = ", ".join(f"{k} {v}" for k, v in selector.items() if k != "row")
        return f"{selector.get('row', '')} ({extra})" if extra else str(selector.get("row"))
    return str(selector)


def _where(selector: Any) -> str:
    """What tells a row apart from its namesakes ("width 384"), else its name."""
    if isinstance(selector, dict) and len(selector) > 1:
        return ", ".join(f"{k} {v}" for k, v in selector.items() if k != "row")
    return _name(selector)


def select_row(frame: pd.DataFrame | None, selector: Any) -> pd.Series:
    """The one row of `frame` that `selector` names (a `row` label or a mapping of columns)."""
    if frame is None:
        raise Missing("not run")
    wanted = selector if isinstance(selector, dict) else {"row": selector}
    mask = np.ones(len(frame), dtype=bool)
    for column, value in wanted.items():
        if column not in frame:
            raise ClaimsError(f"{_name(selector)}: the table has no column {column!r}")
        mask &= np.array([_matches(v, value) for v in frame[column]], dtype=bool)
    hits = frame[mask]
    if len(hits) > 1:
        raise ClaimsError(f"{_name(selector)} names {len(hits)} rows; add columns to tell them apart")
    if hits.empty:
        raise Missing(f"no row {_name(selector)}")
    return hits.iloc[0]


def _float(value: Any) -> float | None:
    x = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return float(x) if np.isfinite(x) else None


def _stat(row: pd.Series, metric: str, source: str) -> tuple[float, float | None, int | None, bool]:
    """mean, standard error, n of a row's metric; the last: whether the metric has a standard error at all."""
    mean = _float(row.get(f"{source}_{metric}"))
    if mean is None:
        status = row.get("status")
        raise Missing(f"no {metric} for {row['row']}" + (f" ({status})" if isinstance(status, str) and status != "ok"
                                                          else ""))
    has_se = f"{source}_{metric}_stderr" in row.index
    n = _float(row.get("ours_n")) if source == "ours" else None
    return mean, _float(row.get(f"{source}_{metric}_stderr")), (int(n) if n is not None else None), has_se


def _t(df: float) -> float:
    return float(stats.t.ppf(0.975, df))


def difference(frame: pd.DataFrame | None, a_sel: Any, b_sel: Any, metric: str = "ppl",
               source: str = "ours") -> Estimate:
    """a − b (see the module's docstring for which test gives the interval)."""
    a, b = select_row(frame, a_sel), select_row(frame, b_sel)
    ma, sa, na, has_se = _stat(a, metric, source)
    mb, sb, nb, _ = _stat(b, metric, source)
    if source == "paper":
        return Estimate(ma, mb)
    if metric == "ppl":
        seeds_a, seeds_b = ppl_by_seed(a.get(SEED_PPL)), ppl_by_seed(b.get(SEED_PPL))
        shared = sorted(set(seeds_a) & set(seeds_b))
        if len(shared) >= 2:
            paired = paired_difference({s: seeds_a[s] for s in shared}, {s: seeds_b[s] for s in shared})
            low, high, n = paired["diff_ppl_ci95_low"], paired["diff_ppl_ci95_high"], len(shared)
            return Estimate(statistics.fmean(seeds_a[s] for s in shared), statistics.fmean(seeds_b[s] for s in shared),
                            low, high, n, "paired t", (high - low) / 2 / _t(n - 1), n - 1)
    n = min(na or 0, nb or 0) or None
    if not has_se:  # a quantity without seed noise in our table (parameters): exact
        return Estimate(ma, mb, ma - mb, ma - mb, n, "exact", 0.0, math.inf)
    if sa is None or sb is None or (na or 0) < 2 or (nb or 0) < 2:
        return Estimate(ma, mb, n=n, test="n < 2")
    se = math.hypot(sa, sb)
    if se == 0:
        return Estimate(ma, mb, ma - mb, ma - mb, n, "Welch (no spread)", 0.0, math.inf)
    df = se ** 4 / (sa ** 4 / (na - 1) + sb ** 4 / (nb - 1))
    half = _t(df) * se
    return Estimate(ma, mb, ma - mb - half, ma - mb + half, n, "Welch", se, df)


def directional(est: Estimate, claimed: int, margin: float = 0.0) -> str:
    """The verdict on "claimed · (a − b − margin) > 0" (claimed = −1: a − b < margin; +1: a − b > margin)."""
    d = claimed * (est.diff - margin)
    if est.low is not None and est.high is not None:
        lo, hi = sorted((claimed * (est.low - margin), claimed * (est.high - margin)))
        if lo > 0:
            return REPRODUCED
        if hi < 0:
            return CONTRADICTED
    return SAME if d > 0 else OPPOSITE


def _fmt(x: float | None, sign: bool = False, paper: bool | int = False) -> str:
    """Our numbers with 3 decimals; the paper's as printed (17.84, 31.039; paper=<int>: that many decimals)."""
    if x is None or not math.isfinite(x):
        return "?"
    if paper is False:
        digits = 3 if abs(x) < 100 else 1
    else:
        digits = _decimals(x) if paper is True else int(paper)
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _decimals(x: float) -> int:
    text = f"{round(x, 3):g}"
    return len(text.split(".")[1]) if "." in text else 0


def describe(est: Estimate, metric: str = "ppl", source: str = "ours") -> str:
    unit = "" if metric == "ppl" else f"{metric} "
    rel = f" ({est.diff / est.b:+.1%})" if est.b else ""
    paper = source == "paper"
    digits = max(_decimals(est.a), _decimals(est.b)) if paper else False
    text = f"{unit}{_fmt(est.a, paper=paper)} vs {_fmt(est.b, paper=paper)}: {_fmt(est.diff, True, digits)}{rel}"
    if paper or est.test == "exact":
        return text
    if est.low is not None:
        return text + f" [{_fmt(est.low, True)}, {_fmt(est.high, True)}] {est.test}"
    return text + f", no CI ({est.test})"


# -- the rules -------------------------------------------------------------------------------------

Frames = Mapping[str, "pd.DataFrame | None"]


def evaluate(rule: dict, frames: Frames, experiment: str, source: str = "ours") -> Result:
    """The verdict of one rule on the frames of one scale (experiment → its report table, None: not run)."""
    kind = rule.get("kind")
    if kind not in RULES:
        raise ClaimsError(f"unknown rule kind {kind!r} (known: {', '.join(sorted(RULES))})")
    experiment = rule.get("experiment", experiment)
    try:
        return RULES[kind](rule, frames, experiment, source)
    except Missing as e:
        what = f"{experiment}: {e}" if str(e) != "not run" else f"{experiment} not run"
        return Result(NOT_RUN, detail=what)


def _frame(frames: Frames, experiment: str) -> pd.DataFrame:
    frame = frames.get(experiment)
    if frame is None:
        raise Missing("not run")
    return frame


def _compare(claimed: int, margin_kind: str | None = None) -> Callable:
    def rule_fn(rule: dict, frames: Frames, experiment: str, source: str) -> Result:
        metric = rule.get("metric", "ppl")
        est = difference(_frame(frames, experiment), rule["row"], rule["reference"], metric, source)
        margin = float(rule.get("margin_rel", 0.0)) * est.b
        text = describe(est, metric, source)
        if margin_kind is None:
            verdict = directional(est, claimed)
        elif margin_kind == "not_worse":
            verdict = directional(est, -1, margin)
            text += f" (margin +{_fmt(margin)})"
        else:  # equivalent: both bounds inside ±margin
            inside, outside = directional(est, -1, margin), directional(est, +1, -margin)
            if CONTRADICTED in (inside, outside):
                verdict = CONTRADICTED
            elif inside == outside == REPRODUCED:
                verdict = REPRODUCED
            else:
                verdict = SAME if abs(est.diff) < margin else OPPOSITE
            text += f" (margin ±{_fmt(margin)})"
        return Result(verdict, text, est.n, estimate=est)
    return rule_fn


def combine(parts: list[Result]) -> Result:
    verdict = min((p.verdict for p in parts), key=_WORST_FIRST.index)
    ns = [p.n for p in parts if p.n]
    return Result(verdict, "; ".join(p.text for p in parts if p.text), min(ns) if ns else None,
                  "; ".join(p.detail for p in parts if p.detail),
                  next((p.estimate for p in parts if p.estimate is not None), None))


def _all(rule: dict, frames: Frames, experiment: str, source: str) -> Result:
    return combine([evaluate(r, frames, experiment, source) for r in rule["rules"]])


def _ordering(rule: dict, frames: Frames, experiment: str, source: str) -> Result:
    rows = rule["rows"]
    parts = [evaluate({"kind": "less", "row": a, "reference": b, "metric": rule.get("metric", "ppl")},
                      frames, experiment, source) for a, b in zip(rows, rows[1:])]
    result = combine(parts)
    result.text = f"{' < '.join(_name(r) for r in rows)}: " + result.text
    return result


def _monotone(rule: dict, frames: Frames, experiment: str, source: str) -> Result:
    frame, rows, metric = _frame(frames, experiment), rule["rows"], rule.get("metric", "ppl")
    claimed = 1 if rule.get("direction", "increasing") == "increasing" else -1
    means = [_stat(select_row(frame, r), metric, source)[0] for r in rows]
    steps = [difference(frame, b, a, metric, source) for a, b in zip(rows, rows[1:])]
    ends = difference(frame, rows[-1], rows[0], metric, source)
    rho = float(stats.spearmanr(np.arange(len(means)), means).statistic) if len(set(means)) > 1 else 0.0
    against = sum(directional(s, claimed) == CONTRADICTED for s in steps)
    inversions = sum(claimed * s.diff <= 0 for s in steps)
    end_verdict = directional(ends, claimed)
    if against or end_verdict == CONTRADICTED:
        verdict = CONTRADICTED
    elif end_verdict == REPRODUCED and claimed * rho >= float(rule.get("min_spearman", 0.8)) - 1e-9:
        verdict = REPRODUCED
    else:
        verdict = SAME if claimed * ends.diff > 0 and claimed * rho > 0 else OPPOSITE
    text = (f"{' → '.join(_fmt(m, paper=source == 'paper') for m in means)}; Spearman ρ {rho:+.2f}; last − first "
            + describe(ends, metric, source).split(": ", 1)[1])
    if source != "paper":
        text += f"; {inversions} of {len(steps)} steps inverted, {against} resolved against"
    return Result(verdict, text, ends.n, estimate=ends)


def _gap(part: dict, frames: Frames, experiment: str, source: str) -> tuple[float, float | None, float | None, Estimate]:
    """The relative gain (reference − row) / reference, its standard error and degrees of freedom."""
    exp = part.get("experiment", experiment)
    est = difference(_frame(frames, exp), part["row"], part["reference"], "ppl", source)
    se = None if est.se is None or est.df is None else abs(est.se) / est.b
    return -est.diff / est.b, se, est.df, est


def _gap_compare(rule: dict, frames: Frames, experiment: str, source: str) -> Result:
    claimed = 1 if rule.get("relation", "larger") == "larger" else -1
    ga, sa, da, ea = _gap(rule["a"], frames, experiment, source)
    gb, sb, db, eb = _gap(rule["b"], frames, experiment, source)
    est = Estimate(gb, ga, n=min(x for x in (ea.n, eb.n, 10 ** 9) if x) if (ea.n or eb.n) else None)
    if sa is not None and sb is not None:
        est.se, est.df = math.hypot(sa, sb), min(da, db)
        half = _t(est.df) * est.se if math.isfinite(est.df) else 1.96 * est.se
        est.low, est.high, est.test = est.diff - half, est.diff + half, "t, SEs combined"
    name_a, name_b = (rule[s].get("experiment") or _where(rule[s]["row"]) for s in ("a", "b"))
    text = f"relative gain {ga:.2%} ({name_a}) → {gb:.2%} ({name_b}): {est.diff * 100:+.2f} pp"
    if source != "paper":
        text += (f" [{est.low * 100:+.2f}, {est.high * 100:+.2f}] {est.test}" if est.low is not None
                 else f", no CI ({eb.test if eb.low is None else ea.test})")
    return Result(directional(est, claimed), text, est.n, estimate=est)


def alpha_matrix(frame: pd.DataFrame, panel: str, column: str = "alpha") -> tuple[np.ndarray, int | None]:
    rows = frame[frame["panel"] == panel]
    if rows.empty:
        raise Missing(f"no panel {panel!r}")
    size = int(rows["dwa_index"].max()) + 1
    matrix = np.full((size, size), np.nan)
    matrix[rows["dwa_index"].astype(int), rows["source"].astype(int)] = rows[column].astype(float)
    n = _float(rows["n_seeds"].iloc[0]) if "n_seeds" in rows else None
    return matrix, int(n) if n else None


def _deviation(alpha: np.ndarray) -> float:
    return float(np.nanmax(np.abs(alpha - np.eye(len(alpha)))))


def _alpha_moved(rule: dict, frames: Frames, experiment: str, source: str) -> Result:
    alpha, n = alpha_matrix(_frame(frames, experiment), rule["panel"])
    moved, least = _deviation(alpha), float(rule.get("min", 0.1))
    return Result(REPRODUCED if moved >= least else CONTRADICTED,
                  f"max |α − identity| {moved:.3f} (needs ≥ {least:g})", n)


def alpha_features(alpha: np.ndarray) -> dict[str, tuple[bool, str]]:
    """Fig. 4's pattern (paper §5) in a mean α matrix (row i: the DWA after block i, column j: X_j, 0 the
    embedding): (1) the current block's weight α_ii is the largest |α| of ≥ 90 % of the rows i ≥ 1; (2) the
    previous block's weight |α_i,i−1| is, on average, above the median of the other inter-block weights
    |α_ij| (0 < j < i − 1); (3) the embedding's weight α_i0 is positive on average over the first third of
    the DWAs and negative over the last third."""
    a, d = np.nan_to_num(alpha), len(alpha) - 1
    rows = range(1, d + 1)
    diagonal = np.mean([abs(a[i, i]) >= np.abs(a[i, : i + 1]).max() for i in rows])
    previous = np.mean([abs(a[i, i - 1]) for i in range(2, d + 1)]) if d >= 2 else float("nan")
    others = [abs(a[i, j]) for i in range(3, d + 1) for j in range(1, i - 1)]
    median = float(np.median(others)) if others else float("nan")
    third = max(1, d // 3)
    early, late = float(np.mean(a[1: 1 + third, 0])), float(np.mean(a[d - third + 1: d + 1, 0]))
    return {"diagonal": (diagonal >= 0.9, f"α_ii largest in {diagonal:.0%} of rows"),
            "previous": (bool(previous > median), f"|α_i,i−1| {previous:.3f} vs median {median:.3f}"),
            "embedding": (early > 0 > late, f"α_i0 {early:+.3f} early, {late:+.3f} late")}


def _alpha_pattern(rule: dict, frames: Frames, experiment: str, source: str) -> Result:
    alpha, n = alpha_matrix(_frame(frames, experiment), rule["panel"])
    features = alpha_features(alpha)
    held = sum(ok for ok, _ in features.values())
    verdict = REPRODUCED if held == len(features) else SAME if held else CONTRADICTED
    text = f"{held} of {len(features)} features: " + "; ".join(
        f"{name} {'✓' if ok else '✗'} ({what})" for name, (ok, what) in features.items())
    return Result(verdict, text, n)


def _pruning(rule: dict, frames: Frames, experiment: str, source: str) -> Result:
    frame = _frame(frames, experiment)
    series = frame[frame["series"] == rule.get("series", "DenseFormer")]
    percent = pd.to_numeric(series["dropped_percent"], errors="coerce")
    at, base = series[np.isclose(percent, float(rule["at_percent"]))], series[np.isclose(percent, 0)]
    if at.empty or base.empty:
        raise Missing(f"no {rule['at_percent']} % or 0 % point of {rule.get('series', 'DenseFormer')}")
    at, base = at.iloc[0], base.iloc[0]
    n = _float(at.get("n_seeds"))
    est = Estimate(float(at["ppl"]), float(base["ppl"]), n=int(n) if n else None, test="n < 2")
    if _float(at.get("diff_ppl_ci95_low")) is not None:  # the paired difference over seeds (build.alpha_pruning)
        est.low, est.high, est.test = float(at["diff_ppl_ci95_low"]), float(at["diff_ppl_ci95_high"]), "paired t"
        est.n = int(_float(at.get("diff_n")) or 0) or est.n
    margin = float(rule.get("min_increase_rel", 0.0)) * est.b
    text = f"{rule['at_percent']} % dropped: " + describe(est) + f" (needs > +{_fmt(margin)})"
    return Result(directional(est, +1, margin), text, est.n, estimate=est)


RULES: dict[str, Callable[..., Result]] = {
    "less": _compare(-1), "greater": _compare(+1), "not_worse": _compare(-1, "not_worse"),
    "equivalent": _compare(-1, "equivalent"), "all": _all, "ordering": _ordering, "monotone": _monotone,
    "gap_compare": _gap_compare, "alpha_moved": _alpha_moved, "alpha_pattern": _alpha_pattern, "pruning": _pruning,
}
PAPERLESS = ("alpha_moved", "alpha_pattern", "pruning")  # figures without a table: the claim's `paper` text


# -- a claim at one scale ------------------------------------------------------------------------

def experiments_of(rule: dict, default: str) -> set[str]:
    """The experiments whose tables a rule reads."""
    here = rule.get("experiment", default)
    if rule.get("kind") == "all":
        return set().union(*(experiments_of(sub, here) for sub in rule["rules"]))
    if rule.get("kind") == "gap_compare":
        return {rule[side].get("experiment", here) for side in ("a", "b")}
    return {here}


def evaluate_claim(claim: dict, scale: str, frames: Frames,
                   gates: Mapping[tuple[str, str], tuple[bool, str] | None] | None = None) -> Result:
    """The verdict of a claim at one scale: the gates first (recorded ones, the claim's own, its `scales`),
    then its rule. A failed gate keeps our numbers but says "not resolved at this scale"."""
    experiment = claim["experiment"]
    result = evaluate(claim["rule"], frames, experiment)
    if result.verdict == NOT_RUN:
        return result
    reasons = []
    for exp in sorted(experiments_of(claim["rule"], experiment)):
        gate = (gates or {}).get((exp, scale))
        if gate is not None and not gate[0]:
            reasons.append(f"{exp}: {gate[1]}")
    if claim.get("scales") and scale not in claim["scales"]:
        reasons.append(claim.get("scales_note") or f"tested at scale={'/'.join(claim['scales'])} only")
    if "gate" in claim:
        gate = evaluate(claim["gate"], frames, experiment)
        what = claim["gate"].get("label", claim["gate"]["kind"])
        if gate.verdict == NOT_RUN:
            result.detail = "; ".join(filter(None, [result.detail, f"gate '{what}' not checked ({gate.detail})"]))
        elif gate.verdict != REPRODUCED:
            reasons.append(f"gate '{what}' {gate.verdict}: {gate.text}")
        else:
            result.detail = "; ".join(filter(None, [result.detail, f"gate '{what}' passed: {gate.text}"]))
    if reasons:
        result.detail = "; ".join(filter(None, reasons + [result.detail]))
        result.verdict = NOT_RESOLVED
    return result


def paper_effect(claim: dict) -> str:
    """The paper's numbers for the claim: the claim's `paper` text, or its rule on paper_tables.csv."""
    if claim.get("paper"):
        return str(claim["paper"])
    experiments = experiments_of(claim["rule"], claim["experiment"])
    frames = {e: paper_frame(e) for e in experiments}
    result = evaluate(claim["rule"], frames, claim["experiment"], source="paper")
    tables = ", ".join(f"Table {paper_table_of(e)}" if paper_table_of(e) != "longseq" else "§4.1"
                       for e in sorted(experiments) if paper_table_of(e))
    return f"{tables}: {result.text}" if result.text else tables


def scoreboard(folder: Path = EXPERIMENTS, claims: list[dict] | None = None,
               gates: Mapping[tuple[str, str], tuple[bool, str] | None] | None = None) -> pd.DataFrame:
    """One row per claim and scale with results (one "not run" row for a claim without any)."""
    folder = Path(folder)
    claims = load_claims(folder / "claims.yaml") if claims is None else claims
    rows = []
    for claim in claims:
        experiments = experiments_of(claim["rule"], claim["experiment"])
        scales = sorted({s for e in experiments for s in scales_with_results(folder, e)},
                        key=lambda s: (SCALE_ORDER.index(s) if s in SCALE_ORDER else len(SCALE_ORDER), s))
        paper = paper_effect(claim)
        base = {"claim": claim["id"], "text": " ".join(str(claim["text"]).split()), "experiment": claim["experiment"],
                "paper": paper}
        if not scales:
            rows.append(base | {"scale": None, "verdict": NOT_RUN, "n": None, "ours": "",
                                "detail": claim.get("needs") or f"no results at any scale (make {claim['experiment']})"})
            continue
        for scale in scales:
            read = experiments | (experiments_of(claim["gate"], claim["experiment"]) if "gate" in claim else set())
            frames = {e: load_frame(folder, e, scale) for e in read}
            needs = claim.get("needs_gates")
            scale_gates = {(e, scale): load_gate(folder, e, scale, needs) for e in experiments} | dict(gates or {})
            result = evaluate_claim(claim, scale, frames, scale_gates)
            est = result.estimate
            rows.append(base | {"scale": scale, "verdict": result.verdict, "n": result.n, "ours": result.text,
                                "detail": result.detail or (claim.get("needs") if result.verdict == NOT_RUN else ""),
                                "diff": est.diff if est else None, "diff_ci95_low": est.low if est else None,
                                "diff_ci95_high": est.high if est else None})
    table = pd.DataFrame(rows)
    for column in CSV_COLUMNS:
        if column not in table:
            table[column] = None
    table["n"] = table["n"].astype("Int64")
    return table[CSV_COLUMNS]


def _cell(text: Any) -> str:
    return "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text).replace("|", "\\|")


def readme_lines(board: pd.DataFrame) -> list[str]:
    """The scoreboard section of experiments/README.md."""
    lines = ["## Claims scoreboard", "",
             "The paper's main claims ([claims.yaml](claims.yaml)), each judged by its rule on the committed report "
             "CSVs of each scale that has them (`make claims`, also [claims.csv](claims.csv); "
             "`src/denselab/report/claims.py` defines the rules). **reproduced**: our 95 % confidence interval "
             "lies on the paper's side (of 0, or of the stated margin); **same direction, not resolved**: our "
             "estimate does, its interval does not; **contradicted**: the interval lies on the other side; **not "
             "resolved at this scale**: a gate failed (e.g. deeper Transformers are not better, or the α did not move "
             "from the identity), so the numbers are shown but no conclusion is drawn; **not run**: no result. "
             "Intervals: a paired t over the seeds both rows ran (same seeds, same batches), else Welch's t from "
             "the rows' means and standard errors; n: seeds.", "",
             "| claim | paper | ours (95 % CI) | verdict (scale, n) |", "| --- | --- | --- | --- |"]
    for r in board.itertuples():
        where = f"{r.scale}, n={r.n}" if _cell(r.scale) and not pd.isna(r.n) else _cell(r.scale)
        verdict = f"**{r.verdict}**" + (f" ({where})" if where else "")
        if _cell(r.detail):
            verdict += f"<br>{_cell(r.detail)}"
        lines.append(f"| **{r.claim}** ([{r.experiment}]({r.experiment}/README.md)): {_cell(r.text)} | "
                     f"{_cell(r.paper)} | {_cell(r.ours) or '-'} | {verdict} |")
    counts = board["verdict"].value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{v} {counts[v]}" for v in VERDICTS if v in counts) + ".", ""]
    return lines


def write_claims_csv(board: pd.DataFrame, folder: Path = EXPERIMENTS) -> Path:
    from denselab.io import atomic_write_text

    path = Path(folder) / "claims.csv"
    atomic_write_text(path, board.to_csv(index=False, float_format="%.6g"))
    return path
