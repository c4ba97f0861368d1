"""The bill before the sweep: every job of an experiment, which are done, and the GPU-hours the rest take.

    python -m denselab.plan experiment=table1 scale=paper [--mfu 0.35] [--peak-tflops 989] [overrides ...]
    make plan E=table1 SCALE=paper
    python -m denselab.plan --all     # experiments/gpu_hours.csv: every experiment at the GPU scales

Compute per job = training tokens × FLOPs per token, with the usual count for a decoder (Kaplan et al.
2020; PaLM, Chowdhery et al. 2022, App. B) of a forward and backward pass:

    FLOPs/token = 6·N + 12·L·T·C  (+ 6·C·A for the depth mixing)

N the parameters (the tied embedding counted once, as the output layer's matrix product), L blocks,
T the sequence length, C the width, A the depth-mixing weights each token's vector is multiplied by
(the DWA's α: Σ_i (i+1) for a 1x1-DenseFormer). GPU-hours = FLOPs / (MFU × peak FLOP/s): the peak is
the accelerator's dense bf16 rate (989 TFLOP/s for an H100 SXM), the MFU the fraction of it a run
attains (0.35 by default: what nanoGPT-style trainers reach for a GPT-2-small-sized model; measure
yours with `trainer=gpu`, which logs it). The final evaluation and the speed measurement are not
counted (a few minutes per job).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from denselab.config import ConfigError, register_resolvers

ROOT = Path(__file__).resolve().parents[2]
H100_BF16_TFLOPS = 989.0  # dense bf16 peak of an H100 SXM
DEFAULT_MFU = 0.35
GPU_SCALES = ("small", "paper")
COSTS_CSV = ROOT / "experiments" / "gpu_hours.csv"  # read by the experiments' READMEs (report/build.py)


@dataclass
class JobCost:
    overrides: list[str]
    status: str
    params: int
    tokens: int
    flops_per_token: float

    @property
    def flops(self) -> float:
        return self.tokens * self.flops_per_token

    def gpu_hours(self, mfu: float, peak_tflops: float) -> float:
        return self.flops / (mfu * peak_tflops * 1e12) / 3600

    @property
    def to_run(self) -> bool:
        """Neither completed nor recorded by another experiment (which the sweep copies, not trains)."""
        return self.status != "completed" and not self.status.startswith(RECORDED_ELSEWHERE)


RECORDED_ELSEWHERE = "recorded:"  # status "recorded:<experiment>"


def recorded_elsewhere(job_cfg: DictConfig) -> str | None:
    """"recorded:<experiment>" when another experiment's committed record at this scale holds the same
    training as the job (records.same_training_elsewhere: the sweep copies it instead of training it)."""
    from denselab import records
    from denselab.config import training_fingerprint

    job_cfg = job_cfg.copy()
    with open_dict(job_cfg):  # a run folder for the interpolations that need one; paths are not in the fingerprint
        job_cfg.paths.output_dir = str(Path(job_cfg.paths.log_dir) / "plan")
    found = records.same_training_elsewhere(job_cfg, training_fingerprint(OmegaConf.to_container(job_cfg, resolve=True)))
    return None if found is None else RECORDED_ELSEWHERE + found[1].parents[2].name  # experiments/<name>/<scale>/runs/x


def flops_per_token(params: int, depth: int, seq_len: int, width: int, mixing_weights: int) -> float:
    """Training FLOPs (forward + backward) per token; see the module docstring."""
    return 6.0 * params + 12.0 * depth * seq_len * width + 6.0 * width * mixing_weights


def model_flops_per_token(net, seq_len: int) -> float:
    """flops_per_token of a built model (a GPT of denselab.models, on any device, meta included)."""
    from denselab.models import count_parameters

    params = count_parameters(net)
    mixing = params["mixing"] if hasattr(net.mixer, "alpha_matrix") else 0  # DWA-style: a multiply-add per α and channel
    return flops_per_token(params["total"], net.depth, seq_len, net.width, mixing)


def job_cost(cfg: DictConfig, overrides: list[str], status: str) -> JobCost:
    """The cost of one job from its composed config; the model is built on the meta device."""
    from denselab.data.tokenizers import configured_vocab_size
    from denselab.models import build_model, count_parameters, padded_vocab_size

    vocab = configured_vocab_size(cfg.data.tokenizer, cfg.data.bpe_vocab_size)
    net = build_model(cfg.model, padded_vocab_size(vocab, cfg.model.vocab_multiple), device="meta")
    tokens = int(cfg.steps) * int(cfg.batch_size) * int(cfg.seq_len)
    return JobCost(overrides, status, count_parameters(net)["total"], tokens, model_flops_per_token(net, int(cfg.seq_len)))


def plan(overrides: list[str]) -> list[JobCost]:
    """Every job the experiment's sweep would launch, with its status in the sweep folder (or its own
    records, or "recorded:<experiment>" for the same training recorded by another experiment) and its cost."""
    from denselab.records import uses_records
    from denselab.report.runs import expected_runs

    os.environ.setdefault("DENSELAB_ROOT", str(ROOT))
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        sweep = compose("config", overrides=overrides, return_hydra_config=True)
        costs = []
        for run in expected_runs(sweep, overrides):  # a run's row holds the command line's overrides too
            job = [*run.row, f"seed={run.seed}"]
            job_cfg = compose("config", overrides=job)
            status = run.status
            if status == "missing" and uses_records(sweep):
                status = recorded_elsewhere(job_cfg) or status
            costs.append(job_cost(job_cfg, job, status))
    return costs


def render(costs: list[JobCost], mfu: float, peak_tflops: float) -> str:
    shown = [" ".join(o for o in c.overrides if not o.startswith(("experiment=", "scale="))) for c in costs]
    width = max(len("job"), *map(len, shown))
    status_width = max(10, *(len(c.status) for c in costs))
    lines = [f"{'job':<{width}} {'status':<{status_width}} {'params':>12} {'tokens':>15} {'PFLOP':>10} {'GPU-h':>8}"]
    for c, job in zip(costs, shown):
        lines.append(f"{job:<{width}} {c.status:<{status_width}} {c.params:>12,} {c.tokens:>15,} "
                     f"{c.flops / 1e15:>10,.0f} {c.gpu_hours(mfu, peak_tflops):>8.1f}")
    total = sum(c.gpu_hours(mfu, peak_tflops) for c in costs)
    left = sum(c.gpu_hours(mfu, peak_tflops) for c in costs if c.to_run)
    done = sum(c.status == "completed" for c in costs)
    elsewhere = sorted({c.status.removeprefix(RECORDED_ELSEWHERE) for c in costs if c.status.startswith(RECORDED_ELSEWHERE)})
    recorded = sum(c.status.startswith(RECORDED_ELSEWHERE) for c in costs)
    copied = (f", {recorded} recorded by {', '.join(elsewhere)} (the sweep copies those records instead of training)"
              if recorded else "")
    lines.append(f"{len(costs)} jobs, {done} completed{copied}; {total:,.1f} GPU-hours in all, {left:,.1f} still to "
                 f"run (at MFU {mfu:.2f} of {peak_tflops:g} TFLOP/s)")
    return "\n".join(lines)


def write_costs(mfu: float, peak_tflops: float, path: Path = COSTS_CSV) -> Path:
    """Every experiment's jobs and GPU-hours at each GPU scale, as a CSV (jobs already run not subtracted)."""
    import pandas as pd

    from denselab.io import atomic_write_text, git_info

    rows = []
    for name in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("[!_]*.yaml")):
        for scale in GPU_SCALES:
            costs = plan([f"experiment={name}", f"scale={scale}"])
            rows.append({"experiment": name, "scale": scale, "jobs": len(costs),
                         "gpu_hours": round(sum(c.gpu_hours(mfu, peak_tflops) for c in costs), 1),
                         "mfu": mfu, "peak_tflops": peak_tflops})
            print(f"[denselab] {name} scale={scale}: {len(costs)} jobs, {rows[-1]['gpu_hours']} GPU-hours")
    commit = (git_info().get("commit") or "?")[:10]
    header = f"# written by `python -m denselab.plan --all` at commit {commit}; GPU-hours at the MFU of the row\n"
    atomic_write_text(path, header + pd.DataFrame(rows).to_csv(index=False))
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m denselab.plan", description="List an experiment's jobs, which are done, and the GPU-hours "
        "the rest would take.", epilog="example: python -m denselab.plan experiment=table1 scale=paper --mfu 0.4")
    parser.add_argument("overrides", nargs="*", help="experiment=<name> scale=<smoke|mini|paper> [key=value ...]")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help=f"model FLOP utilisation (default {DEFAULT_MFU})")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS,
                        help=f"the accelerator's dense bf16 peak in TFLOP/s (default {H100_BF16_TFLOPS:g}: H100 SXM)")
    parser.add_argument("--all", action="store_true", help=f"write {COSTS_CSV.relative_to(ROOT)} for every "
                        f"experiment at scales {', '.join(GPU_SCALES)}")
    args = parser.parse_args(argv)
    if args.all:
        print(f"[denselab] wrote {write_costs(args.mfu, args.peak_tflops)}")
        return 0
    if not any(o.startswith("experiment=") for o in args.overrides):
        parser.error("give experiment=<name>, e.g. experiment=table1 scale=paper")
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu={args.mfu}: allowed 0 < mfu <= 1")
    try:
        costs = plan(args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(costs, args.mfu, args.peak_tflops))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
