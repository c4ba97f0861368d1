#!/usr/bin/env python
"""League speed, side by side (not a test: it asserts nothing about absolute time).
`make bench-league SCALE=mini` runs it.

Each league run measures its own training time and inference speed, but it measures them alone and
at its own time. On a shared machine (two sweeps side by side on a 2-core CPU, a busy GPU node) those
numbers carry whatever else was running. This script measures every node of the league
(conf/experiment/league.yaml) at one scale's shapes in one process, in interleaved rounds. Each round
times every node once, in an order rotated by one node per round. Per node and round, two medians are
taken over `--repeats` calls after a warm-up call (`denselab.speed`):

  train      forward + backward of one training micro-batch (the scale's batch_size × seq_len, the
             run's precision), as each run measures it at its end (`speed.train_batch_size`)
  inference  forward only of `speed.inference_batch_size` sequences (the paper's 64, §4 Table 1)

Each node is compared with the Transformer round by round: its train time over the Transformer's, and
its inference batches per second over the Transformer's. The median and quartiles of these per-round
ratios are free of the host's slow drifts, which a ratio of medians is not.

On CPU the process keeps freed memory (`dwa_bench.steady_allocator`), so that no node pays page
faults another one avoided. The models are built with seed 0's initial weights; speed does not depend on the weights' values.
The vocabulary is the scale's tokenizer's, padded as the runs pad it. No data is read.

    .venv/bin/python benchmarks/league_speed.py --scale mini --threads 1   # minutes (17 nodes × 5 rounds)
    .venv/bin/python benchmarks/league_speed.py --scale smoke --rounds 2   # seconds (what the tests run)
    .venv/bin/python benchmarks/league_speed.py --scale small --device cuda

Writes `experiments/league/<scale>/speed.csv` (one row per node) and `speed.json` (machine, commit,
command, threads, shapes), atomically; `--out-dir` writes them elsewhere. `denselab.report` takes the
league's "training step" and "inference speed" columns from them when they exist, beside the runs' own
training time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from denselab.config import register_resolvers
from denselab.data.tokenizers import configured_vocab_size
from denselab.io import atomic_write_json, atomic_write_text, git_info, machine_info
from denselab.models import build_model, count_parameters, padded_vocab_size
from denselab.report.league import SPEED_CSV, SPEED_JSON, row_name
from denselab.speed import batches_per_second
from hydra_plugins.denselab_sweeper.rows_sweeper import expand_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dwa_bench import paired_ratios, steady_allocator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def league_jobs(scale: str) -> list[tuple[dict, DictConfig]]:
    """(row, composed config) of every league row at `scale`, seed 0, in the league's row order."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        league = compose("config", overrides=["experiment=league", f"scale={scale}"], return_hydra_config=True)
        rows = OmegaConf.to_container(league.hydra.sweeper.rows, resolve=True)
        jobs = []
        for row in rows:
            (overrides,) = expand_rows([row], ["experiment=league", f"scale={scale}", "seed=0"])
            jobs.append((row, compose("config", overrides=overrides)))
    return jobs


def measure(jobs: list[tuple[dict, DictConfig]], device: torch.device, rounds: int,
            repeats: int) -> tuple[pd.DataFrame, list[int]]:
    """Per node and round: train seconds and inference batches per second (interleaved, rotated), and
    each node's parameter count."""
    nets, vocabs = [], []
    for _, cfg in jobs:
        torch.manual_seed(0)
        vocabs.append(padded_vocab_size(configured_vocab_size(cfg.data.tokenizer, cfg.data.bpe_vocab_size),
                                         cfg.model.vocab_multiple))
        nets.append(build_model(cfg.model, vocabs[-1]).to(device))
    samples = []
    for r in range(rounds):
        t0 = time.perf_counter()
        for i in [(r + j) % len(jobs) for j in range(len(jobs))]:  # a rotating start: no node always first
            cfg, net = jobs[i][1], nets[i]
            common = dict(seq_len=cfg.data.seq_len, vocab_size=vocabs[i], precision=str(cfg.trainer.precision),
                          repeats=repeats, warmup=1)
            train_batch = cfg.speed.train_batch_size or cfg.data.batch_size
            samples.append({"index": i, "round": r,
                            "train_s": 1 / batches_per_second(net, train_batch, train=True, **common),
                            "inference_bps": batches_per_second(net, cfg.speed.inference_batch_size, train=False,
                                                                **common)})
        print(f"round {r + 1}/{rounds}: {time.perf_counter() - t0:.1f} s", flush=True)
    frame = pd.DataFrame(samples)
    reference = frame[frame["index"] == 0].set_index("round")  # the Transformer: the league's first row
    frame["train_ratio"] = frame["train_s"] / frame["round"].map(reference["train_s"])
    frame["inference_ratio"] = frame["inference_bps"] / frame["round"].map(reference["inference_bps"])
    return frame, [count_parameters(net)["total"] for net in nets]


def summarise(jobs: list[tuple[dict, DictConfig]], frame: pd.DataFrame, params: list[int]) -> pd.DataFrame:
    """One row per node: medians over the rounds, and the median and quartiles of the per-round ratios."""
    out = []
    for i, (row, cfg) in enumerate(jobs):
        mine = frame[frame["index"] == i]
        entry = {"row": row_name(row), "model": row["model"], "params": params[i], "rounds": len(mine),
                 "train_batch_size": cfg.speed.train_batch_size or cfg.data.batch_size,
                 "inference_batch_size": cfg.speed.inference_batch_size, "seq_len": cfg.data.seq_len,
                 "train_s": mine["train_s"].median(), "inference_bps": mine["inference_bps"].median()}
        for ratio in ("train_ratio", "inference_ratio"):
            q1, median, q3 = paired_ratios(mine[ratio].tolist(), [1.0] * len(mine))
            entry.update({ratio: median, f"{ratio}_q1": q1, f"{ratio}_q3": q3})
        out.append(entry)
    return pd.DataFrame(out).round(4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="mini", help="the league's scale (smoke, mini, small, paper)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (the runs' num_threads)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (every node once per round)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per node and round (their median)")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: experiments/league/<scale>/")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        parser.error(f"--rounds={args.rounds} --repeats={args.repeats}: both must be integers >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = steady_allocator() if args.device == "cpu" else "default"  # no node pays another's page faults
    out_dir = args.out_dir or ROOT / "experiments" / "league" / args.scale
    jobs = league_jobs(args.scale)
    print(f"{len(jobs)} nodes at scale={args.scale} on {args.device}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds × {args.repeats} repeats", flush=True)
    t0 = time.perf_counter()
    frame, params = measure(jobs, torch.device(args.device), args.rounds, args.repeats)
    table = summarise(jobs, frame, params)
    atomic_write_text(out_dir / SPEED_CSV, table.to_csv(index=False))
    atomic_write_json(out_dir / SPEED_JSON, {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), **git_info(ROOT), "machine": machine_info(),
        "device": args.device, "malloc": malloc, "threads": torch.get_num_threads(), "rounds": args.rounds, "repeats": args.repeats,
        "scale": args.scale, "wall_s": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    width = max(len(r) for r in table["row"])
    print(f"\n{'node':<{width}}  train step vs Transformer [q1, q3]   inference speed vs Transformer [q1, q3]")
    for r in table.to_dict("records"):
        print(f"{r['row']:<{width}}  ×{r['train_ratio']:.2f} [{r['train_ratio_q1']:.2f}, {r['train_ratio_q3']:.2f}]"
              f"{'':<18}×{r['inference_ratio']:.2f} [{r['inference_ratio_q1']:.2f}, {r['inference_ratio_q3']:.2f}]")
    print(f"\nwrote {out_dir / SPEED_CSV} and {SPEED_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
