"""ELC-BERT weighting (Charpentier & Samuel, 2023, "Not all layers are equally as important:
Every Layer Counts BERT") and the two variants of the paper's App. B.7, Fig. 15.

The DenseFormer paper compares against "ELC Bert", "ELC Bert + Skips" and "ELC Bert + Skips +
0-Init" without formulas. Our definitions, at block granularity, follow the ELC-BERT reference code
(ltgoslo/elc-bert, models/model_elc_bert_base.py and model_elc_bert_zero.py): each block reads a
softmax-weighted sum of all earlier outputs instead of a residual stream,

    o_0 = X_0
    h_i = Σ_{j=0..i-1} softmax(w_i)_j · o_j                       (w_i ∈ R^i, one logit per earlier output;
                                                                   h_1 = o_0, a softmax over one source)
    o_i = a + MLP(LN(a)),  a = Attn(LN(h_i))     without skips: ELC-BERT's layer keeps no skip around
                                                  attention (the weighted sum replaces it)
    o_i = B_i(h_i)                                with skips (`block_skips=True`): the standard
                                                  pre-LN block, both residual skips kept
    output o_d

Initialisation (`weight_init`): "last" puts logit 1 on the previous output and 0 elsewhere (ELC-BERT's
base model); "zero" sets all logits to 0, a uniform average (ELC-BERT's "zero" model, the
"0-Init" of Fig. 15). Neither is the identity: softmax never gives exactly (0, ..., 0, 1), so none of
the three starts as the Transformer. Variants:

    elc_bert                   block_skips=False, weight_init="last"
    elc_bert_skips             block_skips=True,  weight_init="last"
    elc_bert_skips_zero_init   block_skips=True,  weight_init="zero"

Extra parameters: Σ_{i=2..d} i = d(d+1)/2 - 1 (1,175 at depth 48; ELC-BERT's code also keeps w_1,
a single logit whose softmax is always 1 and whose gradient is therefore always 0).
"""

from __future__ import annotations

import torch
from torch import nn

from denselab.models.gpt import Rotary

WEIGHT_INITS = ("last", "zero")


class ELCBert(nn.Module):
    def __init__(self, depth: int, block_skips: bool = False, weight_init: str = "last"):
        super().__init__()
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init={weight_init!r}: allowed {', '.join(WEIGHT_INITS)}")
        self.depth, self.block_skips, self.weight_init = depth, block_skips, weight_init
        self.logits = nn.ParameterList(nn.Parameter(torch.zeros(i)) for i in range(2, depth + 1))  # w_2..w_d
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for w in self.logits:
                w.zero_()
                if self.weight_init == "last":
                    w[-1] = 1.0

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        outputs = [x0]  # o_0, o_1, ...
        for i, block in enumerate(blocks, start=1):
            h = x0 if i == 1 else self.weighted_sum(self.logits[i - 2], outputs)  # h_i
            if self.block_skips:
                o = block(h, rotary)
            else:
                a = block.attn_branch(h, rotary)
                o = a + block.mlp_branch(a)
            outputs.append(o)
        return outputs[-1]

    @staticmethod
    def weighted_sum(logits: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        weights = torch.softmax(logits, dim=0)
        h = weights[0] * outputs[0]
        for j in range(1, len(outputs)):
            h = torch.addcmul(h, weights[j], outputs[j])
        return h
