"""Gates: whether a scale can speak to a claim at all, checked on the runs before their numbers are read.

A small model trained briefly can fail in ways that make a table's comparisons meaningless rather than
negative. Two such failures matter for the paper's claims:

* `depth` — a deeper Transformer must beat a shallower one (paired over seeds, 95 % CI below 0).
  Otherwise "DenseFormer matches a deeper Transformer" compares against a depth axis that does not work
  at this scale: the deeper baseline is not a stronger baseline.
* `alpha` — the learned DWA weights must move visibly from their identity initialisation (largest
  |α − I| of the final weights, averaged over seeds, at least ALPHA_MOVED). Otherwise α heatmaps and
  pruning show the initialisation, not what training learned (paper §5, Figs. 4–9).

An experiment lists its gates in `report.gates`; `report_experiment` writes the result to gates.json
beside the table, and the claims scoreboard says "not resolved at this scale" for a claim whose gate
failed. A gate without the runs it needs is "not run" (passed = None), which is not a failure.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from denselab.report.runs import Run
from denselab.report.tables import paired_difference

ALPHA_MOVED = 0.1   # |α − I| of this size is a visible colour step on Fig. 4's symlog scale (linthresh 0.01)
GATES = ("depth", "alpha")


def depth_gate(runs: list[Run]) -> dict[str, Any]:
    """The deepest Transformer against the shallowest one of the runs (paired over seeds)."""
    by_depth: dict[int, dict[int, float]] = {}
    for r in runs:
        if r.ok and r.hparams.get("model") == "transformer":
            by_depth.setdefault(int(r.hparams["depth"]), {})[r.seed] = r.metrics["final_val_ppl"]
    if len(by_depth) < 2:
        return {"gate": "depth", "passed": None, "detail": "needs Transformers of two depths"}
    shallow, deep = min(by_depth), max(by_depth)
    diff = paired_difference(by_depth[deep], by_depth[shallow])
    if "diff_ppl_ci95_low" not in diff:
        return {"gate": "depth", "passed": None, "detail": f"Transformer {deep} vs {shallow} blocks: fewer than 2 seeds"}
    passed = diff["diff_resolved"] and diff["diff_ppl"] < 0
    return {"gate": "depth", "passed": bool(passed),
            "detail": (f"Transformer {deep} − {shallow} blocks: Δppl {diff['diff_ppl']:+.3f}, 95 % CI "
                       f"[{diff['diff_ppl_ci95_low']:+.3f}, {diff['diff_ppl_ci95_high']:+.3f}], "
                       f"n={diff['diff_n']} ({diff['diff_test']})"),
            "deep": deep, "shallow": shallow, **diff}


def alpha_moved(run: Run) -> float | None:
    """max |α − I| of a run's last α snapshot (alpha_history.json), None for a run without α."""
    path = run.dir / "alpha_history.json"
    if not path.is_file():
        return None
    history = json.loads(path.read_text())
    if not history:
        return None
    last = history[max(history, key=int)]
    return max(abs(a - (1.0 if i == j else 0.0)) for i, row in enumerate(last) for j, a in enumerate(row))


def alpha_gate(runs: list[Run]) -> dict[str, Any]:
    """The 1x1-DenseFormers' α must have moved from the identity (mean over seeds of max |α − I|)."""
    moved = [m for r in runs if r.ok and r.hparams.get("model") == "denseformer"
             and r.hparams.get("dilation") == 1 and r.hparams.get("dwa_period") == 1
             for m in [alpha_moved(r)] if m is not None]
    if not moved:
        return {"gate": "alpha", "passed": None, "detail": "needs a trained 1x1-DenseFormer with alpha_history.json"}
    mean = statistics.fmean(moved)
    return {"gate": "alpha", "passed": mean >= ALPHA_MOVED,
            "detail": f"max |α − I| = {mean:.3f} (mean of {len(moved)} seeds; visible from {ALPHA_MOVED})",
            "max_abs_alpha_minus_identity": round(mean, 4), "n": len(moved)}


CHECKS = {"depth": depth_gate, "alpha": alpha_gate}


def check_gates(runs: list[Run], gates: list[str]) -> dict[str, dict[str, Any]]:
    """{gate: its result} for the gates an experiment lists."""
    return {g: CHECKS[g](runs) for g in gates}


def verdict(results: dict[str, dict[str, Any]]) -> str:
    """'passed', 'failed' (some gate failed: "not resolved at this scale") or 'not run'."""
    states = [r["passed"] for r in results.values()]
    if any(s is False for s in states):
        return "failed"
    return "passed" if states and all(states) else "not run"
