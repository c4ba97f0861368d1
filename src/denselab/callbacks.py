"""Lightning callbacks of the suite (the rest come from Lightning itself, see conf/callbacks/)."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


class TrainTimer(L.Callback):
    """Wall-clock time spent in training batches (validation excluded) and the token throughput.

    Logs `train/tokens_per_s` (of all devices together) over the batches since the previous log, and keeps the total
    `train_time_s` in checkpoints, so a resumed run reports the time of the whole run. Also keeps the
    validation curve against training time (`history`: step, train_time_s, val_loss, val_ppl), for
    the paper's perplexity-vs-time plot (Fig. 3c).
    """

    def __init__(self) -> None:
        self.train_time_s = 0.0
        self.history: list[dict[str, float]] = []
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
        self._window_tokens += batch[0].numel() * trainer.world_size  # every rank trains a slice of equal size
        pl_module.log("train/tokens_per_s", self._window_tokens / max(self._window_time, 1e-9), prog_bar=True)
        if (batch_idx + 1) % trainer.log_every_n_steps == 0:
            self._window_time, self._window_tokens = 0.0, 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks' epoch-end hooks run before the module's, which is where
        # this validation's loss is computed (last_eval would still hold the previous validation's).
        if trainer.sanity_checking or getattr(pl_module, "eval_prefix", "val") != "val" or not pl_module.last_eval:
            return
        self.history.append({"step": trainer.global_step, "train_time_s": self.train_time_s,
                             "val_loss": pl_module.last_eval["loss"], "val_ppl": pl_module.last_eval["ppl"]})

    def state_dict(self) -> dict[str, Any]:
        return {"train_time_s": self.train_time_s, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_time_s = state_dict["train_time_s"]
        self.history = state_dict.get("history", [])


class Diverged(Exception):
    """A non-finite loss: training cannot recover from it, so the run stops with status `diverged`."""


class DivergenceGuard(L.Callback):
    """Stop the run at a non-finite training loss (NaN or ±inf), and at a non-finite validation loss,
    instead of training on to a NaN perplexity that would be reported as a result.

    The training loss is checked on the device every batch and read on the host only every
    `log_every_n_steps` batches (when Lightning's logging reads it anyway) and before a validation, so
    the guard adds no host-device synchronisation per step on a GPU; a run stops at most that many
    batches after it diverged, and a checkpoint never follows a non-finite loss. On several devices the
    ranks decide together (a rank that stopped alone would leave the others waiting in a collective)."""

    def __init__(self) -> None:
        self._finite: torch.Tensor | None = None  # all training losses since the last check were finite

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite
        if (batch_idx + 1) % trainer.log_every_n_steps == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = (getattr(pl_module, "last_eval", None) or {}).get("loss")
        if not trainer.sanity_checking and loss is not None and not math.isfinite(loss):
            raise Diverged(f"non-finite validation loss {loss} at step {trainer.global_step}")

    def _check(self, trainer: L.Trainer) -> None:
        finite, self._finite = self._finite, None
        finite = True if finite is None else bool(finite)
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise Diverged(f"non-finite training loss by step {trainer.global_step}")


class MixingParameterLogger(L.Callback):
    """Logs the depth-mixing parameters to TensorBoard at every (periodic) validation: small tensors
    (gains, λ) as scalars, larger ones as histograms, and for DWA-style mixers the whole α matrix as
    a heatmap image on a symlog colour scale (as the paper's Fig. 4)."""

    SCALAR_LIMIT = 4

    def __init__(self, alpha_every_n_steps: int | None = None) -> None:
        self.alpha_every_n_steps = alpha_every_n_steps
        self.alpha_history: dict[str, list[list[float]]] = {}  # step → α matrix (paper Fig. 9)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0 and hasattr(pl_module.net.mixer, "alpha_matrix"):
            self.alpha_history["0"] = pl_module.net.mixer.alpha_matrix().tolist()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, every = trainer.global_step, self.alpha_every_n_steps
        if every and step % every == 0 and hasattr(pl_module.net.mixer, "alpha_matrix"):
            self.alpha_history[str(step)] = pl_module.net.mixer.alpha_matrix().tolist()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or getattr(pl_module, "eval_prefix", "val") != "val":
            return
        step = trainer.global_step
        net = pl_module.net
        alpha = net.mixer.alpha_matrix() if hasattr(net.mixer, "alpha_matrix") else None
        if alpha is not None:
            self.alpha_history[str(step)] = alpha.tolist()
        experiments = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not experiments:
            return
        figure = alpha_heatmap(alpha, f"step {step}") if alpha is not None else None
        for tb in experiments:
            for name, p in net.parameter_groups()["mixing"]:
                tag = "mixing/" + name.removeprefix("mixer.")
                values = p.detach().float().flatten().cpu()
                if values.numel() <= self.SCALAR_LIMIT:
                    for k, v in enumerate(values.tolist()):
                        tb.add_scalar(f"{tag}/{k}", v, step)
                else:
                    tb.add_histogram(tag, values, step)
            if figure is not None:
                tb.add_figure("mixing/alpha", figure, step, close=False)
        if figure is not None:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def state_dict(self) -> dict[str, Any]:
        return {"alpha_history": self.alpha_history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.alpha_history = state_dict.get("alpha_history", {})


def alpha_heatmap(alpha: torch.Tensor, title: str = ""):
    """α as rows (DWA index) × columns (X_j) on a symlog colour scale, like the paper's Fig. 4.

    Drawn at every validation, so it is kept cheap: plain colour-bar labels (matplotlib's default
    "10^k" labels go through its mathtext parser) and fixed margins instead of tight_layout, which
    lays the figure out twice; together they took most of a tiny run's validation time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    fig, ax = plt.subplots(figsize=(4.5, 4))
    fig.subplots_adjust(left=0.14, right=0.98, bottom=0.12, top=0.92)
    limit = max(1.0, float(alpha.abs().max()))
    upper = torch.triu(torch.ones_like(alpha, dtype=torch.bool), diagonal=1)  # j > i: no such weight
    values = alpha.masked_fill(upper, float("nan")).numpy()
    im = ax.imshow(values, cmap="RdBu_r", norm=SymLogNorm(linthresh=0.05, vmin=-limit, vmax=limit))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("X_j")
    ax.set_ylabel("DWA index")
    ax.set_title(title)
    ticks = [-limit, -0.5, -0.05, 0.0, 0.05, 0.5, limit]
    fig.colorbar(im, ax=ax, label="α (symlog)", ticks=ticks, format=FormatStrFormatter("%.2g"))
    return fig


def sequences_in(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """Sequences of an (inputs, targets) batch (ThroughputMonitor's batch_size_fn)."""
    return batch[0].size(0)


def tokens_in(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """Tokens of an (inputs, targets) batch (ThroughputMonitor's length_fn)."""
    return batch[0].numel()
