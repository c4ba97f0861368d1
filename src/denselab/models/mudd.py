"""MUDD connections: MUDDFormer (Xiao et al., 2025, arXiv 2502.12170), multiway dynamic dense.

Like DWA, every block reads weighted sums of all earlier outputs X_0..X_i, but (1) the weights are
generated per token from the current output X_i, and (2) each block input is decoupled into four
streams with their own weights — query, key, value and residual (c ∈ {q, k, v, r}):

    A_i = a_i + W2_i · GELU(W1_i · RMSNorm(X_i))       per token, shape (4, i + 1)
    X_i^c = Σ_{j=0..i} A_i[c, j] · X_j                  the four inputs of block i + 1
    h = X_i^r + Attn(q from LN_q(X_i^q), k from LN_k(X_i^k), v from LN_v(X_i^v))
    X_{i+1} = h + MLP(LN(h))
    output = Σ_j A_d[j] · X_j                           (a single stream after the last block)

with RMSNorm without gain, W1_i ∈ R^{C×H_i}, W2_i ∈ R^{H_i×S_i(i+1)}, the static weights
a_i ∈ R^{S_i×(i+1)} (S_i = 4 streams, 1 after the last block), and the first block reading X_0 on all
four streams. As in the reference, and configurable in conf/model/mudd.yaml (defaults as released):

    sepln: true        separate pre-norms for the three attention inputs of blocks 2..d: LN_q is the
                       block's own ln_1, LN_k and LN_v are two more LayerNorms (gain 1) that the mixer
                       owns; block 1 (one input stream) keeps its single norm. false: ln_1 for all three.
    round64: true      H_i = (H // 64 + 1) · 64 with H = S_i(i + 1): the reference's rounding, a multiple
                       of 64 strictly above H (so H = 64 gives 128, not 64).
    expand_last: true  H = 4 · (d + 1) for the last block's single stream (the hidden size it would
                       have with four streams), before the rounding.

Reference (Caiyun-AI/MUDDFormer; read in the stored copy KirinZheng/github_code_collected at 9cb2630,
MUDDFormer-main/pytorch/muddformer/): modeling_muddformer.py l. 54-77 (MultiwayDynamicDenseBlock: the
norm without scale, l = lidx + 2 sources, hid_dim = out_dim = l·C, `expand_last` ×4 at l. 62,
`round64` at l. 63, GELU, w1/w2 bias-free), l. 95 and 181-187 (static `dense_bs` added to the
dynamic weights, the streams as weighted sums of all outputs), l. 189-190 (stream 0 after the last
block), l. 207-212 and 219-224 (`sepln`: three RMSNorms for blocks lidx > 0, one for block 0);
config.json: "sepln": true, "round64": true, "expand_last": true, "dense_type": "qkvr" (also
muddpythia/config_1p4b.json and config_2p8b.json). The PyTorch code is for inference (its `dense_bs`
are torch.randn placeholders); the training initialisation is the JAX decoder layer (MaxText
layers/llama2.py of the authors' fork, stored as hilbertmeng/maxtext at 04738eb): W1
(`dynamic_dense_conn1`) nd_dense_init(1.0, "fan_in", "normal") at l. 106-113, i.e. std 1/√C;
W2 (`dynamic_dense_conn2`) constant 0 at l. 116-121; the static bias (`dense_proj2.bias`) 0 on the
earlier outputs and `dense2_bias_init_value` on the current one at l. 122-125; the q/k/v norms
`pre_self_attention_layer_norm_{q,k,v}` at l. 145-157.

Initialisation, "the plain residual network": a_i one-hot on j = i for every stream (the weighted
sum is then X_i, as in the authors' MUDD layer with `dense2_bias_init_value` 1.0 when the streams are
pure weighted sums), W2 = 0 (so the dynamic part is zero), W1 ~ N(0, 1/C) (fan-in normal), the
LN_k, LN_v gains 1. Every stream then equals X_i, LN_q = LN_k = LN_v on it, and the untrained model
is the Transformer (up to float rounding: q, k and v are projected separately).

Extra parameters at depth d, width C: Σ_i [C·H_i + H_i·S_i(i+1) + S_i(i+1)] plus 2C per block
2..d with sepln (5,860,493 at depth 48, width 768; 4,262,750 with the three switches off).

Not verifiable against the reference: the stored index holds no copy of Caiyun-AI/MUDDFormer's jax/
training code, so the JAX lines above come from the authors' MaxText fork, whose static-weight init
varies between copies (`dense2_bias_init_value` 0.0 in the version cited, whose decoder composition
was not read; 1.0 in other copies unless the layer output is added to the mixed streams explicitly;
ours is the 1.0 form, which with pure weighted sums is the residual network at init); and the
released models' backbone (RMSNorm, SwiGLU with a layer-scaled width, QK-norm) is not adopted: the
node wires this suite's GPT blocks, whose norms are LayerNorms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from denselab.models.gpt import Rotary

STREAMS = 4  # query, key, value, residual
LAST_EXPANSION = 4  # modeling_muddformer.py l. 62: `hid_dim *= 4` for the last block


def hidden_size(n_sources: int, n_streams: int, last: bool, expand_last: bool = True, round64: bool = True) -> int:
    """H_i of the dynamic-weight MLP, as the reference computes it (modeling_muddformer.py l. 60-63)."""
    hidden = n_streams * n_sources
    if last and expand_last:
        hidden *= LAST_EXPANSION
    if round64:
        hidden = (hidden // 64 + 1) * 64
    return hidden


class DynamicDenseWeights(nn.Module):
    """A_i for the outputs X_0..X_i: static a_i plus a per-token MLP of RMSNorm(X_i)."""

    def __init__(self, width: int, n_sources: int, n_streams: int, hidden: int | None = None):
        super().__init__()
        self.n_sources, self.n_streams = n_sources, n_streams
        hidden = hidden if hidden is not None else n_streams * n_sources
        self.w1 = nn.Parameter(torch.zeros(width, hidden))
        self.w2 = nn.Parameter(torch.zeros(hidden, n_streams * n_sources))
        self.static = nn.Parameter(torch.zeros(n_streams, n_sources))
        self.reset_parameters()

    @property
    def hidden(self) -> int:
        return self.w1.shape[1]

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.w1, std=1.0 / math.sqrt(self.w1.shape[0]))  # fan-in normal, fan_in = C
            self.w2.zero_()
            self.static.zero_()
            self.static[:, -1] = 1.0  # every stream starts as X_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X_i (B, T, C) → A_i (B, T, n_streams, n_sources)."""
        dynamic = F.gelu(F.rms_norm(x, x.shape[-1:]) @ self.w1) @ self.w2  # (B, T, S·L)
        return self.static + dynamic.unflatten(-1, (self.n_streams, self.n_sources))


class MUDD(nn.Module):
    def __init__(self, depth: int, width: int, sepln: bool = True, round64: bool = True, expand_last: bool = True):
        super().__init__()
        for name, value in (("sepln", sepln), ("round64", round64), ("expand_last", expand_last)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r}: allowed true or false")
        self.depth, self.sepln, self.round64, self.expand_last = depth, sepln, round64, expand_last
        weights = []
        for i in range(1, depth + 1):  # the weights after block i, over X_0..X_i
            last = i == depth
            streams = 1 if last else STREAMS
            weights.append(DynamicDenseWeights(
                width, n_sources=i + 1, n_streams=streams,
                hidden=hidden_size(i + 1, streams, last, expand_last=expand_last, round64=round64)))
        self.weights = nn.ModuleList(weights)
        # LN_k and LN_v of blocks 2..d (LN_q is the block's ln_1); the same kind as the blocks' norms
        n_sep = depth - 1 if sepln else 0
        self.k_norms = nn.ModuleList(nn.LayerNorm(width, bias=False) for _ in range(n_sep))
        self.v_norms = nn.ModuleList(nn.LayerNorm(width, bias=False) for _ in range(n_sep))

    def reset_parameters(self) -> None:
        for w in self.weights:
            w.reset_parameters()
        for norm in (*self.k_norms, *self.v_norms):
            norm.reset_parameters()

    def attention_norms(self, index: int, block: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
        """(LN_q, LN_k, LN_v) of block `index` (0-based)."""
        if index == 0 or not self.sepln:
            return block.ln_1, block.ln_1, block.ln_1
        return block.ln_1, self.k_norms[index - 1], self.v_norms[index - 1]

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        outputs = [x0]  # X_0, X_1, ...
        streams = [x0] * STREAMS  # inputs of block 1: (q, k, v, r)
        for index, (block, dense) in enumerate(zip(blocks, self.weights)):
            x_q, x_k, x_v, x_r = streams
            ln_q, ln_k, ln_v = self.attention_norms(index, block)
            h = x_r + block.attn(ln_q(x_q), rotary, x_k=ln_k(x_k), x_v=ln_v(x_v))
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
