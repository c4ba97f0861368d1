#!/usr/bin/env python
"""Where a training step's extra memory is: live tensor memory block by block, DWA against the
Transformer (not a test: it prints figures and asserts nothing).

    .venv/bin/python benchmarks/dwa_memory_by_block.py --width 768 --pattern 1x1
    .venv/bin/python benchmarks/dwa_memory_by_block.py --width 768 --pattern 1x1 --old 7a7f8ce

The trunk of `dwa_bench.py` (its batch for the width), one warm-up training step and one profiled
(`memory.allocation_timeline`), for the Transformer and for ours (`implementation="fast"`;
with `--old`, the `dwa.py` of that commit, as `dwa_ab.py` loads it). Prints, in (B, T, C) outputs:
what the DWA keeps between steps (the lane buffers of a `dwa.py` before 2026-12-07; nothing since),
each one's peak of the step, and for the
backward of the top and bottom `--blocks` blocks the peak inside that block's backward (from its
first matrix-product backward to the next block's), both and their difference. Memory alive before
the step (parameters, the kept buffers) is not counted in the step's figures, as in
`peak_allocated_bytes`: add the kept buffers for the extra peak that `dwa_bench.py` reports.
"""

from __future__ import annotations

import argparse
import bisect
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dwa_bench as bench  # noqa: E402
from dwa_ab import load_old_dwa  # noqa: E402
from memory import allocation_timeline  # noqa: E402

from denselab.models import DWA, Residual  # noqa: E402

MATMULS_PER_BLOCK = 4  # attention's qkv and output projections, the MLP's two


def block_peaks(model, mixer, x0: torch.Tensor, grad: torch.Tensor) -> tuple[int, list[int]]:
    """Peak bytes of a training step, and the peak inside each block's backward (block d first)."""
    def step():
        bench.run_once(model, mixer, x0, grad, True)
        bench.clear_grads(model, [mixer], x0)

    step()  # what stays between steps is then alive before the profiled one
    timeline, events = allocation_timeline(step)
    times = [t for t, _ in timeline]
    # The backward meets the blocks top down; the DWA adds no matrix-product node of autograd's.
    matmuls = sorted(e.start_ns() for e in events if e.name() == "autograd::engine::evaluate_function: MmBackward0")
    starts = matmuls[::MATMULS_PER_BLOCK] + [timeline[-1][0] + 1]

    def live_max(t0: int, t1: int) -> int:
        i, j = max(bisect.bisect_right(times, t0) - 1, 0), bisect.bisect_right(times, t1)
        return max(live for _, live in timeline[i:j])

    return max(live for _, live in timeline), [live_max(a, b) for a, b in zip(starts, starts[1:])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=768, help="a multiple of 64 (heads of 64)")
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--pattern", default="1x1")
    parser.add_argument("--old", default=None, help="commit whose dwa.py to profile instead of the working tree's")
    parser.add_argument("--blocks", type=int, default=6, help="blocks shown at the top and at the bottom")
    args = parser.parse_args(argv)

    tokens = bench.trunk_tokens(args.width)
    model = bench.build_trunk(args.depth, args.width, tokens[1], "cpu", torch.float32)
    x0 = torch.randn(*tokens, args.width, requires_grad=True)
    grad = torch.randn_like(x0)
    output = x0.numel() * x0.element_size()
    k, p = bench.parse_pattern(args.pattern)
    dwa = (load_old_dwa(args.old).DWA if args.old else DWA)(args.depth, k, p, implementation="fast")
    name = f"dwa.py at {args.old}" if args.old else "the working tree's dwa.py"
    print(f"== training step, depth {args.depth}, width {args.width}, batch {tokens[0]} x {tokens[1]}, "
          f"{args.pattern} ({name}); live tensors in outputs of {output / 2**20:.2f} MB ==")

    peak_transformer, transformer = block_peaks(model, Residual(args.depth), x0, grad)
    peak_dwa, ours = block_peaks(model, dwa, x0, grad)
    workspace = getattr(dwa, "workspace", {})  # buffers an older dwa.py kept between steps; none now
    kept = sum(t.numel() * t.element_size() for t in workspace.values() if isinstance(t, torch.Tensor))
    print(f"kept between steps by the DWA (lane buffers): {kept / output:.1f}")
    print(f"peak of the step: Transformer {peak_transformer / output:.1f}, DWA {peak_dwa / output:.1f} "
          f"(+{(peak_dwa - peak_transformer) / output:.1f}; with the kept buffers "
          f"+{(peak_dwa + kept - peak_transformer) / output:.1f})")
    shown = [b for b in range(args.depth) if b < args.blocks or b >= args.depth - args.blocks]
    for b in shown:  # b-th backward block from the top: block depth - b
        a, c = transformer[b], ours[b]
        print(f"  backward of block {args.depth - b:>3}: peak Transformer {a / output:8.1f}, "
              f"DWA {c / output:8.1f}, difference {(c - a) / output:+6.1f}")


if __name__ == "__main__":
    main()
