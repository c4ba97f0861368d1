"""Depth-Weighted Average (DWA): the one module of DenseFormer (Pagliardini et al., 2024).

Paper §3, with X_0 the embedded tokens and X_i the output of block B_i:

    X_0 := Embedding(X)
    Y_0 := X_0
    ∀i = 1, ..., d,  X_i := B_i(Y_{i-1})
    ∀i = 1, ..., d,  Y_i := DWA_i({X_0, ..., X_i}) = Σ_{j=0..i} α_{i,j} · X_j
    DenseFormer(X) := Y_d

§3.2, dilation k: "DWA_i is only computing a weighted average over {X_j | j ≤ i, j ≡ i (mod k)}".
§3.3, period p: a kxp-DenseFormer places a DWA only after every p-th block,

    ∀i = 1, ..., d,  Y_i := DWA_i^dilated({X_j | j ≤ i, j ≡ i (mod k)})   if p | i
                     Y_i := X_i                                           if p ∤ i

so with S_i = {j | 0 ≤ j ≤ i, j ≡ i (mod k)} the sources of DWA_i,

    Y_i = Σ_{j ∈ S_i} α_{i,j} · X_j    (p | i).

α is initialised to the identity (α_{i,i} = 1, all others 0), so an untrained DenseFormer computes
exactly what the Transformer with the same block weights computes (§3, "Initializing the DWA
modules"). Each DWA_i owns |S_i| = ⌊i/k⌋ + 1 scalars; at k = p = 1 that is i + 1, and the whole
model adds Σ_{i=1..d} (i + 1) = d(d+3)/2 parameters (§3.1, `num_dwa_parameters`).

`semantics="official"` reproduces the official experiments code (epfml/DenseFormer,
experiments/models/denseformer.py), which differs from the formula when p > 1: it runs p blocks in a
row, keeps only the outputs at DWA points (X_0, X_p, X_2p, ...) and applies the dilation to the
DWA-step index, i.e.  S_i = {j ≤ i | j ≡ i (mod k·p)}  for p | i. At p = 1 both are the same.

Two implementations of the same sums (`implementation=`):

* "reference" — `reference_forward` below: one fused multiply-add (`torch.addcmul`) per source over
  references to the stored block outputs; autograd does the backward.
* "fast" — the same sums as matrix products over contiguous buffers, with a hand-written backward
  (denselab/models/dwa_fast.py). It serves every pattern whose DWAs read *prefixes* of the kept
  outputs they share (kxp in both semantics, connect_to_last); others (last_k) run the reference.
* "auto" (the default) runs the fast scheme where it pays: when a kept output is read by ≥ 3 DWAs on
  average (`Plan.pays_off`), and the reference elsewhere. Under `torch.compile` the reference runs
  whatever `implementation` says: it traces into one graph and Inductor fuses the sums itself.

Both are exact (tests/test_dwa.py, tests/test_dwa_fast.py compare them with the formula written out
naively, values and gradients) and both keep, for the backward, nothing but the block outputs some
DWA reads: one (B, T, C) tensor per DWA step beyond what the Transformer keeps.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from denselab.models.dwa_fast import FastScheme
from denselab.models.gpt import Rotary, check_positive_int

log = logging.getLogger(__name__)

SEMANTICS = ("paper", "official")
IMPLEMENTATIONS = ("auto", "fast", "reference")


class DWA(nn.Module):
    """The DenseFormer mixer: the α of every DWA module and the depth recursion they define.

    Args:
        depth: number of transformer blocks d.
        dilation: k ≥ 1, DWA_i averages only the X_j with j ≡ i (mod k)  (§3.2).
        period: p ≥ 1, a DWA follows block i only when p | i             (§3.3).
        semantics: "paper" (the formula above) or "official" (the official code's, see module doc).
        implementation: "auto" (default), "fast" or "reference" (see module doc); same values, same α.
    """

    def __init__(self, depth: int, dilation: int = 1, period: int = 1, semantics: str = "paper",
                 implementation: str = "auto"):
        super().__init__()
        for name, value in (("depth", depth), ("dilation", dilation), ("period", period)):
            check_positive_int(name, value)
        if semantics not in SEMANTICS:
            raise ValueError(f"semantics={semantics!r}: allowed {', '.join(SEMANTICS)}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation={implementation!r}: allowed {', '.join(IMPLEMENTATIONS)}")
        self.depth, self.dilation, self.period, self.semantics = depth, dilation, period, semantics
        self.implementation = implementation
        # Depths i that are followed by a DWA module, in order; alphas[n] belongs to dwa_depths[n].
        self.dwa_depths: list[int] = self._dwa_depths()
        if not self.dwa_depths:  # e.g. the paper's 4x20 pattern on a model scaled down to 12 blocks
            log.warning("DWA: period %d exceeds depth %d, so no DWA module is placed (a Transformer)", period, depth)
        self._index = {i: n for n, i in enumerate(self.dwa_depths)}
        # Block outputs X_j that some DWA reads; the others need not be kept.
        self._needed = frozenset(j for i in self.dwa_depths for j in self.sources(i))
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(len(self.sources(i)))) for i in self.dwa_depths)
        # The fast scheme for this pattern, or None when the pattern does not fit it.
        self.fast: FastScheme | None = FastScheme.build(depth, self.dwa_depths, self.sources)
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

    @property
    def uses_fast_path(self) -> bool:
        if self.fast is None or self.implementation == "reference":
            return False
        return self.implementation == "fast" or self.fast.plan.pays_off

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        """Y_d for embedded tokens X_0 (B, T, C)."""
        if not torch.compiler.is_compiling() and self.uses_fast_path:
            # Inside torch.compile the readable loop traces into one graph; the fast scheme's
            # autograd.Function and in-place buffer writes would cut the graph at every DWA step.
            return self.fast(list(self.alphas), x0, blocks, rotary)
        return self.reference_forward(x0, blocks, rotary)

    def reference_forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        """The readable implementation: Y_i by `average`, autograd for the backward."""
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
        impl = "fast" if self.uses_fast_path else "reference"
        return (f"depth={self.depth}, dilation={self.dilation}, period={self.period}, {self.semantics}, "
                f"alphas={n}, {impl}")


def num_dwa_parameters(depth: int, dilation: int = 1, period: int = 1) -> int:
    """Σ_{i: p | i} (⌊i/k⌋ + 1); d(d+3)/2 for a 1x1-DenseFormer (paper §3.1)."""
    return sum(i // dilation + 1 for i in range(period, depth + 1, period))
