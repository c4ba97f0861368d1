"""Hyper-Connections (Zhu et al., 2024, arXiv 2409.19606): n residual streams with learned
width (read) and depth (write) connections, static (SHC) or dynamic (DHC).

The hidden state is a matrix of n streams, H ∈ R^{n×C} per token, started as n copies of the
embedding. The 2d sub-layers f_1, f_2, ..., f_{2d} are the blocks' residual branches in order
(f_{2i-1} = Attn(LN(·)) and f_{2i} = MLP(LN(·)) of block i); each has its own hyper-connection

    h_in  = Σ_k A_m[k] · H_k                          width connection: the sub-layer's input
    h_out = f_ℓ(h_in)
    H_k  ← B[k] · h_out + Σ_{k'} A_r[k', k] · H_{k'}    depth connection: write back, mix streams
    output = (1/n) Σ_k H_k                             (then the final LayerNorm and the head)

Static: A_m ∈ R^n, A_r ∈ R^{n×n}, B ∈ R^n are parameters. Dynamic: they also depend on the token,
with H̄ = RMSNorm(H) ⊙ g (per stream, with a learnable gain g ∈ R^C per sub-layer, initialised to 1, as
the reference's norm has) and matrices W_m ∈ R^{C×1}, W_r ∈ R^{C×n}, W_β ∈ R^{C×1}:

    A_m(H) = A_m + s_α · tanh(H̄ W_m),   A_r(H) = A_r + s_α · tanh(H̄ W_r),   B(H) = B + s_β · tanh(H̄ W_β)ᵀ

Initialisation (the paper's, "equivalent to the Pre-Norm residual"): A_m = e_{(ℓ-1) mod n},
A_r = I_n, B = 1 for sub-layer ℓ; W = 0, s_α = s_β = 0.01. All streams then stay equal, each
receiving every branch output, so the untrained model is the Transformer. The paper sums the
streams before the final norm; we average them — the same up to the factor n that the LayerNorm
removes, except for its ε, which is not negligible at GPT-2's small initial scale (summing moved
the untrained logits by ~1e-2 in our test) — so the start is the Transformer up to float rounding.

Extra parameters per sub-layer: n² + 2n static (24 for n = 4, 2,304 at depth 48); dynamic adds
C(n + 3) + 2 (5,378 at width 768, n = 4; 516,288 more at depth 48).

Not verifiable against the authors' code: none is in the stored index (the hyper-connection
repositories there are third-party, most of them of the later manifold-constrained variant), so the
node follows the paper's equations and initialisation; the output average and the norm's ε are ours.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from denselab.models.gpt import Rotary, check_positive_int


class HyperConnections(nn.Module):
    NORM_GAINS = ("norm_gain",)  # g is a norm's gain: never weight-decayed (GPT.mixer_norm_parameters)

    def __init__(self, depth: int, width: int, streams: int = 4, dynamic: bool = False):
        super().__init__()
        check_positive_int("streams", streams)
        self.depth, self.streams, self.dynamic = depth, streams, dynamic
        L, n = 2 * depth, streams  # one hyper-connection per sub-layer
        self.a_m = nn.Parameter(torch.zeros(L, n))  # width connections
        self.a_r = nn.Parameter(torch.zeros(L, n, n))  # stream mixing (depth connections)
        self.b = nn.Parameter(torch.zeros(L, n))  # how the branch output is written to each stream
        if dynamic:
            self.w_m = nn.Parameter(torch.zeros(L, width))
            self.w_r = nn.Parameter(torch.zeros(L, width, n))
            self.w_b = nn.Parameter(torch.zeros(L, width))
            self.s_alpha = nn.Parameter(torch.zeros(L))
            self.s_beta = nn.Parameter(torch.zeros(L))
            self.norm_gain = nn.Parameter(torch.ones(L, width))  # g: the gain of H̄'s RMSNorm
        self.reset_parameters()

    def reset_parameters(self) -> None:
        L, n = self.a_m.shape
        with torch.no_grad():
            self.a_m.copy_(F.one_hot(torch.arange(L) % n, n).float())  # A_m = e_{(ℓ-1) mod n}
            self.a_r.copy_(torch.eye(n).expand(L, n, n))  # A_r = I
            self.b.fill_(1.0)  # B = 1
            if self.dynamic:
                for w in (self.w_m, self.w_r, self.w_b):
                    w.zero_()
                self.s_alpha.fill_(0.01)
                self.s_beta.fill_(0.01)
                self.norm_gain.fill_(1.0)

    def connect(self, l: int, H: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One sub-layer ℓ (0-based `l`): H (B, T, n, C) → updated H."""
        a_m, a_r, b = self.a_m[l], self.a_r[l], self.b[l]  # (n,), (n, n), (n,)
        if self.dynamic:
            Hn = F.rms_norm(H, H.shape[-1:], weight=self.norm_gain[l])  # (B, T, n, C)
            a_m = a_m + self.s_alpha[l] * torch.tanh(Hn @ self.w_m[l])  # (B, T, n)
            a_r = a_r + self.s_alpha[l] * torch.tanh(Hn @ self.w_r[l])  # (B, T, n, n)
            b = b + self.s_beta[l] * torch.tanh(Hn @ self.w_b[l])  # (B, T, n)
            h_in = torch.einsum("btk,btkc->btc", a_m, H)
            h_out = branch(h_in)  # (B, T, C)
            return torch.einsum("btk,btc->btkc", b, h_out) + torch.einsum("btjk,btjc->btkc", a_r, H)
        h_in = torch.einsum("k,btkc->btc", a_m, H)
        h_out = branch(h_in)
        return torch.einsum("k,btc->btkc", b, h_out) + torch.einsum("jk,btjc->btkc", a_r, H)

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        H = x0.unsqueeze(2).expand(-1, -1, self.streams, -1)  # (B, T, n, C): n copies of X_0
        for i, block in enumerate(blocks):
            H = self.connect(2 * i, H, lambda h: block.attn_branch(h, rotary))
            H = self.connect(2 * i + 1, H, block.mlp_branch)
        return H.mean(dim=2)
