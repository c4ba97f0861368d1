"""MUDD connections: MUDDFormer (Xiao et al., 2025, arXiv 2502.12170), multiway dynamic dense.

Like DWA, every block reads weighted sums of all earlier outputs X_0..X_i, but (1) the weights are
generated per token from the current output X_i, and (2) each block input is decoupled into four
streams with their own weights — query, key, value and residual (c ∈ {q, k, v, r}):

    A_i = a_i + W2_i · GELU(W1_i · RMSNorm(X_i))       per token, shape (4, i + 1)
    X_i^c = Σ_{j=0..i} A_i[c, j] · X_j                  the four inputs of block i + 1
    h = X_i^r + Attn(q from LN(X_i^q), k from LN(X_i^k), v from LN(X_i^v))
    X_{i+1} = h + MLP(LN(h))
    output = Σ_j A_d[j] · X_j                           (a single stream after the last block)

with RMSNorm without gain, W1_i ∈ R^{C×H_i}, W2_i ∈ R^{H_i×4(i+1)}, H_i = 4(i + 1) (the reference
code's hidden size, before its optional rounding to 64), the static weights a_i ∈ R^{4×(i+1)}, and
the first block reading X_0 on all four streams. As in the reference PyTorch code
(Caiyun-AI/MUDDFormer, modeling_muddformer.py), the three attention inputs share the block's
LayerNorm here (`sepln=False`), so the blocks keep the Transformer's parameters.

Initialisation, "the plain residual network": a_i one-hot on j = i for every stream, W2 = 0 (so the
dynamic part is zero), W1 ~ N(0, 0.02). Every stream then equals X_i and the untrained model is the
Transformer (up to float rounding: q, k and v are projected separately). Extra parameters at
depth d, width C: Σ_i [C·H_i + H_i·4(i+1) + 4(i+1)] with 1 stream after the last block
(see README for depth 48).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from denselab.models.gpt import Rotary

STREAMS = 4  # query, key, value, residual


class DynamicDenseWeights(nn.Module):
    """A_i for the outputs X_0..X_i: static a_i plus a per-token MLP of RMSNorm(X_i)."""

    def __init__(self, width: int, n_sources: int, n_streams: int):
        super().__init__()
        self.n_sources, self.n_streams = n_sources, n_streams
        hidden = n_streams * n_sources
        self.w1 = nn.Parameter(torch.zeros(width, hidden))
        self.w2 = nn.Parameter(torch.zeros(hidden, n_streams * n_sources))
        self.static = nn.Parameter(torch.zeros(n_streams, n_sources))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.w1, std=0.02)
            self.w2.zero_()
            self.static.zero_()
            self.static[:, -1] = 1.0  # every stream starts as X_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X_i (B, T, C) → A_i (B, T, n_streams, n_sources)."""
        dynamic = F.gelu(F.rms_norm(x, x.shape[-1:]) @ self.w1) @ self.w2  # (B, T, S·L)
        return self.static + dynamic.unflatten(-1, (self.n_streams, self.n_sources))


class MUDD(nn.Module):
    def __init__(self, depth: int, width: int):
        super().__init__()
        self.depth = depth
        self.weights = nn.ModuleList(
            DynamicDenseWeights(width, n_sources=i + 1, n_streams=STREAMS if i < depth else 1)
            for i in range(1, depth + 1)
        )

    def reset_parameters(self) -> None:
        for w in self.weights:
            w.reset_parameters()

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        outputs = [x0]  # X_0, X_1, ...
        streams = [x0] * STREAMS  # inputs of block 1: (q, k, v, r)
        for block, dense in zip(blocks, self.weights):
            x_q, x_k, x_v, x_r = streams
            h = x_r + block.attn_branch(x_q, rotary, x_k=block.ln_1(x_k), x_v=block.ln_1(x_v))
            outputs.append(h + block.mlp_branch(h))  # X_i
            A = dense(outputs[-1])  # (B, T, S, i + 1)
            streams = [self.aggregate(A[:, :, c], outputs) for c in range(A.shape[2])]
        return streams[0]

    @staticmethod
    def aggregate(a: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Σ_j a[..., j] · X_j for per-token weights a (B, T, L)."""
        y = a[..., 0:1] * outputs[0]
        for j in range(1, len(outputs)):
            y = torch.addcmul(y, a[..., j : j + 1], outputs[j])
        return y
