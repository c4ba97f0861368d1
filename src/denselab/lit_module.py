"""The LightningModule every architecture trains with: next-token cross-entropy, AdamW, cosine schedule."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import grad_norm
from torchmetrics import MeanMetric

from denselab.optim import build_optimizer, lr_factor, warmup_steps_for


class LanguageModel(L.LightningModule):
    """Wraps an architecture node (`net`: token ids (B, T) → logits (B, T, V)).

    Args:
        net: the model built from `conf/model/<name>.yaml`.
        optim: the `optim` config group as a dict (see `conf/optim/adamw.yaml`).
        max_steps: optimiser steps of the whole run (for the schedule).
        config: the resolved run config; stored in every checkpoint ("denselab_config").
        flops_per_token: training FLOPs per token (plan.py), for the MFU that ThroughputMonitor logs.
    """

    def __init__(self, net: torch.nn.Module, optim: dict[str, Any], max_steps: int, config: dict | None = None,
                 flops_per_token: float | None = None):
        super().__init__()
        self.net = net
        self.config = config  # the run's resolved config, saved in checkpoints to rebuild the model
        self.optim_cfg = dict(optim)
        self.max_steps = max_steps
        self.val_loss = MeanMetric()  # token-weighted mean of the fp32 cross-entropy, over every rank
        self.eval_prefix = "val"  # "final_val" for the full pass at the end
        self.last_eval: dict[str, float] = {}
        self.best_val_loss = math.inf  # kept in checkpoints, so a resumed run reports the whole run
        self.mixing_params = [p for _, p in net.parameter_groups()["mixing"]]
        self.flops_per_token = flops_per_token
        self._batch_tokens = 0  # tokens of the last micro-batch on this device

    @property
    def flops_per_batch(self) -> float | None:
        """FLOPs of this device's last batch (Lightning's ThroughputMonitor reads it to log MFU): forward
        and backward while training, the forward (a third) while evaluating."""
        if self.flops_per_token is None:
            return None
        return self.flops_per_token * self._batch_tokens * (1.0 if self.training else 1.0 / 3.0)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(idx)

    @staticmethod
    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy, computed in fp32 whatever the activation dtype."""
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self._batch_tokens = x.numel()
        loss = self.cross_entropy(self.net(x), y)
        # On several devices the logged loss is the mean over the ranks' slices (equal sizes), i.e. the
        # loss of the micro-batch's global slice, as one device would have logged it.
        self.log("train/loss", loss, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Delayed DWA training (paper App. B.4, Table 5, hence the name `dwa_start_step`): before that
        step the mixing parameters, of any mixer, get no gradient, so AdamW leaves them (and their
        moments) untouched."""
        if self.global_step < self.optim_cfg.get("dwa_start_step", 0):
            for p in self.mixing_params:
                p.grad = None
        if self.global_step % self.trainer.log_every_n_steps == 0:  # the whole model's gradient norm, before clipping
            norms = grad_norm(self.net, norm_type=2)
            if norms:
                self.log("train/grad_norm", norms["grad_2.0_norm_total"])

    # -- validation -------------------------------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._batch_tokens = x.numel()
        self.val_loss.update(self.cross_entropy(self.net(x), y), weight=y.numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute().item()
        self.val_loss.reset()
        ppl = math.exp(min(loss, 50.0))
        prefix = self.eval_prefix
        self.log(f"{prefix}/loss", loss, prog_bar=prefix == "val")
        self.log(f"{prefix}/ppl", ppl, prog_bar=prefix == "val")
        self.last_eval = {"loss": loss, "ppl": ppl}
        if prefix == "val" and not self.trainer.sanity_checking:
            self.best_val_loss = min(self.best_val_loss, loss)

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.optim_cfg
        optimizer = build_optimizer(
            self.net, lr=o["lr"], betas=o["betas"], weight_decay=o["weight_decay"],
            mixing_weight_decay=o["mixing_weight_decay"], mixing_lr_scale=o["mixing_lr_scale"], eps=o.get("eps", 1e-8),
        )
        warmup = warmup_steps_for(self.max_steps, o.get("warmup_steps"), o["warmup_fraction"])
        schedule = partial(lr_factor, max_steps=self.max_steps, warmup_steps=warmup, min_lr_ratio=o["min_lr_ratio"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_loss"] = self.best_val_loss
        checkpoint["denselab_config"] = self.config
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer_spec", "")
        if tokenizer.startswith("bpe:"):  # a BPE trained on the run's data travels with its weights
            from denselab.data.tokenizers import get_tokenizer

            checkpoint["denselab_tokenizer_json"] = get_tokenizer(tokenizer).json_text

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_loss = checkpoint.get("best_val_loss", math.inf)
        # A checkpoint saved before the mixing group had its name calls it "dwa"; torch restores a
        # group's settings, its name included, from the checkpoint, and LearningRateMonitor tags by name.
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                if group.get("name") == "dwa":
                    group["name"] = "mixing"
