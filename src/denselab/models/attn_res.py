"""Attention Residuals: AttnRes (Kimi Team, 2026, arXiv 2603.15031), softmax attention over depth.

The residual stream is replaced by attention over all earlier sub-layer outputs. With the 2d
sub-layers f_1, ..., f_{2d} (f_{2i-1} = Attn(LN(·)) and f_{2i} = MLP(LN(·)) of block i, without
their residual skips), v_0 = X_0 and v_ℓ = f_ℓ(h_ℓ):

    h_ℓ = Σ_{i=0..ℓ-1} α_{i→ℓ} · v_i,      α_{·→ℓ} = softmax_i( w_ℓ · RMSNorm_ℓ(v_i) )      (full AttnRes)
    output = h_{2d+1}                      (one more pseudo-query reads out the last state)

with one learned pseudo-query w_ℓ ∈ R^C and one RMSNorm (with gain) per sub-layer; keys are the
values themselves. Block AttnRes groups the sub-layers into blocks of `block_size`: inside a block
the outputs are summed as a plain residual would, and attention runs over the block summaries
instead of every output: the sources of sub-layer ℓ in block n are
[v_0, b_1, ..., b_{n-1}, p], with b_m the sum of block m's outputs and p the partial sum of block
n's outputs before ℓ (absent at a block's first sub-layer). The number of blocks is what the paper
keeps fixed across depths (about 8), so `n_blocks` sets it: block_size = ⌈2d / n_blocks⌉ sub-layers
(12 at depth 48, 3 at 12); a fixed `block_size` instead would give 24 blocks at depth 48 with 4.

Initialisation (the paper's): w_ℓ = 0, so every α starts uniform — AttnRes does *not* start as the
Transformer (the uniform average replaces the sum). Extra parameters: 2C per sub-layer plus the
read-out, (2·2d + 2)·C = 148,992 at depth 48, width 768.

Not verifiable against the authors' code: none of it is in the stored index (the repositories named
after AttnRes there are third-party), so the node follows the paper's equations, its zero-initialised
queries and its ~8 blocks; details the paper leaves open (the norm's ε, the final read-out) are ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from denselab.models.gpt import Rotary


class AttnRes(nn.Module):
    NORM_GAINS = ("key_gains",)  # the RMSNorm_ℓ gains: never weight-decayed (GPT.mixer_norm_parameters)

    def __init__(self, depth: int, width: int, block_size: int | None = None, n_blocks: int | None = None):
        super().__init__()
        for name, value in (("block_size", block_size), ("n_blocks", n_blocks)):
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name}={value!r}: allowed null (full AttnRes) or integers >= 1")
        if block_size is not None and n_blocks is not None:
            raise ValueError(f"n_blocks={n_blocks!r}: allowed null when block_size is set (give one of the two)")
        if n_blocks is not None:
            block_size = -(-2 * depth // n_blocks)  # ⌈2d / n_blocks⌉ sub-layers per block
        self.depth, self.block_size = depth, block_size
        n_queries = 2 * depth + 1  # every sub-layer, and the read-out
        self.queries = nn.Parameter(torch.zeros(n_queries, width))  # w_ℓ
        self.key_gains = nn.Parameter(torch.ones(n_queries, width))  # the RMSNorm_ℓ gains

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.queries.zero_()
            self.key_gains.fill_(1.0)

    def attend(self, l: int, values: list[torch.Tensor], normed: list[torch.Tensor]) -> torch.Tensor:
        """h_ℓ = Σ_i softmax_i(w_ℓ · (g_ℓ ⊙ v̂_i)) v_i, with v̂_i = v_i / rms(v_i) computed once per source."""
        query = self.queries[l] * self.key_gains[l]  # w_ℓ · (g_ℓ ⊙ v̂) = (w_ℓ ⊙ g_ℓ) · v̂
        logits = torch.stack([v_hat @ query for v_hat in normed], dim=-1)  # (B, T, S)
        alpha = torch.softmax(logits.float(), dim=-1).to(values[0].dtype)
        h = alpha[..., 0:1] * values[0]
        for i in range(1, len(values)):
            h = torch.addcmul(h, alpha[..., i : i + 1], values[i])
        return h

    @staticmethod
    def _rms(v: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(v, v.shape[-1:])

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        branches = []  # f_1, f_2, ..., f_{2d}
        for block in blocks:
            branches += [lambda h, b=block: b.attn_branch(h, rotary), block.mlp_branch]
        done, done_normed = [x0], [self._rms(x0)]  # v_0 and completed sources (outputs, or block sums)
        partial = None  # Block AttnRes: the running sum of the current block's outputs
        for l, f in enumerate(branches):
            if partial is None:
                h = self.attend(l, done, done_normed)
            else:
                h = self.attend(l, done + [partial], done_normed + [self._rms(partial)])
            v = f(h)
            if self.block_size is None:  # full AttnRes: every output is a source
                done.append(v)
                done_normed.append(self._rms(v))
            else:
                partial = v if partial is None else partial + v
                if (l + 1) % self.block_size == 0:  # block complete: its sum becomes a source
                    done.append(partial)
                    done_normed.append(self._rms(partial))
                    partial = None
        if partial is not None:
            done.append(partial)
            done_normed.append(self._rms(partial))
        return self.attend(len(branches), done, done_normed)
