"""A paper table in the paper's layout, also while only some of its rows have run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from denselab.report.runs import Run
from denselab.report.tables import build_table


def test_rows_that_never_ran_are_their_paper_rows_marked_missing_not_extra_rows(tmp_path: Path):
    ran = [Run(tmp_path / f"t{s}", ("model=transformer", "paper.depth=48"), str(s),
               {"status": "completed", "final_val_ppl": 50.0 + s, "steps": 500, "params": {"total": 1_000_000},
                "hparams": {"model": "transformer", "paper_depth": 48, "depth": 12, "width": 128}})
           for s in range(3)]
    never = [Run(tmp_path / f"s{s}", ("model=skips_with_gains", "paper.depth=48"), str(s), None) for s in range(3)]
    table = build_table(ran + never, "1", ["model", "depth", "dilation", "period"])
    assert "?" not in set(table["row"])  # no anonymous extra row for the runs that never ran
    assert len(table) == 12  # Table 1's rows, nothing more
    assert table.set_index("row").loc["Transformer 48", "ours_n"] == 3
    assert table.set_index("row").loc["Skips With Gains 48", "status"] == "missing"


def test_a_row_whose_runs_are_still_running_or_stopped_midway_is_unfinished_not_failed(tmp_path: Path):
    def run(model: str, seed: int, record: dict | None) -> Run:
        hp = {"model": model, "paper_depth": 48, "depth": 12, "width": 128}
        return Run(tmp_path / f"{model}{seed}", (f"model={model}", "paper.depth=48"), str(seed),
                   None if record is None else {**record, "hparams": hp})

    done = {"status": "completed", "final_val_ppl": 50.0, "steps": 500, "params": {"total": 1_000_000}}
    runs = [run("transformer", s, done) for s in range(2)]
    runs += [run("skips_with_gains", 0, {"status": "running"}), run("skips_with_gains", 1, {"status": "interrupted"})]
    runs += [run("last_k", 0, {"status": "interrupted"}), run("last_k", 1, {"status": "failed", "error": "boom"})]
    rows = build_table(runs, None, ["model", "depth", "dilation", "period"]).set_index("row")
    assert rows.loc["Skips With Gains 48", "status"] == "unfinished"  # the same command resumes both
    assert rows.loc["Last K (K=4) 48", "status"] == "failed"  # one of them failed


def test_each_row_keeps_its_seeds_perplexities_so_any_two_rows_can_be_paired(tmp_path: Path):
    from denselab.report.tables import ppl_by_seed

    runs = [Run(tmp_path / f"t{s}", ("model=transformer", "paper.depth=48"), str(s),
                {"status": "completed", "final_val_ppl": 50.0 + s, "steps": 500, "params": {"total": 1_000_000},
                 "hparams": {"model": "transformer", "paper_depth": 48, "depth": 12, "width": 128}})
            for s in (2, 0)]
    table = build_table(runs, "1", ["model", "depth", "dilation", "period"]).set_index("row")
    csv = tmp_path / "table1.csv"
    table.to_csv(csv)
    assert ppl_by_seed(pd.read_csv(csv).set_index("row").loc["Transformer 48", "ours_ppl_by_seed"]) == {"0": 50.0, "2": 52.0}
    assert ppl_by_seed(table.loc["Skips With Gains 48", "ours_ppl_by_seed"]) == {}  # a row that never ran
