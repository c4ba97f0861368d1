"""x0-shortcut: the ablation that isolates embedding reuse (beyond the paper).

DenseFormer's learned α give large weights to the embedding X_0 (paper §5, Fig. 4). This node
keeps only that connection: before every block i,

    x ← λ_{i,0} · x + λ_{i,1} · X_0,      X_i = B_i(x),      λ_i initialised to (1, 0),

so the untrained model is the Transformer (the same per-block "x0 lambdas" appear in the
modded-nanogpt speedrun). With `normalize_x0=true` the shortcut reads RMSNorm(X_0) (no gain) instead,
as modded-nanogpt does (it normalises the embedding once, `x = x0 = norm(embed(idx))`); the main
stream still starts from X_0 itself, so the untrained model stays the Transformer. Extra parameters:
2d (96 at depth 48).

Not verifiable as one reference: modded-nanogpt's x0 lambdas changed from record to record (with value
embeddings, skip weights and other changes around them), so the node is the two forms above, isolated
in this suite's GPT, not any one record's model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from denselab.models.gpt import Rotary


class X0Shortcut(nn.Module):
    def __init__(self, depth: int, normalize_x0: bool = False):
        super().__init__()
        if not isinstance(normalize_x0, bool):
            raise ValueError(f"normalize_x0={normalize_x0!r}: allowed true or false")
        self.depth, self.normalize_x0 = depth, normalize_x0
        self.lambdas = nn.Parameter(torch.zeros(depth, 2))  # (λ_{i,0}, λ_{i,1}) per block
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.lambdas.copy_(torch.tensor([1.0, 0.0]).expand(self.depth, 2))

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        x = x0
        shortcut = F.rms_norm(x0, x0.shape[-1:]) if self.normalize_x0 else x0  # (B, T, C)
        for i, block in enumerate(blocks):
            x = block(self.lambdas[i, 0] * x + self.lambdas[i, 1] * shortcut, rotary)
        return x
