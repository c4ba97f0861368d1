"""Skips with Gains: a learned scalar on every residual skip (paper §4 "Skips with Gains", Tables 1, 6).

Paper §4: "each skip connection also contains a learned scaling factor which is applied to the
values moving through the skip connection before being summed with the output from a different
layer (e.g. self-attention)". As in the official code (epfml/DenseFormer,
experiments/models/base_w_gains.py), for every block i:

    h   = g^attn_i · x + Attn(LN(x))
    X_i = g^mlp_i  · h + MLP(LN(h)),          g initialised to 1,

so the untrained model is the Transformer. Extra parameters: 2d (96 at depth 48). The official code
puts the gains in its weight-decayed group; here they are in the depth-mixing group like all
mixing parameters (`optim.mixing_weight_decay`).
"""

from __future__ import annotations

import torch
from torch import nn

from denselab.models.gpt import Rotary


class SkipsWithGains(nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        self.depth = depth
        self.gain_attn = nn.Parameter(torch.ones(depth))  # g^attn_i
        self.gain_mlp = nn.Parameter(torch.ones(depth))  # g^mlp_i

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.gain_attn.fill_(1.0)
            self.gain_mlp.fill_(1.0)

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        x = x0
        for i, block in enumerate(blocks):
            x = self.gain_attn[i] * x + block.attn_branch(x, rotary)
            x = self.gain_mlp[i] * x + block.mlp_branch(x)
        return x
