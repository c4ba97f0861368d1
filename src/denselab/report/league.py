"""The league (conf/experiment/league.yaml): every depth-mixing node against the Transformer under one
harness, as a table sorted by perplexity (`league.csv`, `league.md`) and a figure (`league.png`).

Every node trains on the same tokens (steps × batch × sequence), with the same optimiser, schedule and
seeds, and for a seed from the same embedding and block weights (`models.build_model` builds the mixer
under a forked random state). So the comparison is at matched tokens, and what each node costs beside
its perplexity is reported, not equalised:

* `params`, `mixing_params`: all parameters, and the node's own (its mixer's: what it adds).
* `train_flops_per_token`, `extra_flops_pct`: the FLOPs of one forward pass of the run's model, counted
  op by op (matrix products as 2·m·n·k, the attention as `torch.utils.flop_counter` counts it, every
  element-wise op as one FLOP per output element, fused multiply-adds as two), times 3 for forward and
  backward, per token. Counting the ops, rather than 6·N as `denselab.plan` estimates, sees the mixing
  work that has no parameters behind it: hyper-connections' n streams, AttnRes's and MUDD's per-token
  weighted sums, ELC-BERT's softmax mix. The model is built on the meta device, so nothing is computed.
* `ours_train_time_s`, `train_time_ratio`; `ours_inference_bps`, `inference_speed_ratio`: the measured
  training time and inference speed (metrics.json), as a ratio to the Transformer's on the same sweep.
  Each run measures these alone, with whatever else shared the machine at the time.
* `bench_train_step_ratio`, `bench_inference_speed_ratio` (each with `_q1`, `_q3`): the same speeds
  measured side by side by `benchmarks/league_speed.py`, in interleaved rounds in one process. These are
  the median and quartiles of the per-round ratios to the Transformer. They are read from `speed.csv`
  beside the report, when it exists (its `speed.json` says where and how it was measured).

The perplexity columns, and the paired difference to the Transformer with its 95 % confidence interval
(`diff_*`), are `report.tables.build_table`'s; the Transformer is the league's first row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

from denselab.aggregate import mixing_parameters  # noqa: E402
from denselab.io import atomic_write_text  # noqa: E402
from denselab.records import run_config  # noqa: E402
from denselab.report.runs import Run, grouped  # noqa: E402
from denselab.report.tables import build_table, for_csv, label  # noqa: E402
from hydra_plugins.denselab_sweeper.rows_sweeper import override_key  # noqa: E402

# Display names of the nodes tables.label does not know; any other node shows its `model=` name.
NAMES = {
    "elc_bert": "ELC-BERT", "elc_bert_skips": "ELC-BERT + Skips", "elc_bert_skips_zero_init": "ELC-BERT + Skips + 0-Init",
    "mudd": "MUDDFormer", "hyper_connections": "Hyper-Connections (static)",
    "hyper_connections_dynamic": "Hyper-Connections (dynamic)", "value_residual": "ResFormer",
    "value_residual_learnable": "Learnable-ResFormer", "x0_shortcut": "x0-shortcut", "attn_res": "AttnRes (full)",
    "attn_res_block": "AttnRes (block)",
}
ROW_KEYS = ("model", "dilation", "dwa_period", "seed")  # what the row name already says
SPEED_CSV, SPEED_JSON = "speed.csv", "speed.json"  # benchmarks/league_speed.py's, beside the report
BENCH_COLUMNS = ["bench_train_step_ratio", "bench_train_step_ratio_q1", "bench_train_step_ratio_q3",
                 "bench_inference_speed_ratio", "bench_inference_speed_ratio_q1", "bench_inference_speed_ratio_q3"]

COLUMNS = ["rank", "row", "model", "status", "ours_n", "ours_ppl", "ours_ppl_stderr", "diff_reference", "diff_ppl",
           "diff_ppl_ci95_low", "diff_ppl_ci95_high", "diff_n", "diff_test", "diff_resolved", "params",
           "mixing_params", "tokens", "train_flops_per_token", "extra_flops_pct", "ours_train_time_s",
           "ours_train_time_s_stderr", "train_time_ratio", "ours_train_bps", "ours_train_bps_stderr",
           "ours_inference_bps", "ours_inference_bps_stderr", "inference_speed_ratio", *BENCH_COLUMNS, "ours_steps", "ours_depth",
           "ours_width", "ours_diverged", "ours_failed", "ours_unfinished", "ours_missing", "errors"]


# -- FLOPs, counted -------------------------------------------------------------------------------

FUSED_MULTIPLY_ADD = {torch.ops.aten.addcmul, torch.ops.aten.addcdiv, torch.ops.aten.lerp}


class _CountFlops(TorchDispatchMode):
    """Sums the FLOPs of every op run inside it: torch's formula for the ops it has one for (matrix
    products, attention, convolutions), one per output element for element-wise ops, two for fused
    multiply-adds. Reductions, copies and indexing (the embedding lookup) count nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.flops += int(flop_registry[packet](*args, **kwargs, out_val=out))
        elif torch.Tag.pointwise in func.tags:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            per_element = 2 if packet in FUSED_MULTIPLY_ADD else 1
            self.flops += per_element * sum(o.numel() for o in outs if isinstance(o, torch.Tensor))
        return out


def train_flops_per_token(model_cfg: DictConfig, vocab_size: int, seq_len: int) -> float:
    """3 × the counted FLOPs of one forward pass over a window of `seq_len` tokens, per token, of the
    model `model_cfg` builds (on the meta device). A DWA-style node is counted through its readable
    implementation, which does the same multiply-adds as the fast one (which the meta device cannot run)."""
    from denselab.models import build_model

    model_cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    mixer = model_cfg.net.get("mixer")
    if mixer is not None and "implementation" in mixer:
        mixer.implementation = "reference"
    net = build_model(model_cfg, vocab_size, device="meta")
    counter = _CountFlops()
    with torch.no_grad(), counter:
        net(torch.zeros(1, seq_len, dtype=torch.long, device="meta"))
    return 3.0 * counter.flops / seq_len


def _run_flops(run: Run) -> float | None:
    """train_flops_per_token of the model a run trained (its config.yaml, or its record's), None without one."""
    cfg = run_config(run.dir, run.metrics)
    if cfg is None or not run.metrics or "vocab_size" not in run.metrics:
        return None
    return train_flops_per_token(cfg.model, int(run.metrics["vocab_size"]), int(cfg.seq_len))


# -- the table ------------------------------------------------------------------------------------

def _name(model: str, kxp: Any, extra: str) -> str:
    """"4x5-DenseFormer", "MUDDFormer", ...; a row's other overrides in brackets."""
    name = NAMES.get(model) or label(model, *(kxp.split("x") if isinstance(kxp, str) else (None, None)))
    return f"{name} ({extra})" if extra else name


def row_name(row: dict[str, Any]) -> str:
    """The league name of a row of conf/experiment/league.yaml (as league_table names it)."""
    kxp = f"{row['dilation']}x{row.get('dwa_period', 1)}" if "dilation" in row else None
    return _name(row["model"], kxp, " ".join(f"{k}={v}" for k, v in row.items() if k not in ROW_KEYS))


def with_bench_speeds(table: pd.DataFrame, speed_csv: Path) -> pd.DataFrame:
    """`table` with the side-by-side speed ratios of `speed_csv` (benchmarks/league_speed.py) by row name;
    unchanged when the file does not exist."""
    if not speed_csv.exists():
        return table
    bench = pd.read_csv(speed_csv).set_index("row")
    for ours, theirs in (("bench_train_step_ratio", "train_ratio"), ("bench_inference_speed_ratio", "inference_ratio")):
        for suffix in ("", "_q1", "_q3"):
            table[ours + suffix] = table["row"].map(bench[theirs + suffix])
    return table


def _costs(group: list[Run]) -> dict[str, Any]:
    done = [r for r in group if r.ok]
    if not done:
        return {}
    m = done[0].metrics
    return {"params": m["params"]["total"], "mixing_params": mixing_parameters(m), "tokens": m.get("tokens"),
            "train_flops_per_token": _run_flops(done[0])}


def league_table(runs: list[Run], command_line: list[str] = ()) -> pd.DataFrame:
    """One row per node (per row of the league's YAML), sorted by mean perplexity (rows without one
    last), with the costs of the module docstring. `command_line`: the sweep's own overrides, which
    every row shares (left out of the row names)."""
    groups = grouped(runs)
    table = build_table(runs, None, [])  # one row per group, in the same order; the first with results is the reference
    shared = {override_key(o) for o in command_line} | set(ROW_KEYS)
    names = []
    for i, group in enumerate(groups):
        overrides = dict(o.split("=", 1) for o in group[0].row)  # a row that never ran has no hparams: its overrides
        table.at[i, "model"] = overrides.get("model", table.at[i, "model"])
        if not isinstance(table.at[i, "k_x_p"], str) and "dilation" in overrides:
            table.at[i, "k_x_p"] = f"{overrides['dilation']}x{overrides.get('dwa_period', 1)}"
        extra = " ".join(o for o in group[0].row if override_key(o) not in shared)
        names.append(_name(table.at[i, "model"], table.at[i, "k_x_p"], extra))
        for key, value in _costs(group).items():
            table.loc[i, key] = value
    if "diff_reference" in table:  # the reference row's label, as build_table wrote it: its name
        table["diff_reference"] = table["diff_reference"].map(dict(zip(table["row"][::-1], names[::-1])))
    table["row"] = names  # by position: two rows of one node (a variant) share build_table's label
    reference = table[table["ours_n"].fillna(0) > 0].head(1)  # build_table's reference: the Transformer
    if len(reference):
        ref = lambda column: pd.to_numeric(reference[column], errors="coerce").iloc[0]  # noqa: E731
        table["extra_flops_pct"] = 100 * (table["train_flops_per_token"] / ref("train_flops_per_token") - 1)
        table["train_time_ratio"] = table["ours_train_time_s"] / ref("ours_train_time_s")
        table["inference_speed_ratio"] = table["ours_inference_bps"] / ref("ours_inference_bps")
    table = table.sort_values("ours_ppl", na_position="last", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", [i + 1 if ok else None for i, ok in enumerate(table["ours_ppl"].notna())])
    for column in ("rank", "params", "mixing_params", "tokens", "diff_n"):
        if column in table:
            table[column] = table[column].astype("Int64")
    first = [c for c in COLUMNS if c in table.columns]
    return table[first].round(4)


# -- markdown -------------------------------------------------------------------------------------

def _fmt(x: Any, spec: str = ".3f") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA else format(x, spec)


def markdown(table: pd.DataFrame) -> str:
    """The league as a markdown table (the README's and the closing note's). With side-by-side speeds
    (speed.csv) it shows those, median [quartiles] over rounds, in place of the runs' inference speed."""
    bench = table.get("bench_train_step_ratio", pd.Series(dtype=float)).notna().any()
    speeds = ("training step, side by side | inference speed, side by side |" if bench else "inference speed |")
    lines = ["| # | node | `model=` | params | mixing params | perplexity ± SE (n) | Δ vs Transformer [95 % CI] | "
             f"extra FLOPs | training time | {speeds}",
             "| ---: | --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: |" + (" ---: |" if bench else "")]
    for r in table.to_dict("records"):
        ppl = f"{_fmt(r['ours_ppl'])} ± {_fmt(r.get('ours_ppl_stderr')) or '–'} ({r['ours_n']})" if _fmt(
            r["ours_ppl"]) else r["status"]
        diff = f"{r['diff_ppl']:+.3f}" if _fmt(r.get("diff_ppl")) else ""
        if diff and _fmt(r.get("diff_ppl_ci95_low")):
            diff += f" [{r['diff_ppl_ci95_low']:+.3f}, {r['diff_ppl_ci95_high']:+.3f}]"
            diff = f"**{diff}**" if r.get("diff_resolved") is True else diff  # the interval excludes 0
        elif diff:
            diff += f" ({r.get('diff_test')}: no interval)"
        ratio = lambda key: f"×{r[key]:.2f}" if _fmt(r.get(key)) else ""  # noqa: E731
        quartiles = lambda key: f"{ratio(key)} [{r[key + '_q1']:.2f}, {r[key + '_q3']:.2f}]" if ratio(key) else ""  # noqa: E731
        flops = f"{r['extra_flops_pct']:+.2f} %" if _fmt(r.get("extra_flops_pct")) else ""
        speed = (f"{quartiles('bench_train_step_ratio')} | {quartiles('bench_inference_speed_ratio')} |" if bench
                 else f"{ratio('inference_speed_ratio')} |")
        lines.append(f"| {_fmt(r['rank'], 'd')} | {r['row']} | `{r['model']}` | {_fmt(r.get('params'), ',d')} | "
                     f"{_fmt(r.get('mixing_params'), ',d')} | {ppl} | {diff} | {flops} | {ratio('train_time_ratio')} | "
                     f"{speed}")
    return "\n".join(lines) + "\n"


# -- the figure -----------------------------------------------------------------------------------

# Panels (b) and (c) leave out nodes whose perplexity is over this multiple of the Transformer's (panel
# (a) shows every node, on a log scale beyond ±10).
OFF_SCALE = 1.5


def training_time_axis(table: pd.DataFrame) -> tuple[str, str]:
    """The column and label of the figure's training-time axis: the side-by-side bench's ratio when the
    table has it (each run's own time carries whatever else shared the machine while it ran)."""
    if "bench_train_step_ratio" in table and table["bench_train_step_ratio"].notna().any():
        return "bench_train_step_ratio", "training step time, ratio to the Transformer's (side by side; bars: quartiles)"
    return "ours_train_time_s", "training time (s; bars: SE over seeds)"


def off_the_scale(table: pd.DataFrame, reference_ppl: float) -> pd.DataFrame:
    """The rows named rather than drawn in panels (b) and (c): one node far worse than the reference
    would squash all the others into a band."""
    if math.isnan(reference_ppl):
        return table.iloc[0:0]
    return table[table["ours_ppl"] > OFF_SCALE * reference_ppl]


def figure(table: pd.DataFrame, title: str, path: Path) -> Path:
    """(a) the paired difference to the Transformer with its 95 % CI, per node in league order;
    perplexity (± SE over seeds) against (b) training time (the side-by-side bench's ratio when there is
    one) and (c) the node's own parameters."""
    done = table[table["ours_ppl"].notna()]
    fig, axes = plt.subplots(1, 3, figsize=(17, 0.32 * len(table) + 3.2))
    ax = axes[0]
    y = np.arange(len(done))
    diff = pd.to_numeric(done.get("diff_ppl"), errors="coerce") if "diff_ppl" in done else pd.Series(np.nan, done.index)
    low = pd.to_numeric(done.get("diff_ppl_ci95_low"), errors="coerce") if "diff_ppl_ci95_low" in done else diff * np.nan
    high = pd.to_numeric(done.get("diff_ppl_ci95_high"), errors="coerce") if "diff_ppl_ci95_high" in done else diff * np.nan
    resolved = done.get("diff_resolved", pd.Series(False, done.index)).fillna(False).astype(bool)
    for yi, d, lo, hi, res in zip(y, diff, low, high, resolved):
        if math.isnan(d):  # the reference itself
            ax.plot(0, yi, "s", color="tab:red")
            continue
        xerr = None if math.isnan(lo) else [[d - lo], [hi - d]]
        ax.errorbar(d, yi, xerr=xerr, fmt="o", capsize=3, color="tab:blue" if res else "tab:gray")
    ax.axvline(0, color="tab:red", ls="--", lw=1)
    ax.set_xscale("symlog", linthresh=10)  # linear within ±10 ppl, where most nodes are; an outlier stays on the plot
    ax.set_yticks(y, done["row"])
    ax.invert_yaxis()
    ax.set_xlabel("Δ perplexity vs the Transformer (paired; bars: 95 % CI; log beyond ±10)")
    ax.set_title("(a) paired difference (blue: CI excludes 0)", fontsize=10)
    reference = done.iloc[0:0]
    if "diff_reference" in done and done["diff_reference"].notna().any():
        reference = table[table["row"] == done["diff_reference"].dropna().iloc[0]]
    timing = training_time_axis(done)
    ref_ppl = float(reference["ours_ppl"].iloc[0]) if len(reference) else math.nan
    off_scale = off_the_scale(done, ref_ppl)
    for ax, (x, xlabel), panel in ((axes[1], timing, "(b) perplexity vs training time"),
                                   (axes[2], ("mixing_params", "the node's own parameters (symlog)"),
                                    "(c) perplexity vs the node's own parameters")):
        rows = done.drop(off_scale.index)
        rows = rows.dropna(subset=[x]) if x in rows else rows.iloc[0:0]
        yerr = pd.to_numeric(rows["ours_ppl_stderr"], errors="coerce").fillna(0)
        for (_, r), ye in zip(rows.iterrows(), yerr):
            xv = float(r[x])
            if f"{x}_q1" in r:  # the bench's quartiles over rounds
                xe = [[xv - float(r[f"{x}_q1"])], [float(r[f"{x}_q3"]) - xv]]
            else:  # the runs' SE over seeds, where the column has one
                se = pd.to_numeric(r.get(f"{x}_stderr", np.nan), errors="coerce")
                xe = 0.0 if pd.isna(se) else float(se)
            ax.errorbar(xv, r["ours_ppl"], yerr=ye, xerr=xe, fmt="s" if r["model"] == "transformer" else "o",
                        capsize=2, color="tab:red" if r["model"] == "transformer" else "tab:blue")
            ax.annotate(r["row"], (xv, r["ours_ppl"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        if not math.isnan(ref_ppl):
            ax.axhline(ref_ppl, color="tab:red", ls="--", lw=1, label="Transformer")
            ax.legend(fontsize=7)
        if len(off_scale):
            names = "; ".join(f"{r['row']} ({r['ours_ppl']:.1f})" for _, r in off_scale.iterrows())
            xlabel += f"\nnot drawn, perplexity over {OFF_SCALE:g}× the Transformer's:\n{names}"
        if x == "mixing_params":  # from 0 (the Transformer, ResFormer) to millions (MUDD at the paper's size)
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(-1, 3 * max([10.0, *rows[x].astype(float)]))
        ax.set_yscale("log")  # perplexity is exp(loss): equal steps are equal loss differences
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(xlabel, fontsize=8 if "\n" in xlabel else None)
        ax.set_ylabel("final validation perplexity (± SE over seeds; log)")
        ax.set_title(panel, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the report -----------------------------------------------------------------------------------

def league(runs: list[Run], cfg: DictConfig, title: str, stem: Path) -> list[Path]:
    """build.ANALYSES["league"]: league.csv, league.md and league.png under `stem`."""
    command_line = list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or [])
    table = with_bench_speeds(league_table(runs, command_line), Path(stem).parent / SPEED_CSV)
    csv, md, png = (Path(f"{stem}.{ext}") for ext in ("csv", "md", "png"))
    atomic_write_text(csv, for_csv(table).to_csv(index=False))
    atomic_write_text(md, markdown(table))
    return [csv, figure(table, title, png), md]
