"""Depth-Weighted Average (DWA): the one module of DenseFormer (Pagliardini et al., 2024).

Paper §3 (Method). With X_0 the embedded tokens and X_i = B_i(Y_{i-1}) the output of block i,

    Y_0 := X_0
    Y_i := DWA_i({X_0, ..., X_i}) = Σ_{j=0..i} α_{i,j} · X_j                      (§3)

§3.2 (dilation k) keeps only the sources j ≡ i (mod k), and §3.3 (period p) only places a DWA
after every p-th block:

    Y_i := Σ_{j ∈ S_i} α_{i,j} · X_j    if p | i,      S_i = {j | 0 ≤ j ≤ i, j ≡ i (mod k)}
    Y_i := X_i                          otherwise.                                 (§3.3)

    DenseFormer(X) := Y_d

α is initialised to the identity (α_{i,i} = 1, all others 0), so an untrained DenseFormer computes
exactly what the Transformer with the same block weights computes (§3, "Initializing the DWA
modules"). Each DWA_i owns |S_i| = ⌊i/k⌋ + 1 scalars; at k = p = 1 that is i + 1, and the whole
model adds Σ_{i=1..d} (i + 1) = d(d+3)/2 parameters (§3.1).

`semantics="official"` reproduces the official experiments code (epfml/DenseFormer,
experiments/models/denseformer.py), which differs from the formula when p > 1: it runs p blocks in a
row, keeps only the outputs at DWA points (X_0, X_p, X_2p, ...) and applies the dilation to the
DWA-step index, i.e.  S_i = {j ≤ i | j ≡ i (mod k·p)}  for p | i. At p = 1 both are the same.

This is the readable reference implementation: one fused multiply-add (`torch.addcmul`) per
source over references to the stored block outputs (no stacking or copying), keeping only the
outputs some later DWA reads. Autograd saves only tensors the blocks keep for their own backward
anyway, so the extra training memory is the DWA outputs themselves.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from denselab.models.gpt import Rotary

log = logging.getLogger(__name__)

SEMANTICS = ("paper", "official")


class DWA(nn.Module):
    """The DenseFormer mixer: the α of every DWA module and the depth recursion they define.

    Args:
        depth: number of transformer blocks d.
        dilation: k ≥ 1, DWA_i averages only the X_j with j ≡ i (mod k)  (§3.2).
        period: p ≥ 1, a DWA follows block i only when p | i             (§3.3).
        semantics: "paper" (the formula above) or "official" (the official code's, see module doc).
    """

    def __init__(self, depth: int, dilation: int = 1, period: int = 1, semantics: str = "paper"):
        super().__init__()
        if depth < 1 or dilation < 1 or period < 1:
            raise ValueError(f"DWA needs depth, dilation, period >= 1, got {depth}, {dilation}, {period}")
        if semantics not in SEMANTICS:
            raise ValueError(f"semantics={semantics!r}: allowed {', '.join(SEMANTICS)}")
        self.depth, self.dilation, self.period, self.semantics = depth, dilation, period, semantics
        # Depths i that are followed by a DWA module, in order; alphas[n] belongs to dwa_depths[n].
        self.dwa_depths: list[int] = self._dwa_depths()
        if not self.dwa_depths:  # e.g. the paper's 4x20 pattern on a model scaled down to 12 blocks
            log.warning("DWA: period %d exceeds depth %d, so no DWA module is placed (a Transformer)", period, depth)
        self._index = {i: n for n, i in enumerate(self.dwa_depths)}
        # Block outputs X_j that some DWA reads; the others need not be kept.
        self._needed = frozenset(j for i in self.dwa_depths for j in self.sources(i))
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(len(self.sources(i)))) for i in self.dwa_depths)
        self.reset_parameters()

    # -- the sparsity pattern (subclasses change these two) ---------------------------------------
    def _dwa_depths(self) -> list[int]:
        return [i for i in range(1, self.depth + 1) if i % self.period == 0]

    def sources(self, i: int) -> range:
        """S_i, ascending, so that X_i itself comes last."""
        step = self.dilation * (self.period if self.semantics == "official" else 1)
        return range(i % step, i + 1, step)

    # ---------------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Identity initialisation: α_{i,i} = 1, α_{i,j<i} = 0."""
        with torch.no_grad():
            for alpha in self.alphas:
                alpha.zero_()
                alpha[-1] = 1.0

    def has_dwa(self, i: int) -> bool:
        return i in self._index

    def is_needed(self, j: int) -> bool:
        """Whether some DWA reads X_j, i.e. whether X_j must be kept for later."""
        return j in self._needed

    def alpha(self, i: int) -> torch.Tensor:
        """The weights α_{i,j} for j in S_i, shape (|S_i|,)."""
        return self.alphas[self._index[i]]

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        """Y_d for embedded tokens X_0 (B, T, C)."""
        outputs: list[torch.Tensor | None] = [x0 if 0 in self._needed else None]  # X_0, X_1, ...
        y = x0  # Y_0
        for i, block in enumerate(blocks, start=1):
            x = block(y, rotary)  # X_i = B_i(Y_{i-1})
            outputs.append(x if i in self._needed else None)
            y = self.average(outputs, i) if self.has_dwa(i) else x  # Y_i
        return y

    def average(self, outputs: list[torch.Tensor | None], i: int) -> torch.Tensor:
        """DWA_i: Σ_{j ∈ S_i} α_{i,j} X_j, from outputs[j] = X_j (B, T, C)."""
        alpha, src = self.alpha(i), self.sources(i)
        y = alpha[0] * outputs[src[0]]
        for n in range(1, len(src)):
            y = torch.addcmul(y, alpha[n], outputs[src[n]])  # y + α_{i,j} · X_j, one fused kernel
        return y

    def alpha_matrix(self) -> torch.Tensor:
        """All α as a dense (depth + 1) × (depth + 1) matrix, row i = DWA_i over X_0..X_depth.

        Row 0 is Y_0 = X_0; a depth without DWA gets the identity row. For plots and logging.
        """
        m = torch.eye(self.depth + 1)
        for i in self.dwa_depths:
            m[i].zero_()
            m[i, list(self.sources(i))] = self.alpha(i).detach().float().cpu()
        return m

    def extra_repr(self) -> str:
        n = sum(a.numel() for a in self.alphas)
        return f"depth={self.depth}, dilation={self.dilation}, period={self.period}, {self.semantics}, alphas={n}"


def num_dwa_parameters(depth: int, dilation: int = 1, period: int = 1) -> int:
    """Σ_{i: p | i} (⌊i/k⌋ + 1); d(d+3)/2 for a 1x1-DenseFormer (paper §3.1)."""
    return sum(i // dilation + 1 for i in range(period, depth + 1, period))
