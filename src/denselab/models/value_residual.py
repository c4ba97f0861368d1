"""Value residual learning: ResFormer (Zhou et al., 2024, arXiv 2410.17897).

Every layer's attention values are mixed with the first layer's values:

    V_1 = the values of block 1 (from its own input)
    V_n ← λ_{n,1} · V_1 + λ_{n,2} · V_n        for blocks n = 2..d, before attending,

while the residual stream is the Transformer's (X_i = B_i(X_{i-1})). ResFormer uses the constant
λ = (0.5, 0.5); the learnable variant ("Learnable-ResFormer") makes (λ_{n,1}, λ_{n,2}) parameters
of each block, initialised to `lambda_init` (default the same 0.5 / 0.5). Neither starts as the
Transformer (V_n is halved from the start). Extra parameters: 0 (constant) or 2(d-1) (94 at depth 48).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from denselab.models.gpt import Rotary


class ValueResidual(nn.Module):
    def __init__(self, depth: int, learnable: bool = False, lambda_init: tuple[float, float] = (0.5, 0.5)):
        super().__init__()
        self.depth, self.learnable = depth, learnable
        self.lambda_init = tuple(float(v) for v in lambda_init)
        lambdas = torch.tensor(self.lambda_init).repeat(max(depth - 1, 0), 1)  # (d-1, 2): blocks 2..d
        if learnable:
            self.lambdas = nn.Parameter(lambdas)
        else:
            self.register_buffer("lambdas", lambdas, persistent=False)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.lambdas.copy_(torch.tensor(self.lambda_init).expand_as(self.lambdas))

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        first: list[torch.Tensor] = []  # V_1, captured by block 1

        def keep(v: torch.Tensor) -> torch.Tensor:
            first.append(v)
            return v

        def mix(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
            lam = self.lambdas[n - 2]  # block n (2-based)
            return lambda v: lam[0] * first[0] + lam[1] * v

        x = x0
        for n, block in enumerate(blocks, start=1):
            x = block(x, rotary, value_fn=keep if n == 1 else mix(n))
        return x
