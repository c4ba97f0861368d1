"""Depth-Weighted Average (DWA): the one module of DenseFormer (Pagliardini et al., 2024).

Paper §3 (Method). With X_0 the embedded tokens and X_i = B_i(Y_{i-1}) the output of block i,

    Y_0 := X_0
    Y_i := DWA_i({X_0, ..., X_i}) = Σ_{j=0..i} α_{i,j} · X_j                      (§3)

§3.2 (dilation k) keeps only the sources j ≡ i (mod k), and §3.3 (period p) only places a DWA
after every p-th block:

    Y_i := Σ_{j ∈ S_i} α_{i,j} · X_j    if p | i,      S_i = {j | 0 ≤ j ≤ i, j ≡ i (mod k)}
    Y_i := X_i                          otherwise.                                 (§3.3)

α is initialised to the identity (α_{i,i} = 1, all others 0), so an untrained DenseFormer computes
exactly what the Transformer with the same block weights computes (§3, "Initializing the DWA
modules"). Each DWA_i owns |S_i| = ⌊i/k⌋ + 1 scalars; at k = p = 1 that is i + 1, and the whole
model adds Σ_{i=1..d} (i + 1) = d(d+3)/2 parameters (§3.1).

This is the readable reference implementation: one fused multiply-add (`torch.addcmul`) per
source, no stacking or copying of the stored block outputs. Autograd saves only references to
tensors that the blocks keep for their own backward anyway, so the extra training memory is the
DWA outputs themselves.
"""

from __future__ import annotations

import torch
from torch import nn


class DWA(nn.Module):
    """The α of every DWA module of a kxp-DenseFormer, and the weighted average they define.

    Args:
        depth: number of transformer blocks d.
        dilation: k ≥ 1, DWA_i averages only the X_j with j ≡ i (mod k)  (§3.2).
        period: p ≥ 1, a DWA follows block i only when p | i             (§3.3).
    """

    def __init__(self, depth: int, dilation: int = 1, period: int = 1):
        super().__init__()
        if depth < 1 or dilation < 1 or period < 1:
            raise ValueError(f"DWA needs depth, dilation, period >= 1, got {depth}, {dilation}, {period}")
        self.depth, self.dilation, self.period = depth, dilation, period
        # Depths i that are followed by a DWA module (p | i), in order; alphas[n] belongs to dwa_depths[n].
        self.dwa_depths: list[int] = [i for i in range(1, depth + 1) if i % period == 0]
        self._index = {i: n for n, i in enumerate(self.dwa_depths)}
        # Block outputs X_j that some DWA_i (i ≥ j, i ≡ j mod k) reads; the others need not be kept.
        self._needed = frozenset(
            j for j in range(depth + 1) if any(i >= j and (i - j) % dilation == 0 for i in self.dwa_depths)
        )
        self.alphas = nn.ParameterList(
            nn.Parameter(self._identity_row(len(self.sources(i)))) for i in self.dwa_depths
        )

    @staticmethod
    def _identity_row(n_sources: int) -> torch.Tensor:
        row = torch.zeros(n_sources)
        row[-1] = 1.0  # the last source is X_i itself
        return row

    def reset_parameters(self) -> None:
        """Identity initialisation: α_{i,i} = 1, α_{i,j<i} = 0."""
        with torch.no_grad():
            for alpha in self.alphas:
                alpha.zero_()
                alpha[-1] = 1.0

    def sources(self, i: int) -> range:
        """S_i = {j | 0 ≤ j ≤ i, j ≡ i (mod k)}, ascending (so X_i comes last)."""
        return range(i % self.dilation, i + 1, self.dilation)

    def has_dwa(self, i: int) -> bool:
        return i in self._index

    def is_needed(self, j: int) -> bool:
        """Whether some DWA_i (i ≥ j) reads X_j, i.e. whether X_j must be kept for later."""
        return j in self._needed

    def alpha(self, i: int) -> torch.Tensor:
        """The weights α_{i,j} for j in S_i, shape (|S_i|,)."""
        return self.alphas[self._index[i]]

    def forward(self, outputs: list[torch.Tensor | None], i: int) -> torch.Tensor:
        """Y_i from the stored block outputs, for a depth i with a DWA (p | i; elsewhere Y_i = X_i).

        Args:
            outputs: outputs[j] = X_j, each (B, T, C), for j = 0..i (entries no DWA reads may be None).
            i: the block just computed (1 ≤ i ≤ depth, p | i).
        Returns:
            Y_i, shape (B, T, C).
        """
        alpha = self.alpha(i)  # (|S_i|,)
        src = self.sources(i)
        y = alpha[0] * outputs[src[0]]  # (B, T, C)
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
        return f"depth={self.depth}, dilation={self.dilation}, period={self.period}, alphas={n}"


def num_dwa_parameters(depth: int, dilation: int = 1, period: int = 1) -> int:
    """Σ_{i: p | i} (⌊i/k⌋ + 1); d(d+3)/2 for a 1x1-DenseFormer (paper §3.1)."""
    return sum(i // dilation + 1 for i in range(period, depth + 1, period))
