"""Speed as the paper measures it (§4, Table 1): batches per second of a trained model, forward only
for inference (batches of 64 sequences), forward + backward for training, after warm-up, the median
of repeated timings. Used per run (metrics.json) and by the benchmarks.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from typing import Callable

import torch


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 2, device: torch.device | None = None) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed ones."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def autocast_for(precision: str, device: torch.device):
    """The autocast context Lightning's `precision` setting implies (bf16/16 mixed), else none."""
    if str(precision).startswith("bf16-mixed"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if str(precision).startswith("16-mixed"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def batches_per_second(
    model: torch.nn.Module,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    train: bool,
    precision: str = "32-true",
    repeats: int = 5,
    warmup: int = 2,
) -> float:
    """1 / median time of one forward (train=False, no grad, eval mode) or one forward + backward of
    the mean next-token loss (train=True) on random tokens of shape (batch_size, seq_len)."""
    device = next(model.parameters()).device
    idx = torch.randint(0, vocab_size, (batch_size, seq_len + 1), device=device,
                        generator=torch.Generator(device=device).manual_seed(0))
    x, y = idx[:, :-1], idx[:, 1:]
    was_training = model.training
    model.train(train)

    def step():
        with autocast_for(precision, device):
            if not train:
                with torch.no_grad():
                    return model(x)
            loss = torch.nn.functional.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    try:
        return 1.0 / median_seconds(step, repeats, warmup, device)
    finally:
        model.train(was_training)
