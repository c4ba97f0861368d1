#!/usr/bin/env python
"""Where the time that ours adds to a training step goes, and against a target ratio, the budget it leaves.

    .venv/bin/python benchmarks/dwa_time_split.py                     # depth 48, width 256, 1x1 and 4x1
    .venv/bin/python benchmarks/dwa_time_split.py --reps 21 --patterns 1x1 --target 1.06

Times a training step (forward + backward) of the Transformer trunk and of ours (`implementation=
"fast"`) in one process with interleaved repetitions, as `dwa_bench.py` does, and inside ours the
calls that do the DWA's sums: in the forward `Pass.average` (the products P = A·X), in the backward
`Pass.store_grad` (the α gradients' products G·Xᵀ and the copies of G), `Pass.grad_output` (the
products of ∂L/∂X_j) and `Pass.alpha_grads` (gathering the α gradients). Per repetition:

    added = ours - Transformer = DWA sums + rest

where "rest" is everything else ours adds: the autograd nodes around the sums (`_BlockNode`, `_X0Node`),
Python, and the blocks running beside the DWA's memory traffic. `Pass.store` (the block's last
addition written into its lane row) is not in the DWA sums: the Transformer makes the same
addition. A third model in the same loop, ours with every sum replaced by a no-op (`NoopPass`:
Y_i = X_i, ∂L/∂X_i = ∂L/∂Y_i, zero gradients for α), splits the rest in two:

    rest = nodes (what ours with no-op sums adds: autograd nodes, Python, the lane rows)
         + side effects of the sums (the blocks running slower beside their traffic, allocations)

The DWA sums are set against the traffic bound of the scheme (`Plan.traffic` transfers at the copy
bandwidth measured at the start) and, with `--target r`, the added time against the budget that a
ratio r to the Transformer leaves, (r - 1) x the Transformer's step: the floor of the scheme is its
bound plus the nodes. Both hook into the fast scheme through its public seam, `FastScheme.pass_type`
(a subclass of `Pass` per DWA; nothing is patched). Prints medians over the repetitions; asserts
nothing about time. The no-op model computes the Transformer's function, not
the DenseFormer's (on purpose: it times everything of ours but the sums), and only inside this script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dwa_bench as bench  # noqa: E402

from denselab.io import git_info  # noqa: E402
from denselab.models import DWA, Residual  # noqa: E402
from denselab.models.dwa_fast import Pass  # noqa: E402

FORWARD_SUMS, BACKWARD_SUMS = ("average",), ("store_grad", "grad_output", "alpha_grads")


class SumTimer:
    """Seconds spent in each `Pass` method that does the DWA's sums, in the DWAs whose fast scheme runs
    `timer.pass_type` (a subclass of `Pass` whose sums are timed)."""

    def __init__(self):
        self.seconds = dict.fromkeys(FORWARD_SUMS + BACKWARD_SUMS, 0.0)
        self.pass_type = type("TimedPass", (Pass,), {name: self._timed(getattr(Pass, name), name)
                                                     for name in self.seconds})

    def _timed(self, method, name: str):
        def timed(state, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(state, *args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed

    def take(self) -> dict[str, float]:
        """The seconds since the last `take`, by method, and "forward" / "backward" in all."""
        taken, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return {**taken, "forward": sum(taken[n] for n in FORWARD_SUMS),
                "backward": sum(taken[n] for n in BACKWARD_SUMS)}


class NoopPass(Pass):
    """The fast scheme with its sums as no-ops: Y_i = X_i (its lane row), so ∂L/∂X_i = ∂L/∂Y_i (passed
    on as it arrives), no α products, zero α gradients: the Transformer's function and gradients.
    Everything else of ours runs: lane rows, autograd nodes, Python."""

    def average(self, i: int) -> torch.Tensor:
        lane, s = self.plan.slot_of[i]
        return self.buffers[lane][s].view(self.shape)

    def store_grad(self, i: int, grad: torch.Tensor) -> None:
        self.noop_grad = grad  # ∂L/∂Y_i, which `grad_output(i)` passes on next

    def grad_output(self, j: int, through: torch.Tensor | None) -> torch.Tensor:
        return through if through is not None else self.noop_grad

    def alpha_grads(self, alphas_like: torch.Tensor) -> list[torch.Tensor]:
        return [alphas_like.new_zeros(n) for n in self.plan.alpha_sizes]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256, help="a multiple of 64 (heads of 64)")
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--patterns", nargs="+", default=["1x1", "4x1"])
    parser.add_argument("--target", type=float, default=None,
                        help="a ratio to the Transformer: print the budget it leaves the DWA, (target - 1) x its step")
    args = parser.parse_args(argv)

    bench.steady_allocator()
    tokens = bench.trunk_tokens(args.width)
    model = bench.build_trunk(args.depth, args.width, tokens[1], "cpu", torch.float32)
    x0 = torch.randn(*tokens, args.width, requires_grad=True)
    grad = torch.randn_like(x0)
    bandwidth = bench.copy_bandwidth(x0.numel(), "cpu", torch.float32)
    transfer_ms = 1e3 * x0.numel() * x0.element_size() / bandwidth  # one (B, T, C) tensor read or written
    git = git_info(bench.ROOT)
    commit = (git["commit"] or "?")[:7] + (" (uncommitted changes)" if git["dirty"] else "")
    print(f"== train step, depth {args.depth}, width {args.width}, batch {tokens[0]} x {tokens[1]}, "
          f"{args.reps} interleaved repetitions, copy bandwidth {bandwidth / 1e9:.1f} GB/s "
          f"({transfer_ms:.3f} ms per tensor transfer), torch {torch.__version__}, commit {commit} ==", flush=True)
    for pattern in args.patterns:
        k, p = bench.parse_pattern(pattern)
        timer = SumTimer()
        ours, noop = DWA(args.depth, k, p, implementation="fast"), DWA(args.depth, k, p, implementation="fast")
        ours.fast.pass_type, noop.fast.pass_type = timer.pass_type, NoopPass
        mixers = {"transformer": Residual(args.depth), "ours": ours, "no-op sums": noop}
        plan = ours.fast.plan
        g = plan.group_size(x0.numel(), train=True, device_type="cpu")
        forward_transfers = plan.traffic(g)
        backward_transfers = plan.traffic(g, train=True) - forward_transfers
        sums: list[dict[str, float]] = []

        def step(name: str, mixer) -> None:
            bench.run_once(model, mixer, x0, grad, True)
            if name == "ours":
                sums.append(timer.take())

        calls = {name: (lambda name=name, m=m: step(name, m)) for name, m in mixers.items()}
        times = bench.time_paired(calls, args.reps, 2, "cpu",
                                  between=lambda: bench.clear_grads(model, mixers.values(), x0))
        sums = sums[-args.reps:]  # the timed repetitions (the warm-up ones came first)
        base, mine, noop = times["transformer"], times["ours"], times["no-op sums"]

        def ms(values) -> float:
            return 1e3 * statistics.median(values)

        added = [o - t for o, t in zip(mine, base)]
        forward, backward = [s["forward"] for s in sums], [s["backward"] for s in sums]
        rest = [a - f - b for a, f, b in zip(added, forward, backward)]
        nodes = [n - t for n, t in zip(noop, base)]
        q1, ratio, q3 = bench.paired_ratios(mine, base)
        print(f"  {pattern} (g = {g}): Transformer {ms(base):7.1f} ms, ours {ms(mine):7.1f} ms, "
              f"per rep. x{ratio:.3f} [{q1:.3f}, {q3:.3f}]; ours adds {ms(added):6.1f} ms:")
        print(f"      DWA sums, forward   {ms(forward):6.1f} ms   bound {forward_transfers:5d} transfers "
              f"= {forward_transfers * transfer_ms:6.1f} ms")
        print(f"      DWA sums, backward  {ms(backward):6.1f} ms   bound {backward_transfers:5d} transfers "
              f"= {backward_transfers * transfer_ms:6.1f} ms   ("
              + ", ".join(f"{name} {ms([s[name] for s in sums]):.1f}" for name in BACKWARD_SUMS) + " ms)")
        n1, nr, n3 = bench.paired_ratios(noop, base)
        print(f"      rest (autograd nodes, Python, the blocks beside the DWA) {ms(rest):6.1f} ms:   nodes "
              f"{ms(nodes):5.1f} ms (ours with no-op sums, per rep. x{nr:.3f} [{n1:.3f}, {n3:.3f}]), side effects "
              f"of the sums {ms(rest) - ms(nodes):5.1f} ms")
        if args.target is not None:
            budget = (args.target - 1) * ms(base)
            bound = (forward_transfers + backward_transfers) * transfer_ms
            print(f"      target x{args.target:.2f}: a budget of {budget:5.1f} ms; the scheme's traffic bound alone is "
                  f"{bound:5.1f} ms, with the nodes {bound + ms(nodes):5.1f} ms, with the whole rest "
                  f"{bound + ms(rest):5.1f} ms", flush=True)


if __name__ == "__main__":
    main()
