"""AdamW with three parameter groups and a cosine schedule with linear warmup (paper §4, App. A.3).

Groups (names as logged by LearningRateMonitor):
    decay     the matrices of the linears                       weight decay `weight_decay`
    no_decay  LayerNorm gains, biases, the tied embedding       no weight decay
    mixing    every depth-mixing parameter (the mixer's: DWA α,  `mixing_weight_decay`, lr × `mixing_lr_scale`
              gains, λ, hyper-connection and MUDD weights, ...)
    mixing_norms  the mixer's norm gains and biases (MUDD's       no weight decay, lr × `mixing_lr_scale`
              LN_k/LN_v, ELC-BERT's PostLN, the RMSNorm gains of
              hyper-connections and AttnRes); a group of its own where
              `mixing_weight_decay` is not 0

The official experiments code (epfml/DenseFormer) stores each DWA's α as an `nn.Linear` weight,
so its optimiser puts α in the *decayed* group with the common learning rate (wd 0.1, lr × 1).
`scale=paper` and `scale=small` do the same (`optim.mixing_weight_decay: 0.1`); the CPU scales leave the
mixing weights undecayed (decay pulls α_{i,i} from its identity value 1 towards 0), as every committed
mini result was trained. The same rule (decay the weights of linear maps, not norms) leaves the norms a
mixer owns undecayed at every scale, like the blocks' LayerNorms. They are "mixing" parameters (counted,
logged and frozen by `dwa_start_step` with the rest); where the mixing group is decayed they get a group
of their own, `mixing_norms`, with no decay, and where it is not they stay in it. (So a checkpoint of
MUDD, ELC-BERT, dynamic hyper-connections or AttnRes saved with a decayed mixing group before that group
existed does not resume: its optimiser has one group fewer.)
"""

from __future__ import annotations

import math

import torch


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    mixing_weight_decay: float,
    mixing_lr_scale: float,
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    groups = model.parameter_groups()
    if mixing_weight_decay:  # a mixer's norm gains are norms: not decayed (without decay, one group as before)
        norms = model.mixer_norm_parameters()
        groups["mixing_norms"] = [(n, p) for n, p in groups["mixing"] if n in norms]
        groups["mixing"] = [(n, p) for n, p in groups["mixing"] if n not in norms]
    settings = {
        "decay": {"weight_decay": weight_decay, "lr": lr},
        "no_decay": {"weight_decay": 0.0, "lr": lr},
        "mixing": {"weight_decay": mixing_weight_decay, "lr": lr * mixing_lr_scale},
        "mixing_norms": {"weight_decay": 0.0, "lr": lr * mixing_lr_scale},
    }
    param_groups = [
        {"name": name, "params": [p for _, p in groups[name]], **settings[name]}
        for name in ("decay", "no_decay", "mixing", "mixing_norms")
        if groups.get(name)
    ]
    fused = all(p.is_cuda for g in param_groups for p in g["params"])
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def lr_factor(step: int, max_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based).

    Linear warmup (step+1)/W over the first W steps, then a half cosine from 1 down to
    `min_lr_ratio` at the last step. The official code's OneCycleLR(div_factor=100,
    final_div_factor=0.1) ends at lr/10, hence the default min_lr_ratio = 0.1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps - 1))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(max_steps: int, warmup_steps: int | None, warmup_fraction: float) -> int:
    """Explicit `warmup_steps` when given, else `warmup_fraction` of the run (paper: 5 % = 2000 of 40k)."""
    return int(warmup_steps) if warmup_steps is not None else int(round(warmup_fraction * max_steps))
