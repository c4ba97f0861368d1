"""GPT-2-style decoder shared by every architecture of the suite (paper §3 "Setup & Notations", §4, App. A).

    X_0 := Embedding(x)
    B_i(h) := h' + MLP(LN(h')),  h' = h + Attn(LN(h))          (pre-LayerNorm block i)
    hidden := mixer(X_0, B_1..B_d)                              (how the blocks are wired over depth)
    logits := LN(hidden) · Eᵀ                                    (input and output embeddings tied)

The *mixer* is the architecture node: `Residual` chains the blocks (the Transformer,
X_i = B_i(X_{i-1})), `DWA` inserts depth-weighted averages (the DenseFormer), and the other
nodes in this package rewire depth in their own ways. Blocks expose their two residual branches
(`attn_branch`, `mlp_branch`) so that nodes working at sub-layer granularity can reuse them.

As in the official experiments code (llm-baselines lineage): bias-free linears and LayerNorms,
rotary position encoding on queries and keys, causal `scaled_dot_product_attention`, GELU MLP with
4x expansion, init N(0, 0.02) with the residual output projections scaled by 1/sqrt(2·depth).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def check_positive_int(name: str, value) -> None:
    """Refuse `value` unless it is an integer >= 1, in the one-line `name=value: allowed ...` form that
    config validation reports under the config key (it builds the model on the meta device)."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name}={value!r}: allowed integers >= 1")


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

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate x of shape (B, n_heads, T, head_dim) holding positions start, ..., start + T - 1."""
        T = x.size(-2)
        if start + T > self.cos.size(0):
            raise ValueError(f"position {start + T - 1} is beyond max_seq_len={self.cos.size(0)}")
        cos, sin = self.cos[start: start + T].to(x.dtype), self.sin[start: start + T].to(x.dtype)  # (T, hd/2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys and values of the tokens an attention layer has seen, for incremental decoding.

    Preallocated (B, n_heads, max_len, head_dim); `append` writes the new tokens' keys and values
    after the `length` already there and returns views of all of them.
    """

    def __init__(self, batch: int, n_heads: int, head_dim: int, max_len: int, dtype: torch.dtype,
                 device: torch.device):
        self.k = torch.zeros(batch, n_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache holds {self.k.size(2)} positions, {end} needed")
        self.k[:, :, self.length: end] = k
        self.v[:, :, self.length: end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.c_attn = nn.Linear(width, 3 * width, bias=False)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(width, width, bias=False)  # residual output projection
        self.resid_dropout = nn.Dropout(dropout)
        self.kv_cache: KVCache | None = None  # set by `kv_caching` for incremental decoding only

    def forward(
        self,
        x: torch.Tensor,
        rotary: Rotary,
        x_k: torch.Tensor | None = None,
        x_v: torch.Tensor | None = None,
        value_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attention over x (B, T, C). Optional hooks used by some architecture nodes:
        separate key/value inputs `x_k`, `x_v` (MUDD), and `value_fn` applied to the values
        (B, nh, T, hd) before attending (value residual)."""
        B, T, C = x.shape
        if x_k is None:
            q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, T, C)
        else:  # the same projection matrices, applied to three different inputs
            w_q, w_k, w_v = self.c_attn.weight.split(C, dim=0)
            q, k, v = F.linear(x, w_q), F.linear(x_k, w_k), F.linear(x_v, w_v)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if value_fn is not None:
            v = value_fn(v)
        if self.kv_cache is None:  # training and full forward passes
            q, k = rotary(q), rotary(k)
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )  # (B, nh, T, hd)
        else:
            y = self._attend_cached(q, k, v, rotary)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _attend_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        """The new tokens (positions start..start+T-1) attend to every cached token and causally to
        each other; their keys and values join the cache."""
        start, T = self.kv_cache.length, q.size(2)
        q, k = rotary(q, start), rotary(k, start)
        k, v = self.kv_cache.append(k, v)  # (B, nh, start + T, hd)
        if T == 1:  # one new token: it sees everything
            return F.scaled_dot_product_attention(q, k, v)
        rows = torch.arange(start, start + T, device=q.device)[:, None]
        mask = torch.arange(start + T, device=q.device)[None, :] <= rows  # (T, start + T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


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

    def attn_branch(self, x: torch.Tensor, rotary: Rotary, **hooks) -> torch.Tensor:
        """Attn(LN(x)), the first residual branch."""
        return self.attn(self.ln_1(x), rotary, **hooks)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """MLP(LN(x)), the second residual branch."""
        return self.mlp(self.ln_2(x))

    def forward(self, x: torch.Tensor, rotary: Rotary, **hooks) -> torch.Tensor:
        x = x + self.attn_branch(x, rotary, **hooks)
        return x + self.mlp_branch(x)


class Residual(nn.Module):
    """The Transformer's wiring over depth (paper §3):  X_i := B_i(X_{i-1}),  output X_d.
    No parameters."""

    def __init__(self, depth: int | None = None):
        super().__init__()
        self.depth = depth

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        x = x0
        for block in blocks:
            x = block(x, rotary)
        return x


class GPT(nn.Module):
    """A decoder whose depth wiring is the architecture node `mixer` (default: the Transformer).

    Args:
        vocab_size: embedding rows, already padded (GPT-2: 50257 → 50304).
        depth, width, n_heads: d blocks of width C with C / n_heads dims per head.
        max_seq_len: longest sequence the rotary tables cover.
        dropout: on attention probabilities and residual branches, only while training.
        mixer: a module `mixer(x0, blocks, rotary) -> hidden` (see the other modules of this package).
            Every parameter it owns is a depth-mixing parameter (the optimiser's "mixing" group).
    """

    def __init__(
        self,
        vocab_size: int,
        depth: int,
        width: int,
        n_heads: int,
        max_seq_len: int,
        dropout: float = 0.0,
        mixer: nn.Module | None = None,
    ):
        super().__init__()
        if width % n_heads:
            raise ValueError(f"width={width} is not divisible by n_heads={n_heads}")
        mixer = mixer if mixer is not None else Residual(depth)
        if getattr(mixer, "depth", depth) not in (None, depth):
            raise ValueError(f"{type(mixer).__name__} built for depth {mixer.depth}, model has depth {depth}")
        self.depth, self.width, self.max_seq_len = depth, width, max_seq_len
        self.wte = nn.Embedding(vocab_size, width)
        self.drop = nn.Dropout(dropout)
        self.rotary = Rotary(width // n_heads, max_seq_len)
        self.blocks = nn.ModuleList(Block(width, n_heads, dropout) for _ in range(depth))
        self.mixer = mixer
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input/output embeddings
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) for linears and the embedding, 0.02/sqrt(2·depth) for residual projections,
        ones for LayerNorm gains; the mixer initialises its own parameters."""
        for name, p in self.named_parameters():
            if name.startswith("mixer."):
                continue
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.depth))
            elif p.dim() == 2:  # c_attn, c_fc, wte (= lm_head)
                nn.init.normal_(p, mean=0.0, std=0.02)
            else:  # LayerNorm gains
                nn.init.ones_(p)
        if hasattr(self.mixer, "reset_parameters"):
            self.mixer.reset_parameters()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) → logits (B, T, vocab_size)."""
        if idx.size(1) > self.max_seq_len:
            raise ValueError(f"sequence of length {idx.size(1)} exceeds max_seq_len={self.max_seq_len}")
        x0 = self.drop(self.wte(idx))  # X_0, (B, T, C)
        hidden = self.mixer(x0, self.blocks, self.rotary)  # (B, T, C)
        return self.lm_head(self.ln_f(hidden))

    @contextmanager
    def kv_caching(self, batch_size: int, max_len: int | None = None):
        """Incremental decoding: inside, every call `self(idx)` continues the sequences seen so far
        (positions go on, attention reads the cached keys and values), so feeding the prompt and then
        one token at a time gives the logits of the full forward pass. The mixer runs as usual on the
        new tokens only, which is exact for every node here: they mix depth per token."""
        p = next(self.parameters())
        caches = [KVCache(batch_size, b.attn.n_heads, self.width // b.attn.n_heads, max_len or self.max_seq_len,
                          p.dtype, p.device) for b in self.blocks]
        for block, cache in zip(self.blocks, caches):
            block.attn.kv_cache = cache
        try:
            yield caches
        finally:
            for block in self.blocks:
                block.attn.kv_cache = None

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Parameters by optimiser role: 'decay' (matrices of the linears), 'no_decay' (norms, the
        tied embedding) and 'mixing' (every parameter of the mixer: DWA α, gains, λ, MUDD and
        hyper-connection weights, ...)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"decay": [], "no_decay": [], "mixing": []}
        for name, p in self.named_parameters():  # the tied lm_head weight is listed once, as wte.weight
            if name.startswith("mixer."):
                groups["mixing"].append((name, p))
            elif p.dim() >= 2 and name != "wte.weight":
                groups["decay"].append((name, p))
            else:
                groups["no_decay"].append((name, p))
        return groups

    def mixer_norm_parameters(self) -> set[str]:
        """Names of the mixing parameters that are norm gains or biases: those of the LayerNorms a mixer
        owns (MUDD's LN_k/LN_v, ELC-BERT's PostLN) and the gains a mixer lists in `NORM_GAINS`
        (hyper-connections' and AttnRes's RMSNorm gains). The optimiser never decays them (optim.py), as every norm."""
        names = set()
        for module_name, module in self.mixer.named_modules():
            prefix = f"mixer.{module_name}." if module_name else "mixer."
            gains = getattr(module, "NORM_GAINS", ()) if not isinstance(module, (nn.LayerNorm, nn.RMSNorm)) else None
            for name, _ in module.named_parameters(recurse=False):
                if gains is None or name in gains:
                    names.add(prefix + name)
        return names
