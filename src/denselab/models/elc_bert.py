"""ELC-BERT weighting (Charpentier & Samuel, 2023, "Not all layers are equally as important:
Every Layer Counts BERT") and the variants of the paper's App. B.7, Fig. 15.

Each block reads a softmax-weighted sum of all earlier outputs instead of a residual stream:

    o_0 = X_0                      (`layer` ltg, ltg_zero: LN(X_0), a LayerNorm without gain or bias)
    h_i = Σ_{j=0..i-1} softmax(w_i)_j · o_j       (w_i ∈ R^i, one logit per earlier output;
                                                  h_1 = o_0, a softmax over one source)
    output o_d

and `layer` says what block i makes of h_i (B_i's own ln_1, attention, ln_2 and MLP throughout):

    ltg       a = PostLN_i(Attn(LN(h_i))),  o_i = a + MLP(LN(a))        ELC-BERT's layer: no skip
              around attention, whose output is LayerNorm-ed (gain and bias, PostLN_i owned by the mixer)
    ltg_zero  a = PostLN_i(Attn(LN(h_i))),  o_i = a + MLP(LN(h_i + a))  the layer of ELC-BERT's "zero"
              model: h_i also enters the MLP, the output still has no h_i
    pre_ln    o_i = B_i(h_i) = h' + MLP(LN(h')),  h' = h_i + Attn(LN(h_i))   the standard pre-LN block,
              both residual skips kept; no extra norm

and `weight_init` the logits: "last" puts 1 on the previous output and 0 elsewhere, "zero" sets all to 0
(a uniform average). None of these is the identity: softmax never gives exactly (0, ..., 0, 1), so no
variant starts as the Transformer. Variants (conf/model/):

    elc_bert                   layer=ltg,      weight_init=last    ELC-BERT's base model
    elc_bert_skips             layer=pre_ln,   weight_init=last    "ELC Bert + Skips"
    elc_bert_skips_zero_init   layer=ltg_zero, weight_init=zero    "ELC Bert + Skips + 0-Init": ELC-BERT's
                                                                   zero model (its skip into the MLP, zero logits)

The DenseFormer paper names the three curves of Fig. 15 without formulas. elc_bert and
elc_bert_skips_zero_init are the reference's two models; elc_bert_skips is our reading of "+ Skips"
(the weighting over standard blocks), so its step to "+ 0-Init" changes the layer as well as the
logits. `model=elc_bert_skips model.net.mixer.weight_init=zero` gives standard blocks with uniform
logits (this node's "0-Init" before it followed the reference).

Why the norms matter: without PostLN and LN(X_0), GPT-2's init (embedding std 0.02, output
projections 0.02/√(2d)) leaves every o_i small and width-dependent — std ~1e-3 at scale=smoke (width
32), ~1e-2 at mini (128), ~4e-2 at 768 — against X_0's 0.02, so at the CPU scales X_0 outweighs
every block output in the mix; with them every o_i is of order 1 (std 0.93 to 1.00 at all three), as
in the reference.
Both norms use the reference's ε = 1e-7 (configs/base.json): with PyTorch's default 1e-5 the
normalised attention output's std is only 0.31 at smoke, 0.56 at mini and 0.87 at width 768, its
variance at init being of the order of ε.

Reference (ltgoslo/elc-bert at 1b20bdb): models/model_elc_bert_base.py l. 107-123 (EncoderLayer:
logits zeros with temp[-1] = 1, the softmax-weighted sum of all earlier outputs, then
`x = self.attention(x)` and `x = x + self.mlp(x)`), l. 205-210 (Attention's pre_layer_norm without
affine and post_layer_norm with affine, applied in Attention.forward before the projections and after
out_proj), Embedding (word_layer_norm, elementwise_affine=False, applied to the word embedding);
models/model_elc_bert_zero.py l. 107-122 (logits all zero; `attention = self.attention(x)`,
`x = attention + self.mlp(x + attention)`). Our X_0 normalisation has no gain, as the reference's.

Extra parameters: Σ_{i=2..d} i = d(d+1)/2 - 1 logits (1,175 at depth 48; ELC-BERT's code also keeps
w_1, a single logit whose softmax is always 1 and whose gradient is therefore always 0), plus 2C per
block for PostLN with layer ltg or ltg_zero (73,728 at depth 48, width 768).

Why the ltg layers learn slower here than in the reference: ELC-BERT is a masked LM, where the token
being predicted is hidden anyway; in this causal LM the next-token prediction needs the current token,
and with no skip around attention it reaches o_i only through attention, which at init averages the
values of the whole prefix (the current token weighs 1/t). Every layer must first learn to attend to
its own position, so expect elc_bert and elc_bert_skips_zero_init to trail the Transformer early in
training, unlike the pre_ln wiring (the league reports this); the DenseFormer paper's Fig. 15, whose
wiring is not published, shows ELC-BERT ahead early on.

Not verifiable against the reference: ELC-BERT is a bidirectional masked LM on LTG-BERT blocks
(relative-position attention, GeGLU MLP with an inner LayerNorm, per-layer init scaling); here the
wiring and the norms are applied to this suite's causal GPT blocks, so only the depth mixing and
the norm placement follow the reference, not the blocks themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from denselab.models.gpt import Rotary

WEIGHT_INITS = ("last", "zero")
LAYERS = ("ltg", "ltg_zero", "pre_ln")
EPS = 1e-7  # configs/base.json "layer_norm_eps"; 1e-5 is of the order of the attention output's variance at init


class ELCBert(nn.Module):
    def __init__(self, depth: int, width: int, layer: str = "ltg", weight_init: str = "last"):
        super().__init__()
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init={weight_init!r}: allowed {', '.join(WEIGHT_INITS)}")
        if layer not in LAYERS:
            raise ValueError(f"layer={layer!r}: allowed {', '.join(LAYERS)}")
        self.depth, self.layer, self.weight_init = depth, layer, weight_init
        self.logits = nn.ParameterList(nn.Parameter(torch.zeros(i)) for i in range(2, depth + 1))  # w_2..w_d
        n_post = depth if layer != "pre_ln" else 0
        self.post_norms = nn.ModuleList(nn.LayerNorm(width, eps=EPS) for _ in range(n_post))  # PostLN_i, gain and bias
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for w in self.logits:
                w.zero_()
                if self.weight_init == "last":
                    w[-1] = 1.0
        for norm in self.post_norms:
            norm.reset_parameters()

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        return self.layer_outputs(x0, blocks, rotary)[-1]

    def layer_outputs(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> list[torch.Tensor]:
        """[o_0, o_1, ..., o_d]."""
        if self.layer != "pre_ln":
            x0 = F.layer_norm(x0, x0.shape[-1:], eps=EPS)  # LTG-BERT's word_layer_norm, no affine
        outputs = [x0]  # o_0, o_1, ...
        for i, block in enumerate(blocks, start=1):
            h = x0 if i == 1 else self.weighted_sum(self.logits[i - 2], outputs)  # h_i
            if self.layer == "pre_ln":
                o = block(h, rotary)
            else:
                a = self.post_norms[i - 1](block.attn_branch(h, rotary))
                o = a + block.mlp_branch(a if self.layer == "ltg" else h + a)
            outputs.append(o)
        return outputs

    @staticmethod
    def weighted_sum(logits: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        weights = torch.softmax(logits, dim=0)
        h = weights[0] * outputs[0]
        for j in range(1, len(outputs)):
            h = torch.addcmul(h, weights[j], outputs[j])
        return h
