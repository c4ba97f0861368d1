"""Last-K DWA: a sparsity pattern of the paper's Table 3 ("Last K", K = 4) and Table 7.

Paper §5, "Other sparsity patterns during training": DWA "can only access the output of the last K
blocks as well as the input embedding vectors". After every block i,

    Y_i = α_{i,0} · X_0 + Σ_{j = max(1, i-K+1)..i} α_{i,j} · X_j,      X_i = B_i(Y_{i-1}),

i.e. S_i = {0} ∪ {i-K+1, ..., i}: the K most recent block outputs (X_i included) plus the
embedding. α starts at the identity (α_{i,i} = 1, others 0), so the untrained model is the
Transformer. Extra parameters: Σ_i (min(i, K) + 1) = 234 at depth 48, K = 4 (a sparsity of 81 %
against the 1,224 α of the 1x1-DenseFormer; the paper prints 84 %, which would match 4 sources per
DWA instead of K + 1 = 5 — the paper gives no formula, we follow its wording).
"""

from __future__ import annotations

from denselab.models.dwa import DWA
from denselab.models.gpt import check_positive_int


class LastK(DWA):
    """DWA after every block over {X_0} ∪ {X_{i-K+1}, ..., X_i}."""

    def __init__(self, depth: int, k: int = 4, implementation: str = "auto"):
        check_positive_int("k", k)
        self.k = k
        super().__init__(depth, implementation=implementation)

    def sources(self, i: int) -> list[int]:
        return [0, *range(max(1, i - self.k + 1), i + 1)]

    def extra_repr(self) -> str:
        impl = "fast" if self.uses_fast_path else "reference"
        return f"depth={self.depth}, k={self.k}, alphas={sum(a.numel() for a in self.alphas)}, {impl}"
