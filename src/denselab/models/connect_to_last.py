"""Connect-to-Last: a single DWA after the last block (paper Table 3 and Table 7, "Connect to Last").

Paper §5: "only having a single DWA in the architecture which is placed after the last layer,
i.e. connecting every block to the last block". The blocks run as in the Transformer and

    X_i = B_i(X_{i-1}),      output = Σ_{j=0..d} α_j · X_j,

with α initialised to the identity (α_d = 1, others 0), so the untrained model is the Transformer.
Extra parameters: d + 1 (49 at depth 48). The official code (epfml/DenseFormer,
models/connect_to_last.py) initialises the other weights to 1e-4 instead of 0; we keep the exact
identity, the paper's stated initialisation for DWA weights.
"""

from __future__ import annotations

from denselab.models.dwa import DWA


class ConnectToLast(DWA):
    """One DWA, after block d, over X_0..X_d."""

    def __init__(self, depth: int, implementation: str = "auto"):
        super().__init__(depth, implementation=implementation)

    def _dwa_depths(self) -> list[int]:
        return [self.depth]

    def sources(self, i: int) -> range:
        return range(0, i + 1)

    def extra_repr(self) -> str:
        impl = "fast" if self.uses_fast_path else "reference"
        return f"depth={self.depth}, alphas={self.depth + 1}, {impl}"
