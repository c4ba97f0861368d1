"""Architecture nodes. `conf/model/<name>.yaml` picks one; `build_model` instantiates it.

Every node is a *mixer*: the module that wires the shared blocks over depth (`GPT.mixer`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from denselab.models.attn_res import AttnRes
from denselab.models.connect_to_last import ConnectToLast
from denselab.models.dwa import DWA, num_dwa_parameters
from denselab.models.elc_bert import ELCBert
from denselab.models.gpt import GPT, Residual
from denselab.models.hyper_connections import HyperConnections
from denselab.models.last_k import LastK
from denselab.models.mudd import MUDD
from denselab.models.skips_with_gains import SkipsWithGains
from denselab.models.value_residual import ValueResidual
from denselab.models.x0_shortcut import X0Shortcut

__all__ = [
    "GPT", "Residual", "DWA", "LastK", "ConnectToLast", "SkipsWithGains", "ELCBert", "ValueResidual",
    "HyperConnections", "MUDD", "AttnRes", "X0Shortcut",
    "build_model", "count_parameters", "num_dwa_parameters", "padded_vocab_size",
]


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """Round the tokenizer's vocabulary up to a multiple (GPT-2: 50257 → 50304 with 64), for fast matmuls."""
    return -(-vocab_size // multiple) * multiple


def build_model(model_cfg: DictConfig, vocab_size: int, device: str | torch.device | None = None) -> GPT:
    """Instantiate `model_cfg.net` (a Hydra node) for an already padded vocabulary.

    The mixer is built first with the random state forked, so that whatever it draws does not shift
    the blocks' initialisation: for a given seed every architecture starts from the same embedding and
    block weights (the paired design of the tables), its own mixing parameters at their init."""
    with torch.device(device) if device is not None else nullcontext():
        mixer_cfg = model_cfg.net.get("mixer")
        if mixer_cfg is None:
            return instantiate(model_cfg.net, vocab_size=vocab_size)
        with torch.random.fork_rng(devices=[]):
            mixer = instantiate(mixer_cfg)
        return instantiate(model_cfg.net, vocab_size=vocab_size, mixer=mixer)


def count_parameters(model: GPT) -> dict[str, int]:
    """Unique parameters (tied weights once): total, the depth-mixing share ('mixing': the mixer's
    parameters, metrics.json's `params.mixing`), the embedding."""
    groups = model.parameter_groups()
    total = sum(p.numel() for ps in groups.values() for _, p in ps)
    mixing = sum(p.numel() for _, p in groups["mixing"])
    embedding = model.wte.weight.numel()
    return {"total": total, "mixing": mixing, "embedding": embedding, "non_embedding": total - embedding}
