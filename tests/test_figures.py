"""Every report figure shows the seed spread: the α heatmaps a row of across-seed standard deviations, the
line figures (Figs. 5, 6, 8) and the spectra (Fig. 12) a min–max band, Figs. 10/11 (b) error bars; and
no figure lays out mathtext (slow, and the test suite draws every figure)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from denselab.report import analysis, figures


@pytest.fixture
def drawn(monkeypatch):
    """The figures drawn, instead of written to PNG."""
    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figs.append(fig))
    return figs


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


def bands(ax) -> list[PolyCollection]:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_seed_spread():
    spread = analysis.seed_spread([[1.0, 2.0], [3.0, 2.0]])
    assert spread["mean"].tolist() == [2.0, 2.0] and spread["min"].tolist() == [1.0, 2.0]
    assert spread["std"].tolist() == pytest.approx([np.sqrt(2), 0.0]) and spread["n"] == 2
    assert analysis.seed_spread([[1.0, 2.0]])["std"] is None  # one seed: no spread


def test_alpha_heatmaps_draw_the_across_seed_std_under_the_mean(drawn, tmp_path):
    alpha = np.tril(np.full((5, 5), 0.05)) + np.eye(5)
    panels = [("(a) n=3", alpha), ("(b) n=1", alpha), ("(c)", None)]
    figures.heatmaps(panels, "fig4", tmp_path / "a.png", spreads=[np.full((5, 5), 0.01), None, None])
    (fig,) = drawn
    images = [ax for ax in fig.axes if any(isinstance(i, AxesImage) for i in ax.images)]
    assert [ax.get_title() for ax in images] == ["(a) n=3", "(b) n=1", "across-seed std (max 0.010)"]
    assert len(fig.axes) - len(panels) * 2 == 2  # a colour bar for α and one for the std
    shown = texts(fig)
    assert "across-seed std (max 0.010)" in shown and "one seed: no spread" in shown
    assert not any("$" in t for t in shown)
    figures.heatmaps(panels[:1], "fig9", tmp_path / "b.png")  # one run (Fig. 9): the means only
    assert len(drawn[1].axes) == 2


def test_line_figures_draw_a_min_max_band_and_a_band_around_the_reference(drawn, tmp_path):
    data = pd.DataFrame({"series": ["DenseFormer"] * 3, "dropped_percent": pd.Series([0, 10, 20], dtype=object),
                         "ppl": [7.5, 7.6, 8.5],  # dropped_percent as build.alpha_pruning leaves it: objects
                         "ppl_min": [7.4, 7.5, 8.2], "ppl_max": [7.6, 7.7, 8.9]})
    figures.lines(data, "dropped_percent", "ppl", "fig6", tmp_path / "a.png", "x", "y",
                  hlines={"Transformer": (7.7, 7.65, 7.75)}, logy=True)
    (ax,) = drawn[0].axes
    assert len(bands(ax)) == 1 and len(ax.patches) == 1  # the series' band, the Transformer's
    assert "min–max over seeds" in ax.get_title()
    assert not any("$" in t for t in texts(drawn[0]))  # the log axis in plain numbers
    figures.lines(data[["series", "dropped_percent", "ppl"]], "dropped_percent", "ppl", "t", tmp_path / "b.png",
                  "x", "y", hlines={"Transformer": 7.7})  # older CSVs (means only) still draw
    assert not bands(drawn[1].axes[0])


def test_spectra_draw_a_band_per_series(drawn, tmp_path):
    data = pd.DataFrame([{"series": s, "kind": k, "rank": r, "singular_value": 3.0 - r, "singular_value_min": 2.9 - r,
                          "singular_value_max": 3.1 - r} for s in ("DenseFormer", "Transformer")
                         for k in ("qkv", "embedding") for r in range(3)])
    figures.spectra(data, "fig12", tmp_path / "a.png")
    assert all(len(bands(ax)) == 2 for ax in drawn[0].axes)


def test_sparsity_effect_draws_error_bars_on_both_panels(drawn, tmp_path):
    table = pd.DataFrame({"model": ["transformer", "denseformer", "denseformer"], "k_x_p": [None, "1x1", "4x1"],
                          "depth": [48, 48, 48], "ours_ppl": [7.7, 7.5, 7.55], "ours_ppl_stderr": [0.04, 0.03, 0.02],
                          "ours_inference_bps": [20.0, 15.0, 17.0], "ours_inference_bps_stderr": [0.5, 0.3, 0.4]})
    figures.sparsity_effect(table, "dilation", {"dilation": 1, "dwa_period": 1}, "fig10", tmp_path / "a.png")
    for ax in drawn[0].axes:
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert bars and all(c.has_yerr for c in bars)


def test_pruning_summary_has_the_seed_spread_and_the_paired_difference_to_the_unpruned_model():
    from denselab.report.build import _pruning_summary

    data = pd.DataFrame({"series": "DenseFormer", "seed": [0, 1, 2] * 2, "dropped_percent": [0] * 3 + [20] * 3,
                         "dropped": [0] * 3 + [5] * 3, "ppl": [7.5, 7.7, 7.6, 8.0, 8.25, 8.05]})
    summary = _pruning_summary(data).set_index("dropped_percent")
    assert summary.loc[20, "ppl"] == pytest.approx(8.1) and summary.loc[20, "ppl_min"] == 8.0
    assert summary.loc[20, "diff_ppl"] == pytest.approx(0.5) and summary.loc[20, "diff_test"] == "paired t"
    assert summary.loc[20, "diff_resolved"] and summary.loc[20, "n_seeds"] == 3
    assert pd.isna(summary.loc[0, "diff_ppl"])
