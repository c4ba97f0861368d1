"""The fast scheme of the DWA: the sums of `denselab.models.dwa` as matrix products over contiguous
buffers, with a hand-written backward. Same values and gradients as the reference sums
(tests/test_dwa_fast.py); measured figures in benchmarks/README.md.

One entry point: `FastScheme.build(depth, dwa_depths, sources)` returns the scheme for a sparsity
pattern (None where it does not fit), and calling it, `scheme(alphas, x0, blocks, rotary)`, runs the
blocks and returns Y_d. `DWA` holds one (`DWA.fast`). Everything else here serves that call; tests and
benchmarks read `Plan` (the layout, `Plan.traffic`) and may put a subclass of `Pass` into
`FastScheme.pass_type` to time or stub the sums (benchmarks/dwa_time_split.py).

Layout. The kept outputs X_j fall into *lanes*: sets of outputs that DWAs read together (the
residues j mod k for a kxp-DenseFormer, j mod k·p in the official semantics, everything for 1x1 and
connect_to_last). Each lane is one contiguous buffer in the activation dtype, rows in depth order,
and block i writes X_i = h + MLP(LN(h)) straight into its row (the block's last addition, with
out=; no copy). In every pattern served here DWA_i reads a *prefix* of its lane, so with the α of
a lane as a dense lower-staircase matrix A (rows: the lane's DWAs, columns: its buffer rows),

    Y_i = A[t, :c_t] · X[:c_t]           (t: row of DWA_i, c_t = |S_i|, X: the lane's buffer)

is one matrix product that reads each source once (memory-bound: the reference's addcmul chain
reads and writes the running sum once per source, ~3x the traffic).

Blocked forward (reads older outputs once for several DWAs). DWAs are taken in groups of g
consecutive rows t0..t0+g-1 of a lane. When the first of the group runs, every source it reads is
also a source of the g-1 later ones, so one product computes all their contributions at once:

    P = A[t0:t0+g, :c_t0] · X[:c_t0]                          (g, N): reads c_t0 rows, writes g
    Y_t0 = P[0];   Y_t = P[t-t0] += A[t, c_t0:c_t] · X[c_t0:c_t]   at the later DWA steps t

The partial sums become the Y_t in place, so the only extra memory is the g rows themselves, which
autograd keeps anyway as the inputs of the next blocks. `Plan.traffic` counts the tensors moved.

One-pass backward. With G_i := ∂L/∂Y_i, the gradients of the sums are

    ∂L/∂X_j = Σ_{i ≥ j, j ∈ S_i} α_{i,j} G_i  (+ ∂L/∂Y_j from block j+1 when no DWA follows block j)
    ∂L/∂α_{i,j} = <G_i, X_j>

Backpropagation meets the DWAs in reverse depth order. When block j's backward needs ∂L/∂X_j,
every G_i with i ≥ j has arrived, so ∂L/∂X_j is complete in one product, blocked over g
consecutive columns exactly like the forward (Aᵀ, reverse order). The α gradients are blocked over
g consecutive DWA rows t0..t1: their G are collected in a (g, N) tensor until the lowest one
arrives, then one product gives them all, ∂L/∂A[t0:t1+1, :c_t1] = G[t0:t1+1] · X[:c_t1]ᵀ.

G in X. Then the group's G go into the lane's buffer, at rows t + D: D is the smallest shift for
which no DWA row below reads the X there any more, and no block whose input that X is
(Y_j = X_j where no DWA follows block j) still has its backward to run (`Plan.grad_shift`: 1 at
1x1, where X has one row more than there are DWAs, so the buffer needs no row beyond X's). The
backward then keeps no (R, N) gradient buffer of its own. From the top, the backward's groups (of
DWA rows and of columns) start and end with a group of one row: its peak memory is at its first
block (all activations alive) or its end (all weight gradients alive), and a group's G or partial
gradients live from its first row to its last. The price: each group's G is copied twice and the
α gradients read X once per group (benchmarks/README.md, "Memory"). After the backward the
buffer's rows hold gradients: the graph cannot be backpropagated twice (retain_graph; a clear
error), and a block output kept from a training forward (a hook's reference to a row) reads G
afterwards — keep a copy.

Autograd plumbing: `_X0Node` (takes X_0 and all α, runs first in the forward and last in the
backward, so it returns the α gradients) and one `_BlockNode` per block that writes a kept output or
ends with a DWA. Both share a `Pass` (buffers, A, the α gradients) for one forward pass. Writes
into a buffer whose other rows autograd has already saved are hidden from autograd's version
counter: they only ever touch rows nobody has read yet (forward) or nobody reads any more
(backward). That hiding is a private torch API (`torch.autograd._unsafe_preserve_version_counter`):
without it autograd refuses the training step, so what it buys is the fast scheme over the
reference sums (`benchmarks/dwa_private_apis.py`). The buffers are new for every forward pass and
freed with its graph (reusing them from one pass to the next measured no faster: benchmarks/README.md).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from denselab.models.gpt import Rotary

__all__ = ["FastScheme"]


class FastScheme:
    """The fast scheme for one sparsity pattern; `__call__` runs it.

    Attributes:
        plan: the static layout (`Plan`).
        group: g of the blocked products; None: `Plan.group_size` chooses per forward pass.
        pass_type: the class whose methods do the sums of one forward pass (`Pass`).
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.group: int | None = None
        self.pass_type: type[Pass] = Pass
        self._alpha_cache: tuple | None = None  # (key, A per lane) of the last forward pass without autograd

    @classmethod
    def build(cls, depth: int, dwa_depths: list[int], sources_fn) -> FastScheme | None:
        """The scheme for DWAs after `dwa_depths` over `sources_fn(i)`; None when some DWA does not
        read a prefix of its lane (then the reference sums run)."""
        plan = Plan.build(depth, dwa_depths, sources_fn)
        return cls(plan) if plan is not None else None

    def __call__(self, alphas: list[torch.Tensor], x0: torch.Tensor, blocks: nn.ModuleList,
                 rotary: Rotary) -> torch.Tensor:
        """Y_d for embedded tokens X_0 (B, T, C) and the α of `DWA.alphas`. The blocks run as in
        `Block.forward`, their last addition written into the lane buffer when X_i is kept."""
        plan = self.plan
        track = torch.is_grad_enabled() and (x0.requires_grad or any(a.requires_grad for a in alphas))
        with _no_autocast(x0):  # the sums stay in the activation dtype
            A = self._alpha_matrices(alphas, x0.dtype, track)
            state = self.pass_type(plan, x0, A, track, self.group, track and any(a.requires_grad for a in alphas))
            if track:
                y = _X0Node.apply(state, x0, *alphas)
            else:
                y = state.store(0, x=x0) if 0 in plan.slot_of else x0
        for i, block in enumerate(blocks, start=1):
            h = y + block.attn_branch(y, rotary)
            m = block.mlp_branch(h)
            if i in plan.slot_of or i in plan.row_of:
                with _no_autocast(h):
                    y = _BlockNode.apply(state, i, h, m) if track else _output_and_mix(state, i, h, m)
            else:
                y = h + m  # X_i, read by no DWA: Y_i = X_i as in the Transformer
        return y

    def _alpha_matrices(self, alphas: list[torch.Tensor], dtype: torch.dtype, track: bool) -> list[torch.Tensor]:
        """Each lane's A (rows, slots) from the α, in the activation dtype. Without autograd reused
        while no α changed (their version counters): decoding runs one forward pass per token."""
        with torch.no_grad():
            if track:
                return self.plan.alpha_matrices(alphas, dtype)
            key = (dtype, alphas[0].device, *((id(a), a._version) for a in alphas))
            if self._alpha_cache is None or self._alpha_cache[0] != key:
                self._alpha_cache = (key, self.plan.alpha_matrices(alphas, dtype))
            return self._alpha_cache[1]


@dataclass(frozen=True)
class Lane:
    """Kept outputs stored together, and the DWAs reading them.

    slots[s]:     the depth j whose output X_j is row s of the lane's buffer (ascending).
    rows[t]:      the depth i of the t-th DWA reading this lane (ascending).
    n_sources[t]: |S_i| of that DWA, which reads buffer rows [0, n_sources[t]).
    """

    slots: tuple[int, ...]
    rows: tuple[int, ...]
    n_sources: tuple[int, ...]

    def first_row(self, s: int) -> int:
        """The first DWA reading buffer row s (every later one reads it too)."""
        return next(t for t, c in enumerate(self.n_sources) if c > s)


class Plan:
    """The static layout of the fast scheme for one pattern (depth, dwa_depths, sources), pure Python."""

    def __init__(self, depth: int, lanes: list[Lane], dwa_depths: list[int], sources: dict[int, list[int]]):
        self.depth, self.lanes, self.dwa_depths = depth, lanes, dwa_depths
        # Σ_i |S_i| over the number of kept outputs: how many DWAs read a kept output on average.
        self.reads_per_kept_output = sum(len(s) for s in sources.values()) / sum(len(lane.slots) for lane in lanes)
        self._group_cache: dict[tuple[int, int, bool, bool], list[range]] = {}
        self._shift_cache: dict[int, int] = {}  # `grad_shift` by lane
        self._best_group: dict[bool, int] = {}  # the traffic model's g, by train
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
                index[t, : lane.n_sources[t]] = torch.arange(offsets[n], offsets[n + 1])
            self.gather.append(index)

    @property
    def pays_off(self) -> bool:
        """Whether the fast scheme beats the reference's addcmul chain, for `implementation="auto"`.

        The fast scheme pays per kept output (it is written into a lane, and its backward runs one
        autograd node) and saves per read. Measured on CPU (benchmarks/README.md, "auto"): it wins
        where a kept output is read by many DWAs (1x1, 2x1, 4x1 at depth 48) and loses where it is
        read by few (4x5, 12x1); hence the threshold of 3 reads.
        """
        return self.reads_per_kept_output >= 3

    @staticmethod
    def build(depth: int, dwa_depths: list[int], sources_fn) -> Plan | None:
        """The plan, or None when some DWA does not read a prefix of its lane (e.g. last_k's
        {X_0} ∪ {X_{i-K+1}..X_i})."""
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
            n_sources = []
            for i in rows:
                prefix = [j for j in slots if j <= i]
                if sources[i] != prefix:
                    return None  # not a prefix of its lane
                n_sources.append(len(prefix))
            lanes.append(Lane(tuple(slots), tuple(rows), tuple(n_sources)))
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

    def group_size(self, n: int, train: bool, device_type: str) -> int:
        """g for the blocked products of (B, T, C) tensors of n numbers: the one minimising `traffic`
        (1 to 8; every g against it on CPU: benchmarks/README.md, "groups"). On CPU, 1 (one product
        per DWA, the least Python per step) when the tensors have under 16,384 numbers, as in
        token-by-token decoding, where Python rather than memory traffic sets the time; other
        devices get the traffic model's choice at every size."""
        if device_type == "cpu" and n < 16384:
            return 1
        if train not in self._best_group:  # once per plan: `traffic` is Python, too slow for every forward pass
            self._best_group[train] = min(range(1, 9), key=lambda g: (self.traffic(g, train=train), g))
        return self._best_group[train]

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
                if t > 0 and t + D < lane_.n_sources[t - 1]:
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
                c0 = lane.n_sources[grp[0]]
                total += c0 + len(grp)  # P = A[grp, :c0] · X[:c0]
                total += sum(1 + lane.n_sources[t] - c0 + 1 for t in grp[1:])  # P[t] += A[t, c0:c_t] · X[c0:c_t]
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
                total += len(grp) + lane.n_sources[grp[-1]]
                total += 2 * len(grp) if len(grp) > 1 else 0  # the group's G copied into the buffer
        return total


def row_dots(G: torch.Tensor, X: torch.Tensor, chunk: int = 4096, max_pairs: float = 1024) -> torch.Tensor:
    """G · Xᵀ for G (R, N), X (S, N) with few rows and long ones: the α gradients' product.

    On CPU, as a sum over column chunks (one `torch.bmm` over chunks of `chunk` columns, each chunk's
    rows in cache, then the partial (R, S) results summed), up to R·S = `max_pairs`: there a plain
    product splits the tiny output rather than the long reduction and runs several times slower;
    beyond, both are compute-bound and the plain one is as fast (benchmarks/README.md, "kernels";
    `benchmarks/dwa_kernels.py`). Elsewhere the plain product.
    """
    R, S, N = G.shape[0], X.shape[0], G.shape[1]
    n_chunks = N // chunk
    if G.device.type != "cpu" or n_chunks < 2 or R * S > max_pairs:
        return G @ X.t()
    body = n_chunks * chunk
    g = G[:, :body].view(R, n_chunks, chunk).transpose(0, 1)  # (n_chunks, R, chunk)
    x = X[:, :body].view(S, n_chunks, chunk).permute(1, 2, 0)  # (n_chunks, chunk, S)
    out = torch.bmm(g, x).sum(0)  # (R, S)
    if body < N:
        out += G[:, body:] @ X[:, body:].t()
    return out


class Pass:
    """The state of one forward pass of the fast scheme, shared by its autograd nodes, and the sums.

    The DWA's sums are `average` (forward), `store_grad`, `grad_output` and `alpha_grads` (backward);
    `store` writes a block output into its lane row."""

    def __init__(self, plan: Plan, x0: torch.Tensor, A: list[torch.Tensor], track: bool, group: int | None,
                 alphas_need_grad: bool):
        self.plan, self.shape, self.track, self.A = plan, x0.shape, track, A  # A: (R, S) per lane
        n = x0.numel()
        self.group = group or plan.group_size(n, train=track, device_type=x0.device.type)
        # (max(S, R + D), N) per lane: X in rows [0, S) in the forward, G in rows [D, D + R) in the backward.
        self.buffers = [x0.new_empty((plan.buffer_rows(lane), n)) for lane in range(len(plan.lanes))]
        self.shift = [plan.grad_shift(lane) for lane in range(len(plan.lanes))]
        self.alphas_need_grad = alphas_need_grad
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
        t0, c0 = grp[0], lane.n_sources[grp[0]]
        if t == t0:  # the group's first DWA: all its sources are old ones for the others
            # A new partial sum per group. Its rows become the Y_t, which autograd keeps as the next
            # blocks' inputs and frees as the backward passes them (the same holds for the backward's
            # Q; benchmarks/README.md, "Memory").
            self.partial[n] = torch.mm(A[grp.start: grp.stop, :c0], X[:c0])  # (g, N)
        elif lane.n_sources[t] > c0:
            P = self.partial[n]
            a, x = A[t: t + 1, c0: lane.n_sources[t]], X[c0: lane.n_sources[t]]
            if self.track and i == self.plan.depth:
                # The model's output, which the caller holds through the whole backward: a tensor of
                # its own (same traffic, out of place), or its view would keep the group's other g - 1
                # rows alive to the end of the backward, where its peak is when the weight
                # gradients are large.
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
        c = lane.n_sources[grp[-1]]
        self.grad_A[n][grp.start: grp.stop, :c] = row_dots(G, X[:c])
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
        # are large.
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


def _output_and_mix(state: Pass, i: int, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """X_i = h + m into its lane row when kept, then Y_i: the DWA's average, or X_i itself."""
    x = state.store(i, h=h, m=m)
    return state.average(i) if i in state.plan.row_of else x


class _X0Node(torch.autograd.Function):
    """Y_0 = X_0 (kept in its lane when some DWA reads it). Its backward runs after every other DWA
    node's (its output feeds block 1), so it returns ∂L/∂X_0 and all the α gradients."""

    @staticmethod
    def forward(ctx, state: Pass, x0: torch.Tensor, *alphas: torch.Tensor) -> torch.Tensor:
        ctx.state, ctx.alpha_like, ctx.n_alphas = state, alphas[0], len(alphas)
        y0 = state.store(0, x=x0) if 0 in state.plan.slot_of else x0.view_as(x0)
        ctx.save_for_backward(*state.buffers)  # what the DWAs keep for the backward (filled later)
        return y0

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y0: torch.Tensor):
        state = ctx.state
        state.check_first_backward()
        with _no_autocast(grad_y0):  # the products in the buffers' dtype
            grad_x0 = state.grad_output(0, grad_y0) if 0 in state.plan.slot_of else grad_y0
            needed = any(ctx.needs_input_grad[2:])
            alpha_grads = state.alpha_grads(ctx.alpha_like) if needed else [None] * ctx.n_alphas
        state.backward_done = True  # the last node of the backward: G has overwritten X
        return (None, grad_x0, *alpha_grads)


class _BlockNode(torch.autograd.Function):
    """Block i's output X_i = h + m (written into its lane when kept), then Y_i (a DWA, or Y_i = X_i)."""

    @staticmethod
    def forward(ctx, state: Pass, i: int, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        ctx.state, ctx.i = state, i
        return _output_and_mix(state, i, h, m)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        state, i = ctx.state, ctx.i
        state.check_first_backward()
        dwa = i in state.plan.row_of
        with _no_autocast(grad_y):  # the products in the buffers' dtype
            if dwa:
                state.store_grad(i, grad_y)
            grad_x = state.grad_output(i, None if dwa else grad_y)
        return None, None, grad_x, grad_x


def _no_autocast(x: torch.Tensor):
    """The sums stay in the activation dtype under autocast (a no-op context when it is off)."""
    return torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else nullcontext()
