"""The paper's two published DWA implementations, re-implemented as baselines for the benchmark
(benchmarks/dwa_bench.py). Not used for training. Both take α in the layout of `denselab.models.DWA`
(paper semantics), so the same α can be loaded into all three.

`NaiveDWA` — App. A.1, Listings 1 and 2: keep every block output in a Python list; at a DWA step, pick
the dilated ones and sum them one multiply-add at a time:

    w = α_0 · X_{j_0};  w += α_n · X_{j_n}  for the other sources

`PaperA2DWA` — App. A.2, Listing 3 (the `denseformer` package). The approach: one pre-allocated
(zero-filled) accumulator per residue class j mod k, shape (n_j, B, T, C). After block i its output is copied into row ⌊i/k⌋ of accumulator i mod k by an
autograd Function that returns a *fresh alias* of the filled rows [0, ⌊i/k⌋] (a tensor sharing the
storage, with its own version counter, so later writes do not trip autograd); at a DWA the average
is one `tensordot` of α with that alias:

    acc_r[⌊i/k⌋] := X_i                  (r = i mod k)
    Y_i := tensordot(α_i, acc_r[:⌊i/k⌋+1])   if p | i,   else Y_i := X_i

Backward of the copy: the gradient of the alias, rows [0, ⌊i/k⌋), is handed to the previous alias
(so autograd adds up the slices of every later tensordot's gradient, a full-size addition per DWA
step), and row ⌊i/k⌋ goes to X_i. Paper semantics (dilation over block indices).

Differences from the listing, both fixes that do not change the scheme: the alias is created with
the accumulator's dtype (the listing's `torch.Tensor().to(device)` is always float32, so bf16
accumulators fail), and α lives in a `ParameterList` shaped as `denselab.models.DWA`'s, so the same
α can be loaded into both.
"""

from __future__ import annotations

import torch
from torch import nn


class _PaperDWA(nn.Module):
    """α of a kxp DWA (paper semantics), laid out as `denselab.models.DWA`'s: one vector per DWA
    step over its sources in ascending order, initialised to the identity (the last one is 1)."""

    def __init__(self, depth: int, dilation: int = 1, period: int = 1):
        super().__init__()
        self.depth, self.dilation, self.period = depth, dilation, period
        self.dwa_depths = [i for i in range(1, depth + 1) if i % period == 0]
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(i // dilation + 1)) for i in self.dwa_depths)
        with torch.no_grad():
            for a in self.alphas:
                a[-1] = 1.0


class NaiveDWA(_PaperDWA):
    """kxp DWA as in Listings 1-2 (see module doc); α as in `DWA(depth, dilation, period)`."""

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary) -> torch.Tensor:
        alphas = dict(zip(self.dwa_depths, self.alphas))
        all_previous_x, x = [x0], x0
        for i, block in enumerate(blocks, start=1):
            x = block(x, rotary)
            all_previous_x.append(x)
            if i in alphas:
                dilated = [x_ for j, x_ in enumerate(all_previous_x) if (i - j) % self.dilation == 0]
                alpha = alphas[i]
                x = dilated[0] * alpha[0]
                for n in range(1, len(dilated)):
                    x += alpha[n] * dilated[n]
        return x


class _WriteRow(torch.autograd.Function):
    """acc[row] = x; returns an alias of acc[:row + 1] with its own version counter."""

    @staticmethod
    def forward(ctx, acc: torch.Tensor, previous: torch.Tensor | None, row: int, x: torch.Tensor) -> torch.Tensor:
        acc[row] = x
        ctx.row = row
        alias = torch.empty(0, dtype=acc.dtype, device=acc.device)
        alias.set_(acc.untyped_storage(), acc.storage_offset(), (row + 1, *acc.shape[1:]), acc.stride())
        return alias

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        row = ctx.row
        return None, (grad[:row] if row > 0 else None), None, grad[row]


class PaperA2DWA(_PaperDWA):
    """kxp DWA the App. A.2 way (see module doc); α as in `DWA(depth, dilation, period)`."""

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary) -> torch.Tensor:
        k = self.dilation
        sizes = [len(range(r, self.depth + 1, k)) for r in range(k)]  # outputs X_j with j ≡ r (mod k)
        accs = [x0.new_zeros((n, *x0.shape)) for n in sizes]
        views: list[torch.Tensor | None] = [None] * k
        views[0] = _WriteRow.apply(accs[0], None, 0, x0)
        alphas = dict(zip(self.dwa_depths, self.alphas))
        x = x0
        for i, block in enumerate(blocks, start=1):
            x = block(x, rotary)
            r = i % k
            views[r] = _WriteRow.apply(accs[r], views[r], i // k, x)
            if i in alphas:
                x = torch.tensordot(alphas[i], views[r], dims=1)
        return x
