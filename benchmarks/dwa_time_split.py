#!/usr/bin/env python
"""Where the time that ours adds to a training step goes, against the budget each goal leaves.

    .venv/bin/python benchmarks/dwa_time_split.py                     # depth 48, width 256, 1x1 and 4x1
    .venv/bin/python benchmarks/dwa_time_split.py --reps 21 --patterns 1x1

Times a training step (forward + backward) of the Transformer trunk and of ours (`implementation=
"fast"`) in one process with interleaved repetitions, as `dwa_bench.py` does, and inside ours the
calls that do the DWA's sums: in the forward `_Run.average` (the products P = A·X), in the backward
`_Run.store_grad` (the α gradients' products G·Xᵀ and the copies of G), `_Run.grad_output` (the
products of ∂L/∂X_j) and `_Run.alpha_grads` (gathering the α gradients). Per repetition:

    added = ours - Transformer = DWA sums + rest

where "rest" is everything else ours adds: the autograd nodes around the sums (`_Step`, `_Begin`),
Python, and the blocks running beside the DWA's memory traffic. `_Run.store` (the block's last
addition written into its lane row) is not in the DWA sums: the Transformer makes the same
addition. A third model in the same loop, ours with every sum replaced by a no-op (`NoopSums`:
Y_i = X_i, ∂L/∂X_i = ∂L/∂Y_i, zero gradients for α), splits the rest in two:

    rest = nodes (what ours with no-op sums adds: autograd nodes, Python, the lane rows)
         + side effects of the sums (the blocks running slower beside their traffic, allocations)

The DWA sums are set against the traffic bound of the scheme (`Plan.traffic` transfers at the copy
bandwidth measured at the start) and the added time against the goal's budget, (goal - 1) x the
Transformer's step: the floor of the scheme is its bound plus the nodes. Prints medians over the
repetitions; asserts nothing about time. The no-op model computes the Transformer's function, not
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
from denselab.models import dwa as dwa_module  # noqa: E402
from denselab.models.dwa import group_size  # noqa: E402

FORWARD_SUMS, BACKWARD_SUMS = ("average",), ("store_grad", "grad_output", "alpha_grads")
TRAIN_GOALS = {pattern: goal for pattern, mode, goal in bench.GOALS if mode == "train"}  # issue 7, depth 48


class _RunMethods:
    """Replaces methods of `_Run` with those of `replacements()` while installed (`with`), and puts
    the originals back on leaving."""

    def replacements(self) -> dict:
        raise NotImplementedError

    def __enter__(self):
        replacements = self.replacements()  # built from the originals, before any is replaced
        self._originals = {name: getattr(dwa_module._Run, name) for name in replacements}
        for name, method in replacements.items():
            setattr(dwa_module._Run, name, method)
        return self

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(dwa_module._Run, name, original)


class SumTimer(_RunMethods):
    """Seconds spent in each `_Run` method that does the DWA's sums, while installed (`with`)."""

    def __init__(self):
        self.seconds = dict.fromkeys(FORWARD_SUMS + BACKWARD_SUMS, 0.0)

    def replacements(self) -> dict:
        return {name: self._timed(getattr(dwa_module._Run, name), name) for name in self.seconds}

    def _timed(self, method, name: str):
        def timed(run, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(run, *args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed

    def take(self) -> dict[str, float]:
        """The seconds since the last `take`, by method, and "forward" / "backward" in all."""
        taken, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return {**taken, "forward": sum(taken[n] for n in FORWARD_SUMS),
                "backward": sum(taken[n] for n in BACKWARD_SUMS)}


class NoopSums(_RunMethods):
    """While installed (`with`), the fast scheme runs with its sums as no-ops: Y_i = X_i (its lane
    row), so ∂L/∂X_i = ∂L/∂Y_i (passed on as it arrives), no α products, zero α gradients: the
    Transformer's function and gradients. Everything else of ours runs: lane rows, autograd nodes,
    Python."""

    def replacements(self) -> dict:
        def average(run, i: int) -> torch.Tensor:
            lane, s = run.plan.slot_of[i]
            return run.buffers[lane][s].view(run.shape)

        def store_grad(run, i: int, grad: torch.Tensor) -> None:
            run.noop_grad = grad  # ∂L/∂Y_i, which `grad_output(i)` passes on next

        def grad_output(run, j: int, through: torch.Tensor | None) -> torch.Tensor:
            return through if through is not None else run.noop_grad

        return {"average": average, "store_grad": store_grad, "grad_output": grad_output,
                "alpha_grads": lambda run, like: [like.new_zeros(n) for n in run.plan.alpha_sizes]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256, help="a multiple of 64 (heads of 64)")
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--patterns", nargs="+", default=["1x1", "4x1"])
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
        ours = DWA(args.depth, k, p, implementation="fast")
        mixers = {"transformer": Residual(args.depth), "ours": ours,
                  "no-op sums": DWA(args.depth, k, p, implementation="fast")}
        g = group_size(ours.plan, x0.numel(), train=True)
        forward_transfers = ours.plan.traffic(g)
        backward_transfers = ours.plan.traffic(g, train=True) - forward_transfers
        timer = SumTimer()
        sums: list[dict[str, float]] = []

        def step(name: str, mixer) -> None:
            if name == "no-op sums":
                with NoopSums():
                    bench.run_once(model, mixer, x0, grad, True)
                return
            with timer:
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
        if pattern in TRAIN_GOALS:
            goal = TRAIN_GOALS[pattern]
            budget = (goal - 1) * ms(base)
            bound = (forward_transfers + backward_transfers) * transfer_ms
            print(f"      goal x{goal:.2f}: a budget of {budget:5.1f} ms; the scheme's traffic bound alone is "
                  f"{bound:5.1f} ms, with the nodes {bound + ms(nodes):5.1f} ms, with the whole rest "
                  f"{bound + ms(rest):5.1f} ms", flush=True)


if __name__ == "__main__":
    main()
