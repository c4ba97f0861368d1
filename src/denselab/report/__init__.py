"""Reports of the paper's tables and figures: our numbers in the paper's layout, beside the paper's.

    python -m denselab.report experiment=table1 scale=mini     # CSV + PNG in experiments/table1/mini/

The runs are the experiment's rows (its `hydra.sweeper.rows` × the scale's seeds) in its sweep folder
(logs/sweeps/<name>). Every expected row appears in the output — completed, failed or missing — and
nothing is written into the CSVs by hand: they are recomputed from the runs' metrics.json (and, for
the analyses, their checkpoints) each time. `run.py -m experiment=...` calls this at the end of its
sweep; `experiments/<experiment>/README.md` is regenerated with the measured run times.
"""

from denselab.report.build import report_experiment

__all__ = ["report_experiment"]
