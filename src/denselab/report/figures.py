"""The pictures of the reports (matplotlib, PNG). Each function takes the numbers it draws — computed
and saved to CSV by `build.py` — and writes one file."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table_bars(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Perplexity per row: the paper's (left) and ours with standard errors (right), same row order."""
    labels = table["row"].tolist()
    y = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(labels) + 1.8), sharey=True)
    for ax, column, name in ((axes[0], "paper_ppl", "paper"), (axes[1], "ours_ppl", "ours")):
        values = pd.to_numeric(table.get(column), errors="coerce") if column in table else pd.Series([np.nan] * len(y))
        err = pd.to_numeric(table.get(column + "_stderr"), errors="coerce") if column + "_stderr" in table else None
        ax.barh(y, values.fillna(0), xerr=None if err is None else err.fillna(0), color="tab:blue" if name == "paper" else "tab:orange")
        finite = values.dropna()
        if len(finite):
            lo, hi = finite.min(), finite.max()
            pad = max(0.05 * (hi - lo), 0.02 * hi)
            ax.set_xlim(lo - 3 * pad, hi + 2 * pad)
        empty = _why_empty(table) if name == "ours" else ["missing"] * len(y)
        for yi, v, why in zip(y, values, empty):
            ax.text(ax.get_xlim()[0], yi, f" {why}" if math.isnan(v) else f" {v:.3f}", va="center", fontsize=8)
        ax.set_title(f"{name} perplexity")
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    return _save(fig, path)


def _log_y(ax) -> None:
    """A log y-axis labelled in plain numbers (7.5, 8, 9): the default labels (9×10⁰) are mathtext, which is
    slow to lay out and hard to read within a decade."""
    from matplotlib.ticker import LogFormatter

    ax.set_yscale("log")  # LogFormatter: plain text; it labels minor ticks only where the axis spans few decades
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _why_empty(table: pd.DataFrame) -> list[str]:
    """What an empty bar of ours stands for: every seed diverged (non-finite loss), or no result."""
    if "ours_diverged" not in table:
        return ["missing"] * len(table)
    diverged = (table["ours_diverged"].fillna(0) > 0) & (table["ours_n"].fillna(0) == 0)
    return ["diverged" if d else "missing" for d in diverged]


def _stderr(rows: pd.DataFrame | pd.Series, column: str):
    """The standard errors over seeds beside `column` (0 where there is one seed or none): error bars."""
    err = rows.get(f"{column}_stderr")
    if err is None:
        return None
    return pd.to_numeric(err, errors="coerce").fillna(0) if isinstance(err, pd.Series) else (0 if pd.isna(err) else err)


def speed_tradeoff(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Perplexity against inference batches per second, a line per family annotated with depths
    (the paper's Fig. 2b / Table 1 view): the paper's numbers (left) and ours (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (ppl, bps, name) in zip(axes, (("paper_ppl", "paper_inference_bps", "paper"),
                                           ("ours_ppl", "ours_inference_bps", "ours"))):
        if ppl not in table or bps not in table:
            ax.set_visible(False)
            continue
        data = table.assign(family=table["row"].str.rsplit(" ", n=1).str[0])
        for family, rows in data.groupby("family", sort=False):
            rows = rows.dropna(subset=[ppl, bps]).sort_values("depth")
            if rows.empty:
                continue
            ax.errorbar(rows[bps], rows[ppl], yerr=_stderr(rows, ppl), xerr=_stderr(rows, bps), fmt="o-",
                        capsize=2, label=family)
            for _, r in rows.iterrows():
                ax.annotate(str(r["depth"]), (r[bps], r[ppl]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel("inference batches per second")
        ax.set_ylabel("perplexity")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def kxp_tradeoff(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Fig. 3a/3b: perplexity against inference (a) and training (b) batches per second, per k×p."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, bps, name in ((axes[0], "ours_inference_bps", "(a) inference"), (axes[1], "ours_train_bps", "(b) training")):
        rows = table.dropna(subset=["ours_ppl", bps])
        for _, r in rows.iterrows():
            is_dense = r["model"] == "denseformer"
            ax.errorbar(r[bps], r["ours_ppl"], yerr=_stderr(r, "ours_ppl"), xerr=_stderr(r, bps), capsize=2,
                        fmt="o" if is_dense else "s", color="tab:blue" if is_dense else "tab:red")
            ax.annotate(r["k_x_p"] or "Transformer", (r[bps], r["ours_ppl"]), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
        ax.set_xlabel(f"{name} batches per second")
        ax.set_ylabel("perplexity")
    fig.suptitle(title)
    return _save(fig, path)


def sparsity_effect(table: pd.DataFrame, vary: str, baseline: dict, title: str, path: Path) -> Path:
    """Figs. 10/11: (a) perplexity against k (or p) at the first depth, the Transformer as a line;
    (b) inference speed relative to the baseline k×p at each depth."""
    dense = table[table["model"] == "denseformer"].copy()
    dense["k"] = dense["k_x_p"].str.split("x").str[0].astype(float)
    dense["p"] = dense["k_x_p"].str.split("x").str[1].astype(float)
    x = "k" if vary == "dilation" else "p"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    depths = sorted(dense["depth"].dropna().unique())
    first = dense[(dense["depth"] == depths[0]) & ((dense["p"] == 1) if x == "k" else (dense["k"] == 4))]
    first = first.sort_values(x)
    axes[0].errorbar(first[x], first["ours_ppl"], yerr=first["ours_ppl_stderr"].fillna(0), fmt="o-", label="DenseFormer")
    transformer = table[table["model"] == "transformer"]["ours_ppl"].dropna()
    if len(transformer):
        axes[0].axhline(transformer.iloc[0], color="tab:red", ls="--", label="Transformer")
    axes[0].set_xlabel(f"{vary} {x}")
    axes[0].set_ylabel("perplexity")
    axes[0].set_title(f"(a) {int(depths[0])} blocks")
    axes[0].legend(fontsize=8)
    for depth in depths:
        rows = dense[dense["depth"] == depth]
        base = rows[(rows["k"] == baseline["dilation"]) & (rows["p"] == baseline["dwa_period"])]
        curve = rows[(rows["p"] == 1) if x == "k" else (rows["k"] == 4)].sort_values(x)
        if len(base) and base["ours_inference_bps"].iloc[0]:
            ratio = curve["ours_inference_bps"] / base["ours_inference_bps"].iloc[0]
            axes[1].errorbar(curve[x], ratio, yerr=_ratio_stderr(curve, base.iloc[0], ratio), fmt="o-", capsize=2,
                             label=f"{int(depth)} blocks")
    axes[1].set_xlabel(f"{vary} {x}")
    axes[1].set_ylabel(f"inference BPS relative to {baseline['dilation']}x{baseline['dwa_period']}")
    axes[1].set_title("(b) speed")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def _ratio_stderr(rows: pd.DataFrame, base: pd.Series, ratio: pd.Series) -> pd.Series:
    """The standard error of a ratio of two means over seeds (first order: the relative errors add in
    quadrature); 0 where a standard error is missing."""
    err = _stderr(rows, "ours_inference_bps")
    if err is None:
        return pd.Series(0.0, index=rows.index)
    base_rel = (_stderr(base, "ours_inference_bps") or 0) / base["ours_inference_bps"]
    return ratio * np.sqrt((err / rows["ours_inference_bps"]) ** 2 + base_rel ** 2)


def curves(curves: pd.DataFrame, x: str, title: str, path: Path, zoom: tuple[float, float] | None = None) -> Path:
    """Validation perplexity against `x` (training time or step), one line per row (mean over seeds,
    the band their minimum to maximum); a second panel enlarges the x-range `zoom` (Fig. 15b's
    low-data regime)."""
    panels = 2 if zoom else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    for ax, window in zip(axes[0], (None, zoom)):
        for row, data in curves.groupby("row", sort=False):
            data = data.sort_values(x)
            if window:
                data = data[(data[x] >= window[0]) & (data[x] <= window[1])]
            line, = ax.plot(data[x], data["val_ppl"], ".-", label=row)
            if {"val_ppl_min", "val_ppl_max"} <= set(data.columns) and not data.empty:
                ax.fill_between(data[x], data["val_ppl_min"], data["val_ppl_max"], color=line.get_color(), alpha=0.2)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel("validation perplexity (fixed subset)")
        _log_y(ax)
        ax.legend(fontsize=7)
        if window:
            ax.set_title(f"{x} {window[0]:g} – {window[1]:g}")
    fig.suptitle(title)
    return _save(fig, path)


def heatmaps(panels: list[tuple[str, np.ndarray | None]], title: str, path: Path,
             spreads: list[np.ndarray | None] | None = None) -> Path:
    """α matrices side by side on a symlog colour scale (Figs. 4, 7, 9, 14); None: no run.

    `spreads` (one per panel, None where a panel has fewer than two seeds): the across-seed standard
    deviation of each α, drawn as a second row of heatmaps on a linear scale of its own (its largest value
    in their titles). A reviewer reads from it where the seeds agree (the paper's "very consistent
    across seeds", which it does not show); a number beside each of the 91 … 1,200 cells would be
    unreadable, and one number per panel (the largest std) would not say where the seeds disagree."""
    from matplotlib.colors import SymLogNorm
    from matplotlib.ticker import FixedLocator, FuncFormatter

    spreads = spreads or [None] * len(panels)
    with_spread = any(s is not None for s in spreads)
    fig, axes = plt.subplots(2 if with_spread else 1, len(panels), figsize=(3.8 * len(panels) + 1, 7.6 if with_spread else 4),
                             squeeze=False, layout="constrained")
    limit = max([1.0] + [float(np.nanmax(np.abs(a))) for _, a in panels if a is not None])
    norm = SymLogNorm(linthresh=0.05, vmin=-limit, vmax=limit)
    spread_max = max([float(np.nanmax(s)) for s in spreads if s is not None] + [1e-12])
    image = spread_image = None
    for column, ((name, alpha), spread) in enumerate(zip(panels, spreads)):
        ax = axes[0, column]
        ax.set_title(name, fontsize=9)
        if alpha is None:
            ax.text(0.5, 0.5, "no completed run", ha="center", transform=ax.transAxes)
            ax.set_axis_off()
            if with_spread:
                axes[1, column].set_axis_off()
            continue
        upper = np.triu(np.ones_like(alpha, dtype=bool), k=1)  # j > i: no such weight
        image = ax.imshow(np.where(upper, np.nan, alpha), cmap="RdBu_r", norm=norm)
        _alpha_axes(ax)
        if not with_spread:
            continue
        ax = axes[1, column]
        if spread is None:
            ax.text(0.5, 0.5, "one seed: no spread", ha="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        ax.set_title(f"across-seed std (max {np.nanmax(spread):.3f})", fontsize=9)
        spread_image = ax.imshow(np.where(upper, np.nan, spread), cmap="Greys", vmin=0, vmax=spread_max)
        _alpha_axes(ax)
    if image is not None:  # plain tick labels: the default symlog ones are mathtext, slow to lay out
        ticks = [t for t in (-1, -0.3, -0.1, -0.05, 0, 0.05, 0.1, 0.3, 1) if abs(t) <= limit]
        bar = fig.colorbar(image, ax=axes[0].tolist(), label="α (symlog)", shrink=0.85)
        bar.ax.yaxis.set_major_locator(FixedLocator(ticks))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bar.ax.yaxis.set_minor_locator(FixedLocator([]))
    if spread_image is not None:
        fig.colorbar(spread_image, ax=axes[1].tolist(), label="std of α over seeds", shrink=0.85)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _alpha_axes(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("source j (0: embedding)")  # not mathtext ($X_j$): its layout costs more than the heatmap
    ax.set_ylabel("DWA index")


def _band(ax, x, low, high, color) -> None:
    """The seed spread under a line: the seeds' minimum to maximum (numbers: a column that held a None, as
    Fig. 6's reference rows do, comes as objects, which fill_between refuses)."""
    x, low, high = (pd.to_numeric(pd.Series(v), errors="coerce").to_numpy(float) for v in (x, low, high))
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)


def lines(data: pd.DataFrame, x: str, y: str, title: str, path: Path, xlabel: str, ylabel: str,
          hlines: dict[str, float | tuple[float, float, float]] | None = None, logy: bool = False) -> Path:
    """One line per `series` (Figs. 5, 6, 8), the mean over seeds, with a band from the seeds' minimum to
    maximum where `data` has `<y>_min` and `<y>_max`; optional horizontal reference lines, a value or
    (mean, minimum, maximum) over seeds (a band too)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    spread = {f"{y}_min", f"{y}_max"} <= set(data.columns)
    for series, rows in data.groupby("series", sort=False):
        line, = ax.plot(rows[x], rows[y], "o-", label=series, markersize=3)
        if spread and rows[f"{y}_min"].notna().any():
            _band(ax, rows[x], rows[f"{y}_min"], rows[f"{y}_max"], line.get_color())
    for name, value in (hlines or {}).items():
        mean, low, high = value if isinstance(value, tuple) else (value, None, None)
        ax.axhline(mean, ls="--", color="tab:red", label=name)
        if low is not None and high is not None and high > low:
            ax.axhspan(low, high, color="tab:red", alpha=0.15, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        _log_y(ax)
    ax.legend(fontsize=8)
    ax.set_title(title + (" (band: min–max over seeds)" if spread else ""), fontsize=10)
    return _save(fig, path)


def spectra(data: pd.DataFrame, title: str, path: Path) -> Path:
    """Fig. 12: ranked singular values per matrix kind, one line per series (mean over seeds), with a band
    from the seeds' minimum to maximum where `data` has singular_value_min / _max."""
    kinds = list(dict.fromkeys(data["kind"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.6), squeeze=False)
    spread = {"singular_value_min", "singular_value_max"} <= set(data.columns)
    for ax, kind in zip(axes[0], kinds):
        for series, rows in data[data["kind"] == kind].groupby("series", sort=False):
            line, = ax.plot(rows["rank"], rows["singular_value"], label=series)
            if spread and rows["singular_value_min"].notna().any():
                _band(ax, rows["rank"], rows["singular_value_min"], rows["singular_value_max"], line.get_color())
        ax.set_title(kind)
        ax.set_xlabel("ranked singular values")
        ax.set_ylabel("intensity")
        ax.legend(fontsize=7)
    fig.suptitle(title + (" (band: min–max over seeds)" if spread else ""))
    return _save(fig, path)
