"""The claims scoreboard: each rule kind's verdicts on small hand-made report tables, the gates, the claims
file against the paper's own numbers, and experiments/README.md + claims.csv generated from the CSVs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from denselab.report import claims as C
from tests.conftest import REPO


def table(rows: dict[str, tuple], seeds: dict[str, list[float]] | None = None, **columns) -> pd.DataFrame:
    """A report table: row → (mean ppl, standard error, n); `seeds`: row → its perplexity per seed (0, 1, ...)."""
    frame = pd.DataFrame([{"row": r, "ours_ppl": m, "ours_ppl_stderr": se, "ours_n": n, "status": "ok"}
                          for r, (m, se, n) in rows.items()])
    for column, values in columns.items():
        frame[column] = values
    if seeds:
        frame["ours_ppl_by_seed"] = [json.dumps({str(s): p for s, p in enumerate(seeds[r])}) if r in seeds else None
                                     for r in frame["row"]]
    return frame


# the same three seeds: D is 0.2 below T on each (± 0.01), while the seeds themselves spread by ± 0.1
PAIRED = {"T": [7.6, 7.7, 7.8], "D": [7.41, 7.49, 7.60]}


def verdict(rule: dict, frame: pd.DataFrame | None, **frames) -> C.Result:
    return C.evaluate(rule, {"t": frame, **frames}, "t")


LESS = {"kind": "less", "row": "D", "reference": "T"}


def test_less_pairs_the_two_rows_over_their_seeds():
    from scipy import stats

    frame = table({"T": (7.7, 0.10, 3), "D": (7.5, 0.10, 3)}, seeds=PAIRED)
    result = verdict(LESS, frame)
    assert result.verdict == C.REPRODUCED and result.n == 3 and "paired t" in result.text
    low, high = stats.ttest_rel(PAIRED["D"], PAIRED["T"]).confidence_interval(0.95)
    assert (result.estimate.low, result.estimate.high) == (pytest.approx(low), pytest.approx(high))
    # the same means unpaired (Welch from the summaries): the seed spread swamps the difference
    assert verdict(LESS, table({"T": (7.7, 0.10, 3), "D": (7.5, 0.10, 3)})).verdict == C.SAME



def test_two_rows_that_are_not_the_reference_are_paired_over_the_seeds_they_share():
    from scipy import stats

    deep_dense, deep_transformer = [54.17, 54.20, 55.99], [57.36, 57.03, 59.58]  # a common shift per seed
    seeds = lambda ppl: json.dumps({str(s): p for s, p in enumerate(ppl)})  # noqa: E731
    frame = table({"T": (56.25, 0.04, 3), "D": (54.79, 0.60, 3), "T72": (57.99, 0.80, 3)},
                  ours_ppl_by_seed=[None, seeds(deep_dense), seeds(deep_transformer)])
    result = verdict({"kind": "less", "row": "D", "reference": "T72"}, frame)
    low, high = stats.ttest_rel(deep_dense, deep_transformer).confidence_interval(0.95)
    assert "paired t" in result.text and result.n == 3
    assert (result.estimate.low, result.estimate.high) == (pytest.approx(low), pytest.approx(high))
    unpaired = verdict({"kind": "less", "row": "D", "reference": "T72"}, frame.drop(columns="ours_ppl_by_seed"))
    assert "Welch" in unpaired.text and unpaired.estimate.high - unpaired.estimate.low > 2 * (high - low)

def test_less_reversed_pair_and_each_directional_verdict():
    frame = table({"T": (7.7, 0.10, 3), "D": (7.5, 0.10, 3)}, seeds=PAIRED)
    assert verdict({"kind": "less", "row": "T", "reference": "D"}, frame).verdict == C.CONTRADICTED
    assert verdict({"kind": "greater", "row": "T", "reference": "D"}, frame).verdict == C.REPRODUCED
    worse = table({"T": (7.5, 0.01, 3), "D": (7.7, 0.01, 3)})  # Welch: resolved the wrong way
    assert verdict(LESS, worse).verdict == C.CONTRADICTED
    assert "Welch" in verdict(LESS, worse).text
    noisy = table({"T": (7.5, 0.3, 3), "D": (7.6, 0.3, 3)})
    assert verdict(LESS, noisy).verdict == C.OPPOSITE
    one_seed = table({"T": (7.7, None, 1), "D": (7.5, None, 1)})
    result = verdict(LESS, one_seed)
    assert result.verdict == C.SAME and result.estimate.low is None and "no CI" in result.text


def test_missing_row_or_experiment_is_not_run():
    assert verdict(LESS, None).verdict == C.NOT_RUN
    result = verdict(LESS, table({"T": (7.7, 0.1, 3)}))
    assert result.verdict == C.NOT_RUN and "no row D" in result.detail
    diverged = table({"T": (7.7, 0.1, 3), "D": (np.nan, np.nan, 0)})
    assert verdict(LESS, diverged).verdict == C.NOT_RUN


def test_equivalent_not_worse_and_an_exact_metric():
    close = table({"T": (10.0, 0.01, 3), "D": (10.02, 0.01, 3)}, ours_params_m=[1.0, 0.8])
    equivalent = {"kind": "equivalent", "row": "D", "reference": "T", "margin_rel": 0.01}
    assert verdict(equivalent, close).verdict == C.REPRODUCED            # |diff| ≤ 0.05 < 0.1 = 1 %
    far = table({"T": (10.0, 0.01, 3), "D": (10.5, 0.01, 3)})
    assert verdict(equivalent, far).verdict == C.CONTRADICTED            # resolved outside ±1 %
    assert verdict(equivalent, table({"T": (10.0, 0.5, 3), "D": (10.05, 0.5, 3)})).verdict == C.SAME
    assert verdict(equivalent, table({"T": (10.0, 0.5, 3), "D": (10.3, 0.5, 3)})).verdict == C.OPPOSITE
    not_worse = {"kind": "not_worse", "row": "D", "reference": "T", "margin_rel": 0.01}
    assert verdict(not_worse, close).verdict == C.REPRODUCED
    assert verdict(not_worse, far).verdict == C.CONTRADICTED
    fewer = verdict({"kind": "less", "metric": "params_m", "row": "D", "reference": "T"}, close)
    assert fewer.verdict == C.REPRODUCED and fewer.estimate.test == "exact"


def test_all_takes_its_worst_part_and_ordering_checks_each_adjacent_pair():
    frame = table({"T": (8.0, 0.01, 3), "L": (7.8, 0.01, 3), "D": (7.5, 0.01, 3)})
    ordering = {"kind": "ordering", "rows": ["D", "L", "T"]}
    assert verdict(ordering, frame).verdict == C.REPRODUCED
    assert verdict({"kind": "ordering", "rows": ["L", "D", "T"]}, frame).verdict == C.CONTRADICTED
    both = {"kind": "all", "rules": [ordering, {"kind": "less", "row": "D", "reference": "X"}]}
    assert verdict(both, frame).verdict == C.NOT_RUN
    assert C.combine([C.Result(C.SAME, n=3), C.Result(C.REPRODUCED, n=2)]).verdict == C.SAME
    assert C.combine([C.Result(C.SAME, n=3), C.Result(C.REPRODUCED, n=2)]).n == 2
    assert C.combine([C.Result(C.NOT_RUN), C.Result(C.CONTRADICTED)]).verdict == C.CONTRADICTED


def test_monotone():
    rule = {"kind": "monotone", "rows": ["N0", "N1", "N2", "N3"], "min_spearman": 0.8}
    rising = table({"N0": (7.50, 0.01, 3), "N1": (7.55, 0.01, 3), "N2": (7.54, 0.01, 3), "N3": (7.70, 0.01, 3)})
    # one step inverted (−0.01 within noise), the ends resolved, ρ = 0.8: reproduced
    assert verdict(rule, rising).verdict == C.REPRODUCED
    unresolved = table({"N0": (7.50, 0.05, 3), "N1": (7.52, 0.05, 3), "N2": (7.53, 0.05, 3), "N3": (7.55, 0.05, 3)})
    assert verdict(rule, unresolved).verdict == C.SAME
    against = table({"N0": (7.50, 0.01, 3), "N1": (7.70, 0.01, 3), "N2": (7.55, 0.01, 3), "N3": (7.80, 0.01, 3)})
    result = verdict(rule, against)
    assert result.verdict == C.CONTRADICTED and "1 resolved against" in result.text


def test_gap_compare_across_two_experiments():
    rule = {"kind": "gap_compare", "relation": "larger", "a": {"experiment": "b400", "row": "D", "reference": "T"},
            "b": {"experiment": "b128", "row": "D", "reference": "T"}}
    small_gap = table({"T": (10.0, 0.01, 3), "D": (9.8, 0.01, 3)})    # 2 %
    large_gap = table({"T": (20.0, 0.01, 3), "D": (19.0, 0.01, 3)})   # 5 %
    result = C.evaluate(rule, {"b400": small_gap, "b128": large_gap}, "b128")
    assert result.verdict == C.REPRODUCED and result.estimate.diff == pytest.approx(0.03)
    assert C.evaluate(rule | {"relation": "smaller"}, {"b400": small_gap, "b128": large_gap}, "b128").verdict \
        == C.CONTRADICTED
    assert C.evaluate(rule, {"b400": small_gap, "b128": None}, "b128").verdict == C.NOT_RUN


def alpha_frame(alpha: np.ndarray, panel: str = "p", n: int = 3) -> pd.DataFrame:
    return pd.DataFrame([{"panel": panel, "dwa_index": i, "source": j, "alpha": alpha[i, j], "n_seeds": n}
                         for i in range(len(alpha)) for j in range(i + 1)])


def fig4_like(d: int = 12, scale: float = 1.0) -> np.ndarray:
    """The paper's pattern: the diagonal, a strong previous block, the embedding + early and − late."""
    alpha = np.eye(d + 1)
    for i in range(1, d + 1):
        alpha[i, :i] = 0.02 * scale
        alpha[i, i - 1] = 0.3 * scale
        alpha[i, 0] = (0.2 if i <= d // 2 else -0.2) * scale
    return alpha


def test_alpha_pattern_and_its_gate():
    rule, gate = {"kind": "alpha_pattern", "panel": "p"}, {"kind": "alpha_moved", "panel": "p", "min": 0.1}
    frame = alpha_frame(fig4_like())
    assert verdict(rule, frame).verdict == C.REPRODUCED and verdict(gate, frame).verdict == C.REPRODUCED
    flipped = fig4_like()
    flipped[1:, 0] *= -1  # the embedding negative early, positive late
    assert verdict(rule, alpha_frame(flipped)).verdict == C.SAME
    claim = {"id": "a", "text": "", "experiment": "t", "rule": rule, "gate": gate}
    near_identity = alpha_frame(fig4_like(scale=0.1))  # the pattern, but within 0.03 of the identity
    result = C.evaluate_claim(claim, "mini", {"t": near_identity})
    assert result.verdict == C.NOT_RESOLVED and "max |α − identity| 0.030" in result.detail
    assert verdict(rule, alpha_frame(fig4_like(), panel="q")).verdict == C.NOT_RUN


def test_pruning():
    rule = {"kind": "pruning", "series": "DenseFormer", "at_percent": 20, "min_increase_rel": 0.01}
    frame = pd.DataFrame({"series": ["DenseFormer"] * 3 + ["Transformer"], "dropped_percent": [0, 10, 20, None],
                          "ppl": [10.0, 10.05, 11.0, 10.5], "n_seeds": [3, 3, 3, 3],
                          "diff_ppl": [None, 0.05, 1.0, None], "diff_ppl_ci95_low": [None, 0.0, 0.8, None],
                          "diff_ppl_ci95_high": [None, 0.08, 1.2, None], "diff_n": [None, 3, 3, None]})
    result = verdict(rule, frame)
    assert result.verdict == C.REPRODUCED and result.n == 3
    assert verdict(rule | {"at_percent": 10}, frame).verdict == C.CONTRADICTED  # at most +0.1 < 1 % of 10
    assert verdict(rule | {"at_percent": 30}, frame).verdict == C.NOT_RUN


def test_gates_make_a_claim_not_resolved_at_this_scale():
    frame = table({"T": (7.7, 0.10, 3), "D": (7.5, 0.10, 3), "T72": (7.8, 0.1, 3)},
                  seeds=PAIRED)
    claim = {"id": "c", "text": "", "experiment": "t", "rule": LESS}
    assert C.evaluate_claim(claim, "mini", {"t": frame}).verdict == C.REPRODUCED
    recorded = C.evaluate_claim(claim, "mini", {"t": frame}, gates={("t", "mini"): (False, "depth axis failed")})
    assert recorded.verdict == C.NOT_RESOLVED and "depth axis failed" in recorded.detail
    assert "paired t" in recorded.text  # the numbers stay, without a conclusion
    other_scale = C.evaluate_claim(claim, "mini", {"t": frame}, gates={("t", "small"): (False, "x")})
    assert other_scale.verdict == C.REPRODUCED
    depth = claim | {"gate": {"kind": "less", "row": "T72", "reference": "T", "label": "deeper is better"}}
    result = C.evaluate_claim(depth, "mini", {"t": frame})
    assert result.verdict == C.NOT_RESOLVED and "gate 'deeper is better' opposite direction" in result.detail
    only_paper = claim | {"scales": ["paper"], "scales_note": "needs PG-19"}
    assert C.evaluate_claim(only_paper, "mini", {"t": frame}).detail.startswith("needs PG-19")
    assert C.evaluate_claim(only_paper, "paper", {"t": frame}).verdict == C.REPRODUCED
    assert C.evaluate_claim(claim, "mini", {"t": None}).verdict == C.NOT_RUN


@pytest.mark.parametrize("gates, passed", [
    (None, None), ({"passed": False, "label": "not resolved at this scale"}, False), ({"passed": True}, True),
    ({"depth_axis": True, "alpha_moved": {"passed": False, "detail": "0.04 < 0.1"}}, False),
    ([{"name": "depth_axis", "passed": True}], True)])
def test_recorded_gates_in_run_info(tmp_path, gates, passed):
    (tmp_path / "t" / "mini").mkdir(parents=True)
    (tmp_path / "t" / "mini" / "run_info.json").write_text(json.dumps({"scale": "mini"} | (
        {"gates": gates} if gates is not None else {})))
    found = C.load_gate(tmp_path, "t", "mini", ["depth_axis", "alpha_moved"])
    assert (found if found is None else found[0]) == passed
    if passed is False:
        assert found[1]


def test_a_named_gate_holds_back_only_the_claims_that_need_it(tmp_path):
    (tmp_path / "t" / "mini").mkdir(parents=True)
    (tmp_path / "t" / "mini" / "run_info.json").write_text(json.dumps(
        {"scale": "mini", "gates": {"depth": {"passed": False, "detail": "deeper not better"}}}))
    assert C.load_gate(tmp_path, "t", "mini", ["depth"]) == (False, "gate failed: depth (deeper not better)")
    assert C.load_gate(tmp_path, "t", "mini", None) is None  # a same-depth claim is read as it is


def test_a_malformed_rule_is_an_error_not_a_verdict():
    frame = table({"T": (7.7, 0.1, 3), "D": (7.5, 0.1, 3)}, width=[384, 384])
    with pytest.raises(C.ClaimsError, match="unknown rule kind"):
        verdict({"kind": "better"}, frame)
    twice = pd.concat([frame, frame.assign(width=768)])
    with pytest.raises(C.ClaimsError, match="names 2 rows"):
        verdict(LESS, twice)
    by_width = {"kind": "less", "row": {"row": "D", "width": 768}, "reference": {"row": "T", "width": 768}}
    assert verdict(by_width, twice).verdict == C.SAME


def test_every_claim_holds_on_the_papers_own_numbers():
    """The claims file names rows that exist in the paper's tables, and each rule (without intervals: the
    paper's numbers are points here) points the paper's way on the paper's numbers."""
    claims = C.load_claims()
    assert len(claims) >= 13 and {c["experiment"] for c in claims} >= {
        "table1", "table3", "table5", "table6", "table8", "longseq", "table4", "fig4", "fig6"}
    for claim in claims:
        assert (REPO / "conf" / "experiment" / f"{claim['experiment']}.yaml").is_file(), claim["id"]
        if claim["rule"]["kind"] in C.PAPERLESS:
            assert claim.get("paper"), claim["id"]
            continue
        experiments = C.experiments_of(claim["rule"], claim["experiment"])
        result = C.evaluate(claim["rule"], {e: C.paper_frame(e) for e in experiments}, claim["experiment"], "paper")
        assert result.verdict in (C.SAME, C.REPRODUCED), (claim["id"], result)
        assert C.paper_effect(claim).startswith(("Table", "§4.1")), claim["id"]


def test_scoreboard_and_readme_from_the_committed_csvs(tmp_path):
    folder = tmp_path / "experiments"
    shutil.copytree(REPO / "experiments", folder, ignore=shutil.ignore_patterns("*.png", "bench"))
    from denselab.report.build import write_index

    text = write_index(folder).read_text()
    board = pd.read_csv(folder / "claims.csv")
    claims = C.load_claims(folder / "claims.yaml")
    assert set(board["claim"]) == {c["id"] for c in claims}
    assert set(board["verdict"]) <= set(C.VERDICTS)
    for claim in claims:  # a row per scale with results, else one "not run"
        experiments = C.experiments_of(claim["rule"], claim["experiment"])
        scales = {s for e in experiments for s in C.scales_with_results(folder, e)}
        rows = board[board["claim"] == claim["id"]]
        assert set(rows["scale"].dropna()) == scales
        if not scales:
            assert list(rows["verdict"]) == [C.NOT_RUN]
    ran = board.dropna(subset=["scale"])
    assert (ran["verdict"] == C.NOT_RUN).sum() < len(ran)  # table1/mini etc. are committed
    assert "## Claims scoreboard" in text and "| claim | paper | ours (95 % CI) | verdict (scale, n) |" in text
    assert text.index("## Claims scoreboard") < text.index("| [table1](table1/README.md) |")
    for claim in claims:
        assert f"| **{claim['id']}** ([{claim['experiment']}]" in text
    headline = board[board["claim"] == "beats-same-depth"].iloc[0]
    assert headline["scale"] == "mini" and headline["n"] >= 2 and "Table 1: 17.84 vs 18.61: -0.77" in headline["paper"]


def test_scoreboard_of_hand_made_results_with_a_recorded_gate(tmp_path):
    folder = tmp_path / "experiments"
    (folder / "t" / "mini").mkdir(parents=True)
    frame = table({"T": (7.7, 0.1, 3), "D": (7.5, 0.1, 3)}, seeds=PAIRED)
    frame.to_csv(folder / "t" / "mini" / "t.csv", index=False)
    (folder / "t" / "mini" / "run_info.json").write_text(json.dumps({"scale": "mini"}))
    claims = [{"id": "c", "text": "D beats T", "experiment": "t", "rule": LESS, "paper": "p"},
              {"id": "u", "text": "never run", "experiment": "u", "rule": LESS, "paper": "p"}]
    board = C.scoreboard(folder, claims).set_index("claim")
    assert board.loc["c", "verdict"] == C.REPRODUCED and board.loc["c", "n"] == 3
    assert board.loc["c", "diff_ci95_high"] == pytest.approx(-0.2 + 4.303 * 0.01 / 3 ** 0.5, abs=1e-3)
    assert board.loc["u", "verdict"] == C.NOT_RUN and pd.isna(board.loc["u", "scale"])
    (folder / "t" / "mini" / "run_info.json").write_text(json.dumps(
        {"scale": "mini", "gates": {"passed": False, "label": "not resolved at this scale"}}))
    assert C.scoreboard(folder, claims).set_index("claim").loc["c", "verdict"] == C.NOT_RESOLVED
    lines = "\n".join(C.readme_lines(C.scoreboard(folder, claims)))
    assert "**not resolved at this scale** (mini, n=3)" in lines and "**not run**<br>" in lines
