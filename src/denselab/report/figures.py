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
        base = rows[(rows["k"] == baseline["dilation"]) & (rows["p"] == baseline["dwa_period"])]["ours_inference_bps"]
        curve = rows[(rows["p"] == 1) if x == "k" else (rows["k"] == 4)].sort_values(x)
        if len(base) and base.iloc[0]:
            axes[1].plot(curve[x], curve["ours_inference_bps"] / base.iloc[0], "o-", label=f"{int(depth)} blocks")
    axes[1].set_xlabel(f"{vary} {x}")
    axes[1].set_ylabel(f"inference BPS relative to {baseline['dilation']}x{baseline['dwa_period']}")
    axes[1].set_title("(b) speed")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


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
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        if window:
            ax.set_title(f"{x} {window[0]:g} – {window[1]:g}")
    fig.suptitle(title)
    return _save(fig, path)


def heatmaps(panels: list[tuple[str, np.ndarray | None]], title: str, path: Path) -> Path:
    """α matrices side by side on a symlog colour scale (Figs. 4, 7, 9, 14); None: no run."""
    from matplotlib.colors import SymLogNorm
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels) + 1, 4), squeeze=False, layout="constrained")
    limit = max([1.0] + [float(np.abs(a).max()) for _, a in panels if a is not None])
    norm = SymLogNorm(linthresh=0.05, vmin=-limit, vmax=limit)
    image = None
    for ax, (name, alpha) in zip(axes[0], panels):
        ax.set_title(name, fontsize=9)
        if alpha is None:
            ax.text(0.5, 0.5, "no completed run", ha="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        upper = np.triu(np.ones_like(alpha, dtype=bool), k=1)  # j > i: no such weight
        image = ax.imshow(np.where(upper, np.nan, alpha), cmap="RdBu_r", norm=norm)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("$X_j$")
        ax.set_ylabel("DWA index")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label="α (symlog)", shrink=0.85)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lines(data: pd.DataFrame, x: str, y: str, title: str, path: Path, xlabel: str, ylabel: str,
          hlines: dict[str, float] | None = None, logy: bool = False) -> Path:
    """One line per `series` (Figs. 5, 6, 8); optional horizontal reference lines."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for series, rows in data.groupby("series", sort=False):
        ax.plot(rows[x], rows[y], "o-", label=series, markersize=3)
    for name, value in (hlines or {}).items():
        ax.axhline(value, ls="--", color="tab:red", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def spectra(data: pd.DataFrame, title: str, path: Path) -> Path:
    """Fig. 12: ranked singular values per matrix kind, one line per series."""
    kinds = list(dict.fromkeys(data["kind"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for series, rows in data[data["kind"] == kind].groupby("series", sort=False):
            ax.plot(rows["rank"], rows["singular_value"], label=series)
        ax.set_title(kind)
        ax.set_xlabel("ranked singular values")
        ax.set_ylabel("intensity")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)
