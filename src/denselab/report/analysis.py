"""Analyses of trained models (paper §5 and App. B): they load the checkpoints of a sweep's runs.

    alpha_matrix           the learned DWA weights (Figs. 4, 7, 14)
    embedding_similarity   cosine similarity of each DWA output with the input embedding (Figs. 5, 8)
    pruned_perplexity      perplexity after zeroing the smallest x % of the α (Fig. 6)
    singular_values        ranked singular values of the weight matrices (Fig. 12)
    seed_spread            mean, standard deviation, minimum and maximum over seeds (the figures' spread)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from denselab.checkpoints import CheckpointError, load_checkpoint
from denselab.models import GPT, build_model


def load_trained(run_dir: Path) -> tuple[GPT, DictConfig]:
    """The trained model of a run (from checkpoints/last.ckpt) and its resolved config.

    The checkpoint is read with weights_only=True: one that would need the full unpickler (which runs
    any code a crafted file names) or is damaged raises CheckpointError, a missing one FileNotFoundError."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (has the run finished?)")
    checkpoint = load_checkpoint(path)
    if "denselab_config" not in checkpoint or "net.wte.weight" not in checkpoint.get("state_dict", {}):
        raise CheckpointError(f"{path}: no denselab_config / model weights in this checkpoint (not written by run.py?)")
    cfg = OmegaConf.create(checkpoint["denselab_config"])
    vocab = checkpoint["state_dict"]["net.wte.weight"].shape[0]
    net = build_model(cfg.model, vocab)
    net.load_state_dict({k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")})
    return net.eval(), cfg


def validation_windows(cfg: DictConfig, n_windows: int, batch_size: int = 32) -> DataLoader:
    """`n_windows` fixed, evenly spaced validation windows of the run's data (already tokenized)."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    datamodule.eval_batch_size = batch_size
    return datamodule.val_windows_loader(n_windows)


@torch.no_grad()
def perplexity(net: GPT, loader: DataLoader) -> float:
    """exp of the token-weighted mean cross-entropy over the loader's windows."""
    total, tokens = 0.0, 0
    for x, y in loader:
        total += F.cross_entropy(net(x).float().flatten(0, 1), y.flatten(), reduction="sum").item()
        tokens += y.numel()
    return math.exp(total / tokens)


def alpha_matrix(net: GPT) -> torch.Tensor:
    return net.mixer.alpha_matrix()


@torch.no_grad()
def embedding_similarity(net: GPT, loader: DataLoader) -> list[float]:
    """Mean over tokens of cos(Y_i, X_0) for i = 0..d, Y_i the hidden state after block i (the DWA output
    in a DenseFormer, the block output in a Transformer): what block i+1 reads, and what ln_f reads."""
    states: list[torch.Tensor] = []
    # The hooks see what each block reads only when the mixer calls the blocks one by one: DWA's fast
    # scheme batches them, so the readable reference implementation (the same sums) runs here.
    implementation = getattr(net.mixer, "implementation", None)
    if implementation is not None:
        net.mixer.implementation = "reference"
    hooks = [b.register_forward_pre_hook(lambda m, args: states.append(args[0])) for b in net.blocks]
    hooks.append(net.ln_f.register_forward_pre_hook(lambda m, args: states.append(args[0])))
    sums, count = None, 0
    try:
        for x, _ in loader:
            states.clear()
            net(x)
            x0 = states[0]  # the input of block 1: Y_0 = X_0
            sims = torch.stack([F.cosine_similarity(s, x0, dim=-1).sum() for s in states])  # (d + 1,)
            sums = sims if sums is None else sums + sims
            count += x0.shape[0] * x0.shape[1]
    finally:
        for h in hooks:
            h.remove()
        if implementation is not None:
            net.mixer.implementation = implementation
    return (sums / count).tolist()


@contextmanager
def pruned_alphas(net: GPT, fraction: float) -> Iterator[int]:
    """Zero the `fraction` of all α with the smallest magnitude (paper Fig. 6), restoring them after.
    Yields how many were zeroed."""
    alphas = list(net.mixer.alphas)
    saved = [a.detach().clone() for a in alphas]
    flat = torch.cat([a.detach().abs().flatten() for a in alphas])
    k = int(round(fraction * flat.numel()))
    try:
        if k:
            threshold = flat.kthvalue(k).values
            dropped = 0
            with torch.no_grad():
                for a in alphas:  # ties at the threshold: drop in order until k are gone
                    mask = a.abs() <= threshold
                    take = torch.nonzero(mask).flatten()[: max(0, k - dropped)]
                    a[take] = 0.0
                    dropped += len(take)
        yield k
    finally:
        with torch.no_grad():
            for a, s in zip(alphas, saved):
                a.copy_(s)


def singular_values(net: GPT) -> dict[str, list[float]]:
    """Ranked singular values (descending), averaged over blocks for the block matrices:
    'qkv' (attention input projection), 'attn_out', 'mlp_up', and 'embedding'."""
    kinds = {"qkv": [b.attn.c_attn.weight for b in net.blocks], "attn_out": [b.attn.c_proj.weight for b in net.blocks],
             "mlp_up": [b.mlp.c_fc.weight for b in net.blocks], "embedding": [net.wte.weight]}
    return {k: torch.stack([torch.linalg.svdvals(w.detach().float()) for w in ws]).mean(0).tolist()
            for k, ws in kinds.items()}


def seed_spread(per_seed: list) -> dict:
    """Elementwise over seeds (a list of equally shaped arrays, one per seed): the mean, the standard
    deviation (None with fewer than two seeds: no spread to show), the minimum and maximum, and n."""
    values = np.asarray(per_seed, dtype=float)
    return {"mean": values.mean(0), "std": values.std(0, ddof=1) if len(values) > 1 else None,
            "min": values.min(0), "max": values.max(0), "n": len(values)}
