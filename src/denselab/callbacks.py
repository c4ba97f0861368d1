"""Lightning callbacks of the suite (the rest come from Lightning itself, see conf/callbacks/)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


class TrainTimer(L.Callback):
    """Wall-clock time spent in training batches (validation excluded) and the token throughput.

    Logs `train/tokens_per_s` over the batches since the previous log, and keeps the total
    `train_time_s` in checkpoints, so a resumed run reports the time of the whole run.
    """

    def __init__(self) -> None:
        self.train_time_s = 0.0
        self._t0 = 0.0
        self._window_time, self._window_tokens = 0.0, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()  # CUDA kernels run asynchronously: wait before reading the clock
        dt = time.perf_counter() - self._t0
        self.train_time_s += dt
        self._window_time += dt
        self._window_tokens += batch[0].numel()
        pl_module.log("train/tokens_per_s", self._window_tokens / max(self._window_time, 1e-9), prog_bar=True)
        if (batch_idx + 1) % trainer.log_every_n_steps == 0:
            self._window_time, self._window_tokens = 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"train_time_s": self.train_time_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_time_s = state_dict["train_time_s"]
