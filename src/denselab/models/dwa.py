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

Two implementations of the same formula (`implementation=`; "auto", the default, picks by pattern):

* "reference" — the readable one: one fused multiply-add (`torch.addcmul`) per source over
  references to the stored block outputs. Autograd then does the backward, one node per source.
* "fast" — the same sums as matrix products over contiguous buffers, with a hand-written backward;
  see "The fast scheme" below. It serves every pattern whose DWAs read *prefixes of lanes* (kxp in
  both semantics, connect_to_last); other patterns (last_k) run the reference. "auto" runs it where
  it pays: when a kept output is read by ≥ 3 DWAs on average (`Plan.pays_off`). Without
  autograd and on small tensors (token-by-token decoding) it runs `_lean_forward`, the same sums with
  the least Python per step.

Under `torch.compile` the reference runs whatever `implementation` says: it traces into one graph
and Inductor fuses the sums itself (benchmarks/README.md, "compile").

Both are exact (tests/test_dwa.py, tests/test_dwa_fast.py compare them with the formula written out
naively, values and gradients) and both keep, for the backward, nothing but the block outputs some
DWA reads: one (B, T, C) tensor per DWA step beyond what the Transformer keeps. The fast scheme's
backward writes the gradients G into the rows of its buffers that hold no live X any more, so that
it needs no gradient buffer of its own ("G in X" below).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

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
        # The fast scheme's static layout, or None when the pattern does not fit it (then: reference).
        self.plan: Plan | None = Plan.build(depth, self.dwa_depths, self.sources)
        self.group: int | None = None  # g of the blocked scheme; None: `group_size` chooses
        self.workspace = Workspace()  # the fast scheme's buffers, reused across steps (not state)
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
        if self.plan is None or self.implementation == "reference":
            return False
        return self.implementation == "fast" or self.plan.pays_off

    def forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        """Y_d for embedded tokens X_0 (B, T, C)."""
        if torch.compiler.is_compiling():
            # Inside torch.compile the readable loop traces into one graph and Inductor fuses the
            # sums itself; the fast scheme's autograd.Function and in-place buffer writes would cut
            # the graph at every DWA step (benchmarks/README.md, "compile").
            return self.reference_forward(x0, blocks, rotary)
        if self.uses_fast_path:
            return self.fast_forward(x0, blocks, rotary)
        return self.reference_forward(x0, blocks, rotary)

    def fast_forward(self, x0: torch.Tensor, blocks: nn.ModuleList, rotary: Rotary) -> torch.Tensor:
        """The fast scheme (below); needs a plan."""
        # The ParameterList's own dict: iterating the ParameterList goes through a string-keyed
        # getattr per α tensor, which in token-by-token decoding is a visible share of a DWA's cost.
        alphas = list(self.alphas._parameters.values())
        return fast_forward(self.plan, alphas, x0, blocks, rotary, self.group, self.workspace)

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

    def free_workspace(self) -> None:
        """Drop the buffers the fast scheme keeps between forward passes."""
        self.workspace.clear()

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


# =================================================================================================
# The fast scheme
# =================================================================================================
#
# Layout. The kept outputs X_j fall into *lanes*: sets of outputs that DWAs read together (the
# residues j mod k for a kxp-DenseFormer, j mod k·p in the official semantics, everything for 1x1 and
# connect_to_last). Each lane is one contiguous buffer in the activation dtype, rows in depth order,
# and block i writes X_i = h + MLP(LN(h)) straight into its row (the block's last addition, with
# out=; no copy). In every pattern served here DWA_i reads a *prefix* of its lane, so with the α of
# a lane as a dense lower-staircase matrix A (rows: the lane's DWAs, columns: its buffer rows),
#
#     Y_i = A[t, :c_t] · X[:c_t]           (t: row of DWA_i, c_t = |S_i|, X: the lane's buffer)
#
# is one matrix product that reads each source once (memory-bound: the reference's addcmul chain
# reads and writes the running sum once per source, ~3x the traffic).
#
# Blocked forward (reads older outputs once for several DWAs). DWAs are taken in groups of g
# consecutive rows t0..t0+g-1 of a lane. When the first of the group runs, every source it reads is
# also a source of the g-1 later ones, so one product computes all their contributions at once:
#
#     P = A[t0:t0+g, :c_t0] · X[:c_t0]                          (g, N): reads c_t0 rows, writes g
#     Y_t0 = P[0];   Y_t = P[t-t0] += A[t, c_t0:c_t] · X[c_t0:c_t]   at the later DWA steps t
#
# The partial sums become the Y_t in place, so the only extra memory is the g rows themselves, which
# autograd keeps anyway as the inputs of the next blocks. Outputs moved for d = 48, 1x1: one product
# per DWA Σ (i + 2) ≈ 1,270; blocked with g = 6 ≈ 440 (`Plan.traffic`).
#
# One-pass backward. With G_i := ∂L/∂Y_i, the gradients of the sums are
#
#     ∂L/∂X_j = Σ_{i ≥ j, j ∈ S_i} α_{i,j} G_i  (+ ∂L/∂Y_j from block j+1 when no DWA follows block j)
#     ∂L/∂α_{i,j} = <G_i, X_j>
#
# Backpropagation meets the DWAs in reverse depth order. When block j's backward needs ∂L/∂X_j,
# every G_i with i ≥ j has arrived, so ∂L/∂X_j is complete in one product, blocked over g
# consecutive columns exactly like the forward (Aᵀ, reverse order). The α gradients are blocked over
# g consecutive DWA rows t0..t1: their G are collected in a (g, N) tensor until the lowest one
# arrives, then one product gives them all, ∂L/∂A[t0:t1+1, :c_t1] = G[t0:t1+1] · X[:c_t1]ᵀ.
#
# G in X. Then the group's G go into the lane's buffer, at rows t + D: D is the smallest shift for
# which no DWA row below reads the X there any more, and no block whose input that X is
# (Y_j = X_j where no DWA follows block j) still has its backward to run (`Plan.grad_shift`: 1 at
# 1x1, where X has one row more than there are DWAs, so the buffer needs no row beyond X's). The
# backward then keeps no (R, N) gradient buffer of its own, which held ~1 output per DWA step more
# at the peak (benchmarks/README.md, "memory"). From the top, the backward's groups (of DWA rows and
# of columns) start and end with a group of one row: its peak memory is at its first block (all
# activations alive) or its end (all weight gradients alive), and a group's G or partial gradients
# live from its first row to its last. The price, in training at depth 48, 1x1: 1,363 transfers
# (`Plan.traffic`, g = 8) where a separate (R, N) G buffer moved 1,061 (g = 7): each group's G is
# copied twice and the α gradients read X once per group; measured ~2 % of a training step at
# depth 48, width 256 (`benchmarks/dwa_ab.py`; benchmarks/README.md, "memory"). After the backward
# the buffer's rows hold gradients: the graph cannot be backpropagated twice (retain_graph; a clear
# error), and a block output kept from a training forward (a hook's reference to a row) reads G
# afterwards — keep a copy.
#
# Autograd plumbing: `_Begin` (takes X_0 and all α, runs first forward / last backward, so it returns
# the α gradients) and one `_Step` per block that writes a kept output or ends with a DWA. Both share
# a `_Run` (buffers, A, the α gradients) for one forward pass. Writes into a buffer whose other rows
# autograd has already saved are hidden from autograd's version counter: they only ever touch rows
# nobody has read yet (forward) or nobody reads any more (backward).


@dataclass(frozen=True)
class Lane:
    """Kept outputs stored together, and the DWAs reading them.

    slots[s]: the depth j whose output X_j is row s of the lane's buffer (ascending).
    rows[t]:  the depth i of the t-th DWA reading this lane (ascending); it reads buffer rows [0, width[t]).
    """

    slots: tuple[int, ...]
    rows: tuple[int, ...]
    width: tuple[int, ...]

    def first_row(self, s: int) -> int:
        """The first DWA reading buffer row s (every later one reads it too)."""
        return next(t for t, c in enumerate(self.width) if c > s)


class Plan:
    """The static layout of the fast scheme for one pattern (depth, dwa_depths, sources), pure Python.

    `build` returns None when some DWA does not read a prefix of its lane (e.g. last_k's
    {X_0} ∪ {X_{i-K+1}..X_i}); such patterns use the reference implementation.
    """

    def __init__(self, depth: int, lanes: list[Lane], dwa_depths: list[int], sources: dict[int, list[int]]):
        self.depth, self.lanes, self.dwa_depths = depth, lanes, dwa_depths
        # Σ_i |S_i| over the number of kept outputs: how many DWAs read a kept output on average.
        self.reads_per_kept_output = sum(len(s) for s in sources.values()) / sum(len(lane.slots) for lane in lanes)
        self._group_cache: dict[tuple[int, int, bool, bool], list[range]] = {}
        self._shift_cache: dict[int, int] = {}  # `grad_shift` by lane
        self.best_group: dict[bool, int] = {}  # `group_size` for large tensors, by train
        self.slot_of = {j: (n, s) for n, lane in enumerate(lanes) for s, j in enumerate(lane.slots)}
        self.row_of = {i: (n, t) for n, lane in enumerate(lanes) for t, i in enumerate(lane.rows)}
        # Gather indices from the flat α vector (all alphas concatenated, + one zero at the end) to
        # each lane's dense matrix A (rows, slots); positions that are not sources point at the zero.
        offsets = [0]
        for i in dwa_depths:
            offsets.append(offsets[-1] + len(sources[i]))
        self.n_alphas = offsets[-1]
        self.alpha_sizes = [len(sources[i]) for i in dwa_depths]
        self.gather = []
        for lane in lanes:
            index = torch.full((len(lane.rows), len(lane.slots)), self.n_alphas, dtype=torch.long)
            for t, i in enumerate(lane.rows):
                n = dwa_depths.index(i)
                index[t, : lane.width[t]] = torch.arange(offsets[n], offsets[n + 1])
            self.gather.append(index)

    @property
    def pays_off(self) -> bool:
        """Whether the fast scheme beats the reference's addcmul chain, for `implementation="auto"`.

        The fast scheme pays per kept output (it is written into a lane, and its backward runs one
        autograd node) and saves per read. Measured at depth 48, width 256 (benchmarks/README.md, two
        full runs): it wins where a kept output is read by 6.6-25 DWAs (1x1, 2x1, 4x1: train ratio to
        the Transformer 1.04-1.07 against the naive loop's 1.06-1.31) and loses where it is read by
        1.55-2.5 (4x5: 1.025-1.046 against 1.005-1.021; 12x1: 1.044-1.056 against 1.034-1.037); at
        depth 12 it ties at 2.1-3.7 (4x1, 2x1). Hence the threshold 3, on this CPU.
        """
        return self.reads_per_kept_output >= 3

    @staticmethod
    def build(depth: int, dwa_depths: list[int], sources_fn) -> Plan | None:
        sources = {i: list(sources_fn(i)) for i in dwa_depths}
        if not dwa_depths or any(sorted(set(s)) != s or not s or s[-1] != i for i, s in sources.items()):
            return None  # the scheme assumes ascending sources ending with X_i itself
        # Lanes: outputs read by a common DWA are in the same lane (union-find over the sources).
        parent: dict[int, int] = {}

        def find(j: int) -> int:
            while parent.setdefault(j, j) != j:
                j = parent[j]
            return j

        for s in sources.values():
            for j in s:
                parent[find(j)] = find(s[0])
        members: dict[int, list[int]] = {}
        for j in sorted(parent):
            members.setdefault(find(j), []).append(j)
        lanes = []
        for slots in sorted(members.values()):
            rows = [i for i in dwa_depths if sources[i][0] in slots]
            width = []
            for i in rows:
                prefix = [j for j in slots if j <= i]
                if sources[i] != prefix:
                    return None  # not a prefix of its lane
                width.append(len(prefix))
            lanes.append(Lane(tuple(slots), tuple(rows), tuple(width)))
        return Plan(depth, lanes, list(dwa_depths), sources)

    def alpha_matrices(self, alphas: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """Each lane's A (rows, slots) from the module's alphas, in the activation dtype."""
        flat = torch.cat([*alphas, alphas[0].new_zeros(1)]).to(dtype)
        return [flat[index.to(flat.device)] for index in self.gather]

    def alpha_gradients(self, grad_matrices: list[torch.Tensor], like: torch.Tensor) -> list[torch.Tensor]:
        """The inverse of `alpha_matrices`: per-α gradients from each lane's dense ∂L/∂A."""
        flat = like.new_zeros(self.n_alphas + 1)
        for index, grad in zip(self.gather, grad_matrices):
            flat.index_add_(0, index.to(flat.device).flatten(), grad.flatten().to(flat.dtype))
        return list(flat[:-1].split(self.alpha_sizes))

    # -- groups of the blocked scheme -------------------------------------------------------------
    @staticmethod
    def groups(n: int, g: int, from_top: bool = False) -> list[range]:
        """range(n) cut into consecutive groups of g, from the bottom (the forward's order over DWAs;
        the last group may be shorter) or from the top (the backward's order over DWA rows and buffer
        rows). From the top, the top row and the bottom row are groups of their own: the backward's
        peak memory is where it starts (while the top block's activations are all alive) or where it
        ends (while all weight gradients are), and a group's partial gradients live from its top
        row to its bottom row; the group above the bottom row may be shorter."""
        if from_top:
            if n <= 2:
                return [range(x, x + 1) for x in range(n - 1, -1, -1)]
            middle = [range(max(1, top - g + 1), top + 1) for top in range(n - 2, 0, -g)]
            return [range(n - 1, n), *middle, range(1)]
        return [range(a, min(a + g, n)) for a in range(0, n, g)]

    def group_of(self, lane: int, g: int, from_top: bool, rows: bool | None = None) -> list[range]:
        """owner[x] = the group holding x, cached: of the DWA rows (`rows`, default for the forward's
        groups, from the bottom) or of the buffer rows (default for the backward's, from the top)."""
        rows = (not from_top) if rows is None else rows
        key = (lane, g, from_top, rows)
        if key not in self._group_cache:
            n = len(self.lanes[lane].rows if rows else self.lanes[lane].slots)
            owner: list[range] = [range(0)] * n
            for grp in self.groups(n, g, from_top):
                for x in grp:
                    owner[x] = grp
            self._group_cache[key] = owner
        return self._group_cache[key]

    def grad_shift(self, lane: int) -> int:
        """D: G_t goes into buffer row t + D (see "G in X" above), the smallest D for which, as soon
        as G_t arrives, (a) no DWA row below t reads the X in row t + D (t + D ≥ c_{t-1}) and (b) if
        that X_j is a block's input (no DWA follows block j), block j+1 has run its backward (j ≥ i_t).
        1 at 1x1 (X has one row more than there are DWAs), 0 for the lanes of 4x1 without X_0."""
        if lane in self._shift_cache:
            return self._shift_cache[lane]
        lane_ = self.lanes[lane]
        S = len(lane_.slots)

        def fits(D: int) -> bool:
            for t, i in enumerate(lane_.rows):
                if t > 0 and t + D < lane_.width[t - 1]:
                    return False
                if t + D < S and lane_.slots[t + D] not in self.row_of and lane_.slots[t + D] < i:
                    return False
            return True

        self._shift_cache[lane] = next(D for D in range(S + 1) if fits(D))  # D = S overwrites no X
        return self._shift_cache[lane]

    def buffer_rows(self, lane: int) -> int:
        """Rows of a lane's buffer: its S outputs, and its R gradients shifted by `grad_shift`."""
        return max(len(self.lanes[lane].slots), len(self.lanes[lane].rows) + self.grad_shift(lane))

    def traffic(self, group: int, train: bool = False) -> int:
        """(B, T, C)-tensor transfers (reads + writes) of the DWA sums of one forward, or of one
        forward + backward with `train`, in this scheme with groups of `group` (1: one product per
        DWA). The model behind `group_size`, and the benchmark's bound."""
        total = 0
        for lane in self.lanes:
            for grp in self.groups(len(lane.rows), group):
                c0 = lane.width[grp[0]]
                total += c0 + len(grp)  # P = A[grp, :c0] · X[:c0]
                total += sum(1 + lane.width[t] - c0 + 1 for t in grp[1:])  # P[t] += A[t, c0:c_t] · X[c0:c_t]
        if not train:
            return total
        for lane in self.lanes:
            R, S = len(lane.rows), len(lane.slots)
            total += 2 * R  # G_i copied into the group's G (the lane's buffer when the group is one row)
            for grp in self.groups(S, group, from_top=True):
                t_top = lane.first_row(grp[-1])
                total += (R - t_top) + len(grp)  # Q = A[t_top:, grp]ᵀ · G[t_top:]
                total += sum(1 + t_top - lane.first_row(s) + 1 for s in grp[:-1])  # Q[s] += ...
            total += 3 * sum(j not in self.row_of for j in lane.slots)  # Q[s] += ∂L/∂Y_j (no DWA at j)
            for grp in self.groups(R, group, from_top=True):  # ∂L/∂A[grp] = G[grp] · X[:c_t1]ᵀ
                total += len(grp) + lane.width[grp[-1]]
                total += 2 * len(grp) if len(grp) > 1 else 0  # the group's G copied into the buffer
        return total


def group_size(plan: Plan, n: int, train: bool) -> int:
    """g for the blocked products: the one minimising `Plan.traffic`, for large tensors; 1 (one
    product per DWA, fewest kernels) when a tensor is small, as in token-by-token decoding. Every g
    against this choice: `benchmarks/dwa_bench.py --sections groups` (figures in benchmarks/README.md)."""
    if n < 16384:
        return 1
    if train not in plan.best_group:  # once per plan: ~0.5 ms of Python, asked for every forward pass
        plan.best_group[train] = min(range(1, 9), key=lambda g: (plan.traffic(g, train=train), g))
    return plan.best_group[train]


def _storage_users(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


try:  # a tensor alone with its storage, as `_storage_users` counts it (the call holds one reference)
    _ALONE = _storage_users(torch.empty(1))
except (AttributeError, RuntimeError):  # private API gone: never reuse, always allocate
    _ALONE = None


class Workspace(dict):
    """Large buffers of the fast scheme kept from one forward pass to the next.

    Why: CPU tensors of more than a few MB come straight from the OS, and the first write to fresh
    pages (page faults) costs several times the write itself. A buffer is reused only when nothing else holds its storage any more (the
    previous step's graph is gone, no hook kept a view) and was made in the same inference mode (a
    tensor made under `torch.inference_mode`, as in Lightning's validation, cannot be written to
    outside it), otherwise a new one replaces it.
    `DWA.free_workspace()` drops them. (GPUs have a caching allocator that does this already.)
    """

    alpha_cache: tuple | None = None  # (key, A per lane) of the last forward pass without autograd
    lean_program: _LeanProgram | None = None  # the views of `_lean_forward` (token-by-token decoding)

    def clear(self) -> None:
        super().clear()
        self.alpha_cache = self.lean_program = None

    def take(self, key, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        t = self.get(key)
        if (t is None or _ALONE is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device
                or _storage_users(t) != _ALONE or t.is_inference() != torch.is_inference_mode_enabled()):
            t = like.new_empty(shape)
            if _ALONE is not None:
                self[key] = t
        return t


def _cached_alpha_matrices(plan: Plan, alphas: list[torch.Tensor], dtype: torch.dtype,
                           workspace: Workspace) -> list[torch.Tensor]:
    """`plan.alpha_matrices`, reused while no α changed (their version counters), for forward passes
    without autograd: decoding runs one per token with the same α."""
    key = (dtype, alphas[0].device, *((id(a), a._version) for a in alphas))
    if workspace.alpha_cache is None or workspace.alpha_cache[0] != key:
        workspace.alpha_cache = (key, plan.alpha_matrices(alphas, dtype))
    return workspace.alpha_cache[1]


class _Run:
    """The state of one forward pass of the fast scheme, shared by its autograd nodes."""

    def __init__(self, plan: Plan, x0: torch.Tensor, alphas: list[torch.Tensor], track: bool, group: int | None,
                 workspace: Workspace):
        self.plan, self.shape, self.track, self.workspace = plan, x0.shape, track, workspace
        n = x0.numel()
        self.group = group or group_size(plan, n, train=track)
        # (max(S, R + D), N) per lane: X in rows [0, S) in the forward, G in rows [D, D + R) in the backward.
        self.buffers = [workspace.take(("X", lane), (plan.buffer_rows(lane), n), x0)
                        for lane in range(len(plan.lanes))]
        self.shift = [plan.grad_shift(lane) for lane in range(len(plan.lanes))]
        self.alphas_need_grad = track and any(a.requires_grad for a in alphas)
        with torch.no_grad():
            self.A = plan.alpha_matrices(alphas, x0.dtype) if track else _cached_alpha_matrices(
                plan, alphas, x0.dtype, workspace)  # (R, S) per lane
        self.partial: list[torch.Tensor | None] = [None] * len(plan.lanes)  # forward P (g, N)
        self.grad_partial: list[torch.Tensor | None] = [None] * len(plan.lanes)  # backward Q (g, N)
        self.grad_A: list[torch.Tensor | None] = [None] * len(plan.lanes)  # backward ∂L/∂A (R, S)
        # backward: (t0, G[t0:t1+1]) of the group of DWA rows whose α gradients are still to come
        self.grad_group: list[tuple[int, torch.Tensor] | None] = [None] * len(plan.lanes)
        self.backward_done = False

    def _hidden_write(self, tensor: torch.Tensor):
        """Writes to rows nobody has read yet, kept from bumping the version counter that autograd
        checks for the rows it has saved (the buffer's other rows)."""
        return torch.autograd._unsafe_preserve_version_counter(tensor) if self.track else nullcontext()

    # -- forward ----------------------------------------------------------------------------------
    def store(self, j: int, x: torch.Tensor | None = None, h: torch.Tensor | None = None,
              m: torch.Tensor | None = None) -> torch.Tensor:
        """Row of X_j in its lane, filled with x, or with h + m computed straight into it."""
        lane, s = self.plan.slot_of[j]
        row = self.buffers[lane][s].view(self.shape)  # (B, T, C)
        with self._hidden_write(self.buffers[lane]):
            if x is not None:
                row.copy_(x)
            else:
                torch.add(h, m, out=row)
        return row

    def average(self, i: int) -> torch.Tensor:
        """Y_i = A[t, :c_t] · X[:c_t] (blocked, see the scheme above)."""
        n, t = self.plan.row_of[i]
        lane, A, X = self.plan.lanes[n], self.A[n], self.buffers[n]
        grp = self.plan.group_of(n, self.group, from_top=False)[t]
        t0, c0 = grp[0], lane.width[grp[0]]
        if t == t0:  # the group's first DWA: all its sources are old ones for the others
            # Training: a new partial sum per group. Its rows become the Y_t, which autograd keeps as
            # the next blocks' inputs and frees as the backward passes them; kept in the workspace
            # they would stay alive to the end of the backward and between steps (this and the same
            # for the backward's Q: peak at depth 48, width 768 from 3.33 to 2.30 outputs per DWA
            # step, benchmarks/README.md "memory"). Inference: two from the workspace that
            # alternate (the previous group's last Y_t may still be in use).
            shape = (len(grp), X.shape[1])
            out = X.new_empty(shape) if self.track else self.workspace.take(("P", n, t0 // self.group % 2), shape, X)
            self.partial[n] = torch.mm(A[grp.start: grp.stop, :c0], X[:c0], out=out)  # (g, N)
        elif lane.width[t] > c0:
            P = self.partial[n]
            a, x = A[t: t + 1, c0: lane.width[t]], X[c0: lane.width[t]]
            if self.track and i == self.plan.depth:
                # The model's output, which the caller holds through the whole backward: a tensor of
                # its own (same traffic, out of place), or its view would keep the group's other g - 1
                # rows alive to the end of the backward, where its peak is when the weight
                # gradients are large (depth 48, width 768: 7 outputs at 1x1, g = 8).
                self.partial[n] = None
                return torch.addmm(P[t - t0: t - t0 + 1], a, x).view(self.shape)
            with self._hidden_write(P):
                P[t - t0: t - t0 + 1].addmm_(a, x)
        y = self.partial[n][t - t0].view(self.shape)
        if t == grp[-1]:  # the group's last Y_t: from here on only autograd keeps P, and frees it as it goes
            self.partial[n] = None
        return y

    # -- backward ---------------------------------------------------------------------------------
    def grads(self, n: int, lo: int, hi: int) -> list[tuple[int, torch.Tensor]]:
        """G[lo:hi] of lane n as pieces (first row, rows): of the group still waiting for its α
        gradients, and of the lane's buffer at rows [lo + D, hi + D) (see "G in X")."""
        pieces, D = [], self.shift[n]
        if self.grad_group[n] is not None:
            t0, G = self.grad_group[n]
            t1 = t0 + len(G) - 1
            assert lo >= t0, "G rows asked for before they arrived"
            if lo <= t1:
                pieces.append((lo, G[lo - t0: min(hi, t1 + 1) - t0]))
                lo = t1 + 1
        if lo < hi:
            pieces.append((lo, self.buffers[n][lo + D: hi + D]))
        return pieces

    def store_grad(self, i: int, grad: torch.Tensor) -> None:
        """Keep G_i = ∂L/∂Y_i for the DWA after block i. Its group of DWA rows (t0..t1, from the top)
        collects the G until the lowest one arrives; then its α gradients G[t0:t1+1] · X[:c_t1]ᵀ, and
        the G go into X's rows [t0 + D, t1 + D], which no α gradient reads any more."""
        n, t = self.plan.row_of[i]
        lane, X, D = self.plan.lanes[n], self.buffers[n], self.shift[n]
        grad = grad.reshape(1, -1)  # (1, N)
        if not self.alphas_need_grad:
            with self._hidden_write(X):
                X[t + D].copy_(grad[0])
            return
        grp = self.plan.group_of(n, self.group, from_top=True, rows=True)[t]
        if len(grp) > 1:
            if t == grp[-1]:
                # New per group and dropped when its rows are in the buffer, like the forward's P
                self.grad_group[n] = (grp.start, X.new_empty((len(grp), X.shape[1])))
            G = self.grad_group[n][1]
            G[t - grp.start].copy_(grad[0])
            if t > grp.start:
                return
        else:
            G = grad
        if self.grad_A[n] is None:
            self.grad_A[n] = X.new_zeros((len(lane.rows), len(lane.slots)))  # (R, S)
        c = lane.width[grp[-1]]
        self.grad_A[n][grp.start: grp.stop, :c] = _gram(G, X[:c])
        with self._hidden_write(X):
            X[grp.start + D: grp.stop + D].copy_(G)
        self.grad_group[n] = None

    def grad_output(self, j: int, through: torch.Tensor | None) -> torch.Tensor:
        """∂L/∂X_j = Σ_{i ≥ j} α_{i,j} G_i (+ `through`, ∂L/∂Y_j when no DWA follows block j), blocked
        over groups of consecutive columns taken from the top."""
        n, s = self.plan.slot_of[j]
        lane, A, R = self.plan.lanes[n], self.A[n], len(self.plan.lanes[n].rows)
        grp = self.plan.group_of(n, self.group, from_top=True)[s]  # counted from the top: backward order
        top, r = grp[-1], s - grp.start
        t_top = lane.first_row(top)  # DWAs reading column `top`: rows t_top.. (all stored by now)
        if s == top:
            # New per group: the rows go out as the blocks' gradients and are freed with them.
            Q = None
            for t, G in self.grads(n, t_top, R):  # Q = A[t_top:, grp]ᵀ · G[t_top:], (g, N)
                a = A[t: t + len(G), grp.start: top + 1].t()
                Q = torch.mm(a, G) if Q is None else Q.addmm_(a, G)
            self.grad_partial[n] = Q
        Q = self.grad_partial[n]
        q = Q[r: r + 1]  # (1, N)
        # The group's last column goes out in a tensor of its own (its first addition out of place:
        # same traffic), so that Q is freed with the block above it: a view would keep Q's g rows
        # alive through block s's backward, the backward's peak when s = 1 and the weight gradients
        # are large (depth 48, width 768, 1x1: 6 outputs more at g = 8).
        in_place = s != grp.start or len(grp) == 1
        t_s = lane.first_row(s)
        if t_s < t_top:  # DWAs reading column s but not `top`
            for t, G in self.grads(n, t_s, t_top):
                a = A[t: t + len(G), s: s + 1].t()
                q, in_place = (q.addmm_(a, G) if in_place else torch.addmm(q, a, G)), True
        if through is not None:
            q, in_place = (q.add_(through.reshape(1, -1)) if in_place else q + through.reshape(1, -1)), True
        # Every column below `top` gets an addition: its own DWA's row (t_s < t_top), or ∂L/∂Y_s.
        assert in_place, "a group's lowest column received no addition"
        if s == grp.start:  # the group's last column: Q lives on only as the blocks' gradients
            self.grad_partial[n] = None
        return q.view(self.shape)

    def check_first_backward(self) -> None:
        if self.backward_done:
            raise RuntimeError("DWA (implementation='fast'): this graph was already backpropagated and its "
                               "buffers now hold gradients (see 'G in X'); backpropagate it once, or use "
                               "implementation='reference' to backpropagate twice (retain_graph=True)")

    def alpha_grads(self, alphas_like: torch.Tensor) -> list[torch.Tensor]:
        """∂L/∂α_{i,j} = <G_i, X_j>, from the products `store_grad` made."""
        grads = [A if A is not None else X.new_zeros(len(lane.rows), len(lane.slots))  # a lane with no G: no loss path
                 for A, X, lane in zip(self.grad_A, self.buffers, self.plan.lanes)]
        return self.plan.alpha_gradients(grads, alphas_like)


def _gram(G: torch.Tensor, X: torch.Tensor, chunk: int = 4096, max_pairs: float = 1024) -> torch.Tensor:
    """G · Xᵀ for G (R, N), X (S, N) with few rows and long ones, as a sum over column chunks.

    Why: a plain `G @ X.t()` with R, S ≈ 12 and N ≈ 260k runs at ~6 GB/s on CPU (MKL splits the
    tiny output, not the long reduction), 5x slower than one batched product over chunks of 4,096
    columns (`torch.bmm`, each chunk's rows in cache), which then sums the partial (R, S) results.
    From R·S ≈ 1,000 on (1x1 at depth 48: 48 x 49) the product is compute-bound and the plain one is
    as fast or faster (`benchmarks/dwa_kernels.py`: 4.41 ms plain vs 0.92 ms chunked at 12 x 13,
    9.6 vs 11.4 ms at 48 x 49). `max_pairs`: the largest R·S that takes the chunked product.
    """
    R, S, N = G.shape[0], X.shape[0], G.shape[1]
    n_chunks = N // chunk
    if n_chunks < 2 or R * S > max_pairs:
        return G @ X.t()
    body = n_chunks * chunk
    g = G[:, :body].view(R, n_chunks, chunk).transpose(0, 1)  # (n_chunks, R, chunk)
    x = X[:, :body].view(S, n_chunks, chunk).permute(1, 2, 0)  # (n_chunks, chunk, S)
    out = torch.bmm(g, x).sum(0)  # (R, S)
    if body < N:
        out += G[:, body:] @ X[:, body:].t()
    return out


class _Begin(torch.autograd.Function):
    """Y_0 = X_0 (kept in its lane when some DWA reads it). Its backward runs after every other DWA
    node's (its output feeds block 1), so it returns ∂L/∂X_0 and all the α gradients."""

    @staticmethod
    def forward(ctx, run: _Run, x0: torch.Tensor, *alphas: torch.Tensor) -> torch.Tensor:
        ctx.run, ctx.alpha_like, ctx.n_alphas = run, alphas[0], len(alphas)
        y0 = run.store(0, x=x0) if 0 in run.plan.slot_of else x0.view_as(x0)
        ctx.save_for_backward(*run.buffers)  # what the DWAs keep for the backward (filled later)
        return y0

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y0: torch.Tensor):
        run = ctx.run
        run.check_first_backward()
        with _no_autocast(grad_y0):  # the products in the buffers' dtype
            grad_x0 = run.grad_output(0, grad_y0) if 0 in run.plan.slot_of else grad_y0
            needed = any(ctx.needs_input_grad[2:])
            alpha_grads = run.alpha_grads(ctx.alpha_like) if needed else [None] * ctx.n_alphas
        run.backward_done = True  # the last node of the backward: G has overwritten X
        return (None, grad_x0, *alpha_grads)


class _Step(torch.autograd.Function):
    """Block i's output X_i = h + m (written into its lane when kept), then Y_i (a DWA, or Y_i = X_i)."""

    @staticmethod
    def forward(ctx, run: _Run, i: int, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        ctx.run, ctx.i = run, i
        return _step(run, i, h, m)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        run, i = ctx.run, ctx.i
        run.check_first_backward()
        dwa = i in run.plan.row_of
        with _no_autocast(grad_y):  # the products in the buffers' dtype
            if dwa:
                run.store_grad(i, grad_y)
            grad_x = run.grad_output(i, None if dwa else grad_y)
        return None, None, grad_x, grad_x


def _step(run: _Run, i: int, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    x = run.store(i, h=h, m=m)
    return run.average(i) if i in run.plan.row_of else x


def _tracks(x0: torch.Tensor, alphas: list[torch.Tensor]) -> bool:
    """Whether this forward pass records autograd's graph (training)."""
    return torch.is_grad_enabled() and (x0.requires_grad or any(a.requires_grad for a in alphas))


def _begin(plan: Plan, alphas: list[torch.Tensor], x0: torch.Tensor, group: int | None,
           workspace: Workspace) -> tuple[_Run, torch.Tensor]:
    """The run's state and Y_0."""
    track = _tracks(x0, alphas)
    with _no_autocast(x0):
        run = _Run(plan, x0, alphas, track, group, workspace)
        if track:
            return run, _Begin.apply(run, x0, *alphas)
        return run, (run.store(0, x=x0) if 0 in plan.slot_of else x0)


def _no_autocast(x: torch.Tensor):
    """The sums stay in the activation dtype under autocast (a no-op context when it is off)."""
    return torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else nullcontext()


def fast_forward(plan: Plan, alphas: list[torch.Tensor], x0: torch.Tensor, blocks: nn.ModuleList,
                 rotary: Rotary, group: int | None = None, workspace: Workspace | None = None) -> torch.Tensor:
    """Y_d by the fast scheme; the blocks run as in `Block.forward`, their last addition written into
    the lane buffer when X_i is kept."""
    workspace = workspace if workspace is not None else Workspace()
    if not _tracks(x0, alphas) and (group or group_size(plan, x0.numel(), train=False)) == 1:
        return _lean_forward(plan, alphas, x0, blocks, rotary, workspace)
    run, y = _begin(plan, alphas, x0, group, workspace)
    for i, block in enumerate(blocks, start=1):
        h = y + block.attn_branch(y, rotary)
        m = block.mlp_branch(h)
        if i in plan.slot_of or i in plan.row_of:
            with _no_autocast(h):
                y = _Step.apply(run, i, h, m) if run.track else _step(run, i, h, m)
        else:
            y = h + m  # X_i, read by no DWA: Y_i = X_i as in the Transformer
    return y


class _LeanProgram:
    """The views one DWA step of `_lean_forward` needs, made once and reused token after token.

    steps[i - 1] for block i: None when X_i is not kept, else (row, a, xs): row, the (B, T, C) view
    of X_i's row in its lane; a = A[t, :c_t] (1, c_t) and xs = X[:c_t] (c_t, N) when a DWA follows
    block i, else None, None. Slicing them anew for every token (five views per DWA step) was most of
    what a 1x1-DenseFormer added to a decoding step (benchmarks/README.md, "decode").

    Its lane buffers are its own (not in the workspace's dict); `fits` reuses the program only
    while nothing but its views holds them (a hook may keep a block input, a view of a row: the next
    token then gets new buffers), for the same shape, dtype, inference mode and α matrices.
    """

    def __init__(self, plan: Plan, x0: torch.Tensor, A: list[torch.Tensor]):
        self.A, self.shape, self.dtype, self.device = A, x0.shape, x0.dtype, x0.device
        self.inference = torch.is_inference_mode_enabled()
        n = x0.numel()
        self.buffers = [x0.new_empty((len(lane.slots), n)) for lane in plan.lanes]  # (S, N) per lane
        self.row0 = self._row(plan, 0)
        self.steps: list[tuple | None] = []
        for i in range(1, plan.depth + 1):
            if i not in plan.slot_of:
                self.steps.append(None)
            elif i not in plan.row_of:
                self.steps.append((self._row(plan, i), None, None))
            else:
                lane, t = plan.row_of[i]
                c = plan.lanes[lane].width[t]
                self.steps.append((self._row(plan, i), A[lane][t: t + 1, :c], self.buffers[lane][:c]))
        self.users = [_storage_users(X) for X in self.buffers]  # the buffer itself and the program's views

    def _row(self, plan: Plan, j: int) -> torch.Tensor | None:
        if j not in plan.slot_of:
            return None
        lane, s = plan.slot_of[j]
        return self.buffers[lane][s].view(self.shape)

    def fits(self, x0: torch.Tensor, A: list[torch.Tensor]) -> bool:
        return (_ALONE is not None and A is self.A and x0.shape == self.shape and x0.dtype == self.dtype
                and x0.device == self.device and torch.is_inference_mode_enabled() == self.inference
                and all(_storage_users(X) == users for X, users in zip(self.buffers, self.users)))


def _lean_forward(plan: Plan, alphas: list[torch.Tensor], x0: torch.Tensor, blocks: nn.ModuleList,
                  rotary: Rotary, workspace: Workspace) -> torch.Tensor:
    """The same sums without autograd and with one product per DWA (g = 1): what token-by-token
    decoding runs, where a DWA step is a few microseconds of arithmetic and the Python around it
    matters (benchmarks/README.md, "decode"). Per block: X_i = h + m into its row, Y_i = A[t, :c_t] · X[:c_t]."""
    A = _cached_alpha_matrices(plan, alphas, x0.dtype, workspace)
    program = workspace.lean_program
    if program is None or not program.fits(x0, A):
        workspace.lean_program = None  # the old buffers go before new ones are made
        program = workspace.lean_program = _LeanProgram(plan, x0, A)
    if program.row0 is not None:
        program.row0.copy_(x0)
    autocast = torch.is_autocast_enabled(x0.device.type)  # the blocks run under it, the products not
    B, T, C = x0.shape
    y = x0
    for block, step in zip(blocks, program.steps):
        h = y + block.attn_branch(y, rotary)
        m = block.mlp_branch(h)
        if step is None:
            y = h + m  # X_i, read by no DWA
            continue
        row, a, xs = step
        torch.add(h, m, out=row)  # X_i, into its row
        if a is None:  # Y_i = X_i: a new view of the row (one that a hook keeps counts as a user, see `fits`)
            y = row.view(B, T, C)
        elif autocast:
            with _no_autocast(x0):
                y = torch.mm(a, xs).view(B, T, C)
        else:
            y = torch.mm(a, xs).view(B, T, C)  # Y_i = A[t, :c_t] · X[:c_t], (1, N) -> (B, T, C)
    return y
