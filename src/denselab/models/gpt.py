"""GPT-2-style decoder shared by every architecture of the suite (paper §3 "Setup & Notations", §4, App. A).

    X_0 := Embedding(x)
    X_i := B_i(Y_{i-1}),   B_i(h) = h' + MLP(LN(h')),  h' = h + Attn(LN(h))     (pre-LayerNorm block)
    Y_i := X_i                     for the Transformer,
    Y_i := DWA_i(X_0, ..., X_i)    for the DenseFormer (see `dwa.py`),
    logits := LN(Y_d) · Eᵀ          (input and output embeddings tied).

As in the official experiments code (llm-baselines lineage): bias-free linears and LayerNorms,
rotary position encoding on queries and keys, causal `scaled_dot_product_attention`, GELU MLP with
4x expansion, init N(0, 0.02) with the residual output projections scaled by 1/sqrt(2·depth).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from denselab.models.dwa import DWA


class Rotary(nn.Module):
    """Rotary position encoding (Su et al., 2021), half-split ("GPT-NeoX") layout.

    Cos/sin tables for `max_seq_len` positions are built once; they are buffers, not parameters.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (hd/2,)
        angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)  # (T_max, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x of shape (B, n_heads, T, head_dim)."""
        T = x.size(-2)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)  # (T, hd/2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.c_attn = nn.Linear(width, 3 * width, bias=False)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(width, width, bias=False)  # residual output projection
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.c_proj = nn.Linear(4 * width, width, bias=False)  # residual output projection
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block B_i: attention then MLP, each on a residual."""

    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.attn = CausalSelfAttention(width, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.mlp = MLP(width, dropout)

    def forward(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The Transformer (``dwa=None``) or the kxp-DenseFormer (``dwa=DWA(depth, k, p)``).

    Args:
        vocab_size: embedding rows, already padded (GPT-2: 50257 → 50304).
        depth, width, n_heads: d blocks of width C with C / n_heads dims per head.
        max_seq_len: longest sequence the rotary tables cover.
        dropout: on attention probabilities and residual branches, only while training.
        dwa: the depth-weighted averages placed after the blocks; None for the plain Transformer.
    """

    def __init__(
        self,
        vocab_size: int,
        depth: int,
        width: int,
        n_heads: int,
        max_seq_len: int,
        dropout: float = 0.0,
        dwa: DWA | None = None,
    ):
        super().__init__()
        if width % n_heads:
            raise ValueError(f"width={width} is not divisible by n_heads={n_heads}")
        if dwa is not None and dwa.depth != depth:
            raise ValueError(f"DWA built for depth {dwa.depth}, model has depth {depth}")
        self.depth, self.width, self.max_seq_len = depth, width, max_seq_len
        self.wte = nn.Embedding(vocab_size, width)
        self.drop = nn.Dropout(dropout)
        self.rotary = Rotary(width // n_heads, max_seq_len)
        self.blocks = nn.ModuleList(Block(width, n_heads, dropout) for _ in range(depth))
        self.dwa = dwa
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input/output embeddings
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) for linears and the embedding, 0.02/sqrt(2·depth) for residual projections."""
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.depth))
            elif p.dim() == 2:  # c_attn, c_fc, wte (= lm_head)
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.startswith(("blocks.", "ln_f.")):  # LayerNorm gains
                nn.init.ones_(p)
        if self.dwa is not None:
            self.dwa.reset_parameters()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) → logits (B, T, vocab_size)."""
        if idx.size(1) > self.max_seq_len:
            raise ValueError(f"sequence of length {idx.size(1)} exceeds max_seq_len={self.max_seq_len}")
        x = self.drop(self.wte(idx))  # X_0, (B, T, C)
        # References to the block outputs a later DWA reads (no copies); None where none does.
        outputs = [x if self.dwa.is_needed(0) else None] if self.dwa is not None else None
        for i, block in enumerate(self.blocks, start=1):
            x = block(x, self.rotary)  # X_i = B_i(Y_{i-1})
            if self.dwa is not None:
                outputs.append(x if self.dwa.is_needed(i) else None)
                if self.dwa.has_dwa(i):  # p | i
                    x = self.dwa(outputs, i)  # Y_i (else Y_i = X_i)
        return self.lm_head(self.ln_f(x))

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Parameters by optimiser role: 'decay' (matrices of the linears), 'no_decay' (norms, biases,
        the tied embedding) and 'dwa' (the depth-mixing weights α)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"decay": [], "no_decay": [], "dwa": []}
        for name, p in self.named_parameters():  # the tied lm_head weight is listed once, as wte.weight
            if name.startswith("dwa."):
                groups["dwa"].append((name, p))
            elif p.dim() >= 2 and name != "wte.weight":
                groups["decay"].append((name, p))
            else:
                groups["no_decay"].append((name, p))
        return groups
