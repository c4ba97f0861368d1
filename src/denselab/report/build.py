"""Build an experiment's report: CSV(s) and PNG in `report.out_dir`, run_info.json, and the
experiment's README (regenerated from its YAML and every scale's run_info)."""

from __future__ import annotations

import json
from pathlib import Path
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from denselab.io import atomic_write_json, atomic_write_text, git_info, relative_to_root
from denselab import records
from denselab.report import analysis, figures, gates, league
from denselab.report.runs import Run, expected_runs, run_info, select, sweep_dir
from denselab.report.tables import build_table, for_csv, label

TABLE_FIGURES = ("table_bars", "speed_tradeoff", "kxp_tradeoff", "sparsity_effect", "curves_vs_time",
                 "curves_vs_steps", "same_time")
CONF = Path(__file__).resolve().parents[3] / "conf"


def report_experiment(cfg: DictConfig, extra_overrides: list[str] = ()) -> list[Path]:
    """Write the report of `cfg` (a composed experiment config, hydra node included)."""
    rep = cfg.report
    name, out = cfg.experiment_name, Path(rep.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = expected_runs(cfg, list(extra_overrides))
    title = _title(name, cfg.scale.name)
    written: list[Path] = []
    kind = rep.figure

    if kind in TABLE_FIGURES or rep.paper_table is not None:
        table = build_table(runs, rep.paper_table, list(rep.match))
        written.append(_write_csv(for_csv(table), out / f"{name}.csv"))
        if kind in ("table_bars", "same_time", None):
            written.append(figures.table_bars(table, title, out / f"{name}.png"))
        elif kind == "speed_tradeoff":
            written.append(figures.speed_tradeoff(table, title, out / f"{name}.png"))
        elif kind == "kxp_tradeoff":
            written.append(figures.kxp_tradeoff(table, title, out / f"{name}.png"))
        elif kind == "sparsity_effect":
            written.append(figures.sparsity_effect(table, rep.vary, dict(rep.baseline), title, out / f"{name}.png"))
        elif kind in ("curves_vs_time", "curves_vs_steps"):
            written += _curves(runs, cfg, kind, title, out / name)
    else:
        written += ANALYSES[kind](runs, cfg, title, out / name)

    info = run_info(runs) | {"scale": cfg.scale.name, "sweep_dir": relative_to_root(sweep_dir(cfg), cfg.paths.root_dir),
                             "report_commit": git_info()["commit"], "files": [p.name for p in written]}
    if records.uses_records(cfg):  # every finished run's metrics.json, committed beside the report
        records.write_records(runs, out, cfg.paths.root_dir)
        info["from_records"] = sum(r.recorded for r in runs)
    checked = gates.check_gates(runs, list(rep.get("gates") or []))
    if checked:  # a gate without its runs (passed None) is not recorded: it neither passes nor fails
        info["gates"] = {g: result for g, result in checked.items() if result["passed"] is not None}
    atomic_write_json(out / "run_info.json", info)
    if out.parent.name == name:  # the default layout experiments/<name>/<scale>/: refresh the READMEs
        written += [write_readme(name, out.parent), write_index(out.parent.parent)]
    return written


def _title(name: str, scale: str) -> str:
    return f"{name} — scale={scale}"


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    atomic_write_text(path, df.to_csv(index=False))
    return path


def _row_name(run: Run) -> str:
    hp = run.hparams
    return label(hp.get("model", "?"), hp.get("dilation"), hp.get("dwa_period"), hp.get("paper_depth"))


# -- curves of the validation perplexity ----------------------------------------------------------

def _curves(runs: list[Run], cfg: DictConfig, kind: str, title: str, stem: Path) -> list[Path]:
    """Validation curves, averaged over seeds at each validation (Fig. 3c against training time,
    Fig. 15 against steps, in paper steps so that the zoom is the paper's)."""
    scale_steps = cfg.paper.steps / cfg.steps
    points = []
    for r in runs:
        if not r.ok:  # a diverged run's curve ends in NaN / inf, which would make the row's mean NaN
            continue
        for h in r.metrics.get("val_history", []):
            points.append({"row": _row_name(r), "seed": r.seed, "step": h["step"], "paper_step": h["step"] * scale_steps,
                           "train_time_s": h["train_time_s"], "val_ppl": h["val_ppl"]})
    data = pd.DataFrame(points, columns=["row", "seed", "step", "paper_step", "train_time_s", "val_ppl"])
    grouped = data.groupby(["row", "step"], sort=False)
    mean = grouped.mean(numeric_only=True).reset_index()
    mean["val_ppl_min"] = grouped["val_ppl"].min().values  # the seed spread, drawn as a band
    mean["val_ppl_max"] = grouped["val_ppl"].max().values
    mean["n_seeds"] = grouped["seed"].nunique().values
    csv = _write_csv(mean, Path(f"{stem}.csv"))
    if kind == "curves_vs_time":
        png = figures.curves(mean, "train_time_s", title, Path(f"{stem}.png"))
    else:
        zoom = tuple(cfg.report.zoom_paper_steps) if cfg.report.get("zoom_paper_steps") else None
        png = figures.curves(mean, "paper_step", title, Path(f"{stem}.png"), zoom=zoom)
    return [csv, png]


# -- analyses of trained models ---------------------------------------------------------------------

def _panels(runs: list[Run], cfg: DictConfig) -> list[tuple[str, list[Run]]]:
    return [(p.title, select(runs, dict(p.select))) for p in cfg.report.panels]


def alpha_heatmaps(runs: list[Run], cfg: DictConfig, title: str, stem: Path) -> list[Path]:
    """Figs. 4, 7, 14: α averaged over the seeds of each panel's runs, and their standard deviation over
    seeds (alpha_std; the figure's second row)."""
    panels, spreads, rows = [], [], []
    for name, chosen in _panels(runs, cfg):
        mats = [analysis.alpha_matrix(analysis.load_trained(r.dir)[0]).numpy() for r in chosen]
        seeds = analysis.seed_spread(mats) if mats else None
        mean, std = (seeds["mean"], seeds["std"]) if seeds else (None, None)
        panels.append((f"{name} (mean of n={len(mats)})", mean))
        spreads.append(std)
        if mean is not None:
            rows += [{"panel": name, "dwa_index": i, "source": j, "alpha": float(mean[i, j]),
                      "alpha_std": None if std is None else float(std[i, j]), "n_seeds": len(mats)}
                     for i in range(mean.shape[0]) for j in range(i + 1)]
    return [_write_csv(pd.DataFrame(rows), Path(f"{stem}.csv")),
            figures.heatmaps(panels, title, Path(f"{stem}.png"), spreads=spreads)]


def alpha_evolution(runs: list[Run], cfg: DictConfig, title: str, stem: Path) -> list[Path]:
    """Fig. 9: α of one run at the paper's steps 0 … 6000 (scaled), from its alpha_history.json."""
    (name, chosen), = _panels(runs, cfg)
    history = json.loads((chosen[0].dir / "alpha_history.json").read_text()) if chosen else {}
    ratio = cfg.steps / cfg.paper.steps
    panels, rows = [], []
    snapshots = sorted(int(s) for s in history)
    for paper_step in cfg.report.paper_steps:
        # the snapshot nearest to the paper's step, scaled (snapshots are every scaled 1000 paper steps)
        step = min(snapshots, key=lambda s: abs(s - paper_step * ratio)) if snapshots else None
        alpha = np.array(history[str(step)]) if step is not None else None
        panels.append((f"paper step {paper_step} (step {step})", alpha))
        if alpha is not None:
            rows += [{"paper_step": paper_step, "step": step, "dwa_index": i, "source": j, "alpha": alpha[i, j]}
                     for i in range(alpha.shape[0]) for j in range(i + 1)]
    return [_write_csv(pd.DataFrame(rows), Path(f"{stem}.csv")),
            figures.heatmaps(panels, f"{title}: {name}, one seed (as the paper's Fig. 9): no seed spread",
                             Path(f"{stem}.png"))]


def embedding_similarity(runs: list[Run], cfg: DictConfig, title: str, stem: Path) -> list[Path]:
    """Figs. 5, 8: cos(Y_i, X_0) per depth, averaged over tokens of fixed validation windows and seeds."""
    rows = []
    for name, chosen in _panels(runs, cfg):
        sims = []
        for r in chosen:
            net, run_cfg = analysis.load_trained(r.dir)
            sims.append(analysis.embedding_similarity(net, analysis.validation_windows(run_cfg, 64)))
        if sims:
            seeds = analysis.seed_spread(sims)
            rows += [{"series": name, "depth": i, "cosine": float(c), "cosine_min": float(seeds["min"][i]),
                      "cosine_max": float(seeds["max"][i]), "n_seeds": seeds["n"]} for i, c in enumerate(seeds["mean"])]
    data = pd.DataFrame(rows, columns=["series", "depth", "cosine", "cosine_min", "cosine_max", "n_seeds"])
    return [_write_csv(data, Path(f"{stem}.csv")),
            figures.lines(data, "depth", "cosine", title, Path(f"{stem}.png"), "depth (DWA / block index)",
                          "cosine similarity with the embedding")]


def alpha_pruning(runs: list[Run], cfg: DictConfig, title: str, stem: Path) -> list[Path]:
    """Fig. 6: perplexity after zeroing the smallest x % of α, on fixed validation windows; the
    Transformer panel is drawn as a horizontal reference at its perplexity on the same windows."""
    rows, hlines = [], {}
    n = int(cfg.report.eval_windows)
    for name, chosen in _panels(runs, cfg):
        for r in chosen:
            net, run_cfg = analysis.load_trained(r.dir)
            windows = analysis.validation_windows(run_cfg, n)
            if not hasattr(net.mixer, "alphas"):
                hlines.setdefault(name, []).append(analysis.perplexity(net, windows))
                continue
            for fraction in cfg.report.fractions:
                with analysis.pruned_alphas(net, fraction / 100) as dropped:
                    rows.append({"series": name, "seed": r.seed, "dropped_percent": fraction, "dropped": dropped,
                                 "ppl": analysis.perplexity(net, windows)})
    data = pd.DataFrame(rows, columns=["series", "seed", "dropped_percent", "dropped", "ppl"])
    mean = _pruning_summary(data)
    for name, values in hlines.items():
        mean = pd.concat([mean, pd.DataFrame([{"series": name, "dropped_percent": None, "ppl": float(np.mean(values)),
                                               "ppl_min": min(values), "ppl_max": max(values), "n_seeds": len(values)}])])
    return [_write_csv(mean, Path(f"{stem}.csv")),
            figures.lines(mean.dropna(subset=["dropped_percent"]), "dropped_percent", "ppl", title, Path(f"{stem}.png"),
                          "α dropped (%, smallest magnitude first)", "perplexity",
                          hlines={k: (float(np.mean(v)), min(v), max(v)) for k, v in hlines.items()}, logy=True)]


def _pruning_summary(data: pd.DataFrame) -> pd.DataFrame:
    """Fig. 6's points: per series and fraction, the mean perplexity over seeds, its minimum and maximum,
    and the paired difference (same seed) to the unpruned model with its 95 % interval (diff_*)."""
    from denselab.report.tables import paired_difference

    out = []
    for (series, percent), rows in data.groupby(["series", "dropped_percent"], sort=False):
        base = data[(data["series"] == series) & (data["dropped_percent"] == 0)]
        point = {"series": series, "dropped_percent": percent, "dropped": rows["dropped"].mean(),
                 "ppl": rows["ppl"].mean(), "ppl_min": rows["ppl"].min(), "ppl_max": rows["ppl"].max(),
                 "n_seeds": rows["seed"].nunique()}
        if percent != 0 and len(base):
            point |= paired_difference(dict(zip(rows["seed"], rows["ppl"])), dict(zip(base["seed"], base["ppl"])))
        out.append(point)
    return pd.DataFrame(out, columns=["series", "dropped_percent", "dropped", "ppl", "ppl_min", "ppl_max", "n_seeds",
                                      "diff_ppl", "diff_ppl_ci95_low", "diff_ppl_ci95_high", "diff_n", "diff_test",
                                      "diff_resolved"])


def singular_values(runs: list[Run], cfg: DictConfig, title: str, stem: Path) -> list[Path]:
    """Fig. 12: ranked singular values per matrix kind, averaged over blocks and seeds."""
    rows = []
    for name, chosen in _panels(runs, cfg):
        per_seed = [analysis.singular_values(analysis.load_trained(r.dir)[0]) for r in chosen]
        for kind in (per_seed[0] if per_seed else {}):
            seeds = analysis.seed_spread([s[kind] for s in per_seed])
            rows += [{"series": name, "kind": kind, "rank": i, "singular_value": float(v),
                      "singular_value_min": float(seeds["min"][i]), "singular_value_max": float(seeds["max"][i]),
                      "n_seeds": seeds["n"]} for i, v in enumerate(seeds["mean"])]
    data = pd.DataFrame(rows, columns=["series", "kind", "rank", "singular_value", "singular_value_min",
                                       "singular_value_max", "n_seeds"])
    return [_write_csv(data, Path(f"{stem}.csv")), figures.spectra(data, title, Path(f"{stem}.png"))]


ANALYSES = {
    "league": league.league,  # every node against the Transformer (conf/experiment/league.yaml)
    "alpha_heatmaps": alpha_heatmaps,
    "alpha_evolution": alpha_evolution,
    "embedding_similarity": embedding_similarity,
    "alpha_pruning": alpha_pruning,
    "singular_values": singular_values,
}


# -- the experiment's README ----------------------------------------------------------------------

def describe(name: str) -> str:
    """The header comment of conf/experiment/<name>.yaml."""
    lines = []
    for line in (CONF / "experiment" / f"{name}.yaml").read_text().splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines)


def write_readme(name: str, folder: Path) -> Path:
    """experiments/<name>/README.md: what it reproduces, how to run it, and what each scale measured."""
    cfg = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    source = OmegaConf.select(cfg, "report.source")
    lines = [f"# {name}", "", describe(name), "", "## Run it", "",
             "```bash", f"make {name} SCALE=mini      # or smoke; small, paper: GPU jobs; default mini",
             f".venv/bin/python run.py -m experiment={name} scale=mini   # the same, directly",
             f".venv/bin/python -m denselab.report experiment={name} scale=mini   # only redraw from the runs", "```", ""]
    if OmegaConf.select(cfg, "report.figure") == "league":
        lines += ["Speeds side by side: each run times itself at its end, alone, so on a shared machine its training "
                  "time and inference speed carry whatever else was running. `make bench-league SCALE=mini` "
                  "(benchmarks/league_speed.py) times every node in one process, in interleaved rounds, and writes "
                  "`<scale>/speed.csv` and `speed.json` (machine, commit, command). The report then shows those "
                  "ratios to the Transformer (median [quartiles] over the rounds) beside the runs' training time, and the "
                  "figure plots perplexity against them.", ""]
    if source:
        lines += [f"It draws on the runs of `{source}` (the same sweep folder): runs `{source}` already "
                  "trained are reused, the missing ones are trained first.", ""]
    lines += _gpu_cost_lines(name, source)
    lines += ["## Results by scale", "",
              "Every file below is written by `denselab.report` from the runs' metrics.json and checkpoints; "
              "none is edited by hand; `<scale>/runs/`, where present, holds each run's record (its metrics.json) for reports "
              "that read metrics only. Wall time: the time at least one of the completed runs was training (from "
              "each run's last start to its end; the gaps between sessions are left out); job time: the sum "
              "over those runs.", "",
              "| scale | runs completed / expected | failed | wall time | job time | machine | commit | files |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    if not any(json.loads(p.read_text())["scale"] != "smoke" for p in folder.glob("*/run_info.json")):
        lines.append("| (none run yet) | | | | | | | |")
    for info_path in sorted(folder.glob("*/run_info.json")):
        info = json.loads(info_path.read_text())
        if info["scale"] == "smoke":  # smoke outputs are not kept in the repository (.gitignore)
            continue
        files = ", ".join(f"[{f}]({info_path.parent.name}/{f})" for f in info.get("files", []))
        diverged = f" (+{info['diverged']} diverged)" if info.get("diverged") else ""  # older run_info: no key
        unfinished = f" (+{info['unfinished']} unfinished)" if info.get("unfinished") else ""
        lines.append(f"| {info['scale']} | {info['completed']} / {info['expected']} | {info['failed']}{diverged}{unfinished} | "
                     f"{_duration(info['span_s'])} | {_duration(info['job_time_s'])} | {'; '.join(info['machines'])} | "
                     f"{', '.join(c[:10] for c in info['commits'])} | {files} |")
    for info_path in sorted(folder.glob("*/run_info.json")):
        recorded = json.loads(info_path.read_text()).get("gates") or {}
        failed = [f"{g} ({r['detail']})" for g, r in recorded.items() if not r.get("passed")]
        if failed and info_path.parent.name != "smoke":
            lines += ["", f"**{info_path.parent.name}: not resolved at this scale.** A gate failed: {'; '.join(failed)}. "
                      "The numbers are reported, but no claim is read from them (experiments/README.md)."]
    for table in sorted(folder.glob(f"*/{name}.md")):  # a report's own markdown table (the league's)
        if table.parent.name != "smoke":
            lines += ["", f"### {table.parent.name}", "", table.read_text().rstrip()]
    path = folder / "README.md"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _gpu_cost_lines(name: str, source: str | None) -> list[str]:
    """The README's GPU bill, from experiments/gpu_hours.csv (`python -m denselab.plan --all`)."""
    from denselab.plan import COSTS_CSV

    lines = ["## On GPUs", ""]
    costs = pd.read_csv(COSTS_CSV, comment="#") if COSTS_CSV.is_file() else None
    rows = costs[costs["experiment"] == name] if costs is not None else []
    if len(rows) == 0:
        return lines + [f"`make plan E={name} SCALE=paper` lists its jobs and their GPU-hours.", ""]
    mfu, peak = rows.iloc[0]["mfu"], rows.iloc[0]["peak_tflops"]
    lines += [f"GPU-hours of the whole sweep at MFU {mfu:g} of {peak:g} TFLOP/s (an H100 in bf16), from the models' "
              f"FLOPs per token (`make plan E={name} SCALE=<scale>` lists the jobs and which are done"
              + (f"; the runs shared with `{source}` are only trained once" if source else "") + "):", "",
              "| scale | jobs | GPU-hours |", "| --- | --- | --- |"]
    lines += [f"| {r.scale} | {r.jobs} | {r.gpu_hours:,.1f} |" for r in rows.itertuples()]
    return lines + [""]


def write_index(folder: Path) -> Path:
    """experiments/README.md: one line per experiment, in the Makefile's order."""
    def order(n: str) -> tuple:
        group = 0 if n.startswith("table") else 1 if n == "longseq" else 2 if n.startswith("fig") else 3  # 3: league
        return group, int("".join(c for c in n if c.isdigit()) or 0), n

    names = sorted((p.stem for p in (CONF / "experiment").glob("[!_]*.yaml")), key=order)
    lines = ["# Experiments: the paper's tables and figures", "",
             "One folder per table or figure: its README (what it reproduces, how to run it, what each scale",
             "measured) and the reports of the scales that were run. `paper_tables.csv` holds every number of the",
             "paper's tables, transcribed; the reports put ours beside them. Regenerate these READMEs with",
             "`.venv/bin/python -m denselab.report --readmes`, the scoreboard alone with `make claims`.", ""]
    if (folder / "claims.yaml").is_file():  # the scoreboard of the paper's claims, also as claims.csv
        from denselab.report import claims

        board = claims.scoreboard(folder)
        claims.write_claims_csv(board, folder)
        lines += claims.readme_lines(board) + ["## Experiments", ""]
    lines += ["| experiment | what it reproduces | scales run |", "| --- | --- | --- |"]
    for name in names:
        scales = sorted(json.loads(p.read_text())["scale"] for p in (folder / name).glob("*/run_info.json"))
        scales = [s for s in scales if s != "smoke"]
        lines.append(f"| [{name}]({name}/README.md) | {describe(name)} | {', '.join(scales) or '-'} |")
    path = folder / "README.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"

