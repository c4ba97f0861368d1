"""Gates: a scale that cannot speak to a claim says so ("not resolved at this scale") instead of drawing one."""

from __future__ import annotations

import json
from pathlib import Path

from denselab.report import gates
from denselab.report.runs import Run


def run(tmp: Path, model: str, depth: int, seed: int, ppl: float, alpha: list[list[float]] | None = None) -> Run:
    folder = tmp / f"{model}-{depth}-{seed}"
    folder.mkdir(parents=True)
    if alpha is not None:
        (folder / "alpha_history.json").write_text(json.dumps({"0": [[1.0]], "500": alpha}))
    hparams = {"model": model, "depth": depth, "dilation": 1 if model == "denseformer" else None,
               "dwa_period": 1 if model == "denseformer" else None}
    metrics = {"status": "completed", "final_val_ppl": ppl, "hparams": hparams}
    return Run(folder, (f"model={model}", f"depth={depth}"), str(seed), metrics)


def test_depth_gate_passes_when_the_deeper_transformer_is_better_on_every_seed(tmp_path):
    runs = [run(tmp_path, "transformer", 12, s, 30.0 + s) for s in range(3)]
    runs += [run(tmp_path, "transformer", 18, s, 29.0 + s + 0.01 * s) for s in range(3)]
    result = gates.depth_gate(runs)
    assert result["passed"] is True and result["deep"] == 18 and result["diff_test"] == "paired t"
    assert "Transformer 18 − 12 blocks" in result["detail"]


def test_depth_gate_fails_when_depth_does_not_help_at_this_scale(tmp_path):
    runs = [run(tmp_path, "transformer", 12, s, 30.0 + s) for s in range(3)]
    runs += [run(tmp_path, "transformer", 18, s, 30.0 + s + (-0.5, 0.6, 0.1)[s]) for s in range(3)]
    assert gates.depth_gate(runs)["passed"] is False  # the interval straddles 0


def test_depth_gate_is_not_run_with_a_single_depth(tmp_path):
    runs = [run(tmp_path, "transformer", 12, s, 30.0) for s in range(3)]
    assert gates.depth_gate(runs)["passed"] is None
    assert gates.verdict({"depth": gates.depth_gate(runs)}) == "not run"


def test_alpha_gate_reads_how_far_the_last_alpha_snapshot_moved_from_the_identity(tmp_path):
    still = [[1.0], [0.02, 0.99]]
    moved = [[0.8], [0.3, 0.9]]
    assert gates.alpha_gate([run(tmp_path / "a", "denseformer", 12, 0, 30.0, still)])["passed"] is False
    result = gates.alpha_gate([run(tmp_path / "b", "denseformer", 12, 0, 30.0, moved)])
    assert result["passed"] is True and result["max_abs_alpha_minus_identity"] == 0.3
    assert gates.verdict({"alpha": result, "depth": {"passed": False}}) == "failed"
