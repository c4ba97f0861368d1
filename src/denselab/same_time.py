"""Same training time (paper Table 2, Fig. 3c): give a model as many steps as fit in another run's time.

Paper §4: "We train a 48 block 4x5-DenseFormer and compare it against a 48 block Transformer baseline
trained with the same time budget. The baseline is therefore trained for more iterations (41.5k vs.
40k)". With `match_train_time_of={model: denseformer, dilation: 4, dwa_period: 5}` a run looks in its
own sweep folder for the completed run with those settings and the same seed, and takes

    steps = ⌈ steps_ref · bps_self / bps_ref ⌉,

bps being training batches per second measured the same way (`denselab.speed`, forward + backward
of a micro-batch) on the same machine: the step count whose training time equals the reference's,
rounded up ("always more than" the reference, as in the paper). A resumed run keeps the count it
chose first, so its configuration does not change between restarts. On several devices rank 0 measures
and the others take its count from the config.yaml it writes, so that every rank trains as many steps.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from denselab.config import ConfigError
from denselab.io import read_json
from denselab.ranks import global_rank, say
from denselab.speed import batches_per_second

RANK_ZERO_WAIT_S = 3600  # how long the other ranks wait for rank 0's measurement


def reference_run(sweep_dir: Path, selector: dict[str, Any], seed: int) -> dict:
    """The completed run of `sweep_dir` whose hparams match `selector` and `seed`."""
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        m = read_json(path) or {}
        hp = m.get("hparams") or {}
        if m.get("status") == "completed" and hp.get("seed") == seed and all(hp.get(k) == v for k, v in selector.items()):
            return m
    wanted = " ".join(f"{k}={v}" for k, v in selector.items())
    raise ConfigError(f"match_train_time_of: no completed run with {wanted} seed={seed} in {sweep_dir} "
                      "(it must run first, in the same sweep)")


def training_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def steps_for_same_train_time(cfg: DictConfig, out: Path, net: torch.nn.Module, vocab_size: int) -> dict[str, Any]:
    """The step count for this run, and how it was chosen (for metrics.json)."""
    selector = dict(cfg.match_train_time_of)
    ref = reference_run(out.parent, selector, cfg.seed)
    device = training_device(str(cfg.trainer.accelerator))
    setup = ref["speed_setup"]
    bps = batches_per_second(net.to(device), setup["train_batch_size"], setup["seq_len"], vocab_size, train=True,
                             precision=str(cfg.trainer.precision), repeats=setup["repeats"], warmup=setup["warmup"])
    net.cpu()
    steps = math.ceil(ref["steps"] * bps / ref["train_bps"])
    return {"steps": steps, "reference_run": ref["run_dir"], "reference_steps": ref["steps"],
            "reference_train_bps": ref["train_bps"], "train_bps": bps,
            "reference_train_time_s": ref.get("train_time_s")}


def resolve_steps(cfg: DictConfig, out: Path, net: torch.nn.Module, vocab_size: int) -> dict[str, Any] | None:
    """For a run with `match_train_time_of`, fix `cfg.steps` before training starts and return how it
    was chosen (None for other runs). A resumed run keeps the count of its first start, which its
    config.yaml holds, so its schedule does not change between restarts."""
    if not cfg.get("match_train_time_of"):
        return None
    first = out / "config.yaml"
    if global_rank() != 0:
        _wait_for(first)
    chosen = {"steps": OmegaConf.load(first).steps} if first.is_file() else steps_for_same_train_time(cfg, out, net, vocab_size)
    with open_dict(cfg):
        cfg.steps = int(chosen["steps"])
    say(f"[denselab] same training time as {dict(cfg.match_train_time_of)}: {cfg.steps} steps")
    return chosen


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + RANK_ZERO_WAIT_S
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: rank 0 did not write it within {RANK_ZERO_WAIT_S} s")
        time.sleep(1.0)
