#!/usr/bin/env python
"""The fixed cost of a DWA step: time per block that ours and the reference loop add to the
Transformer when the tensors are tiny (batch 1 x 32 tokens, width 64, one thread), so that what is
measured is Python, autograd nodes and kernel launches, not memory traffic. At depth 48 this cost is
paid 48 times per step at any size (benchmarks/README.md, "Where the time goes").

    .venv/bin/python benchmarks/dwa_overhead.py                   # 1x1 and 4x1, depth 48
    .venv/bin/python benchmarks/dwa_overhead.py --patterns 1x1 --reps 50

Prints microseconds per block over the Transformer, median of interleaved repetitions; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dwa_bench import build_trunk, clear_grads, parse_pattern, run_once, time_interleaved  # noqa: E402

from denselab.models import DWA, Residual  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--patterns", nargs="+", default=["1x1", "4x1"])
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = build_trunk(args.depth, 64, 32, "cpu", torch.float32)
    print(f"== fixed cost per block, depth {args.depth}, tensors (1, 32, 64), 1 thread, torch {torch.__version__} ==")
    for pattern in args.patterns:
        k, p = parse_pattern(pattern)
        # Tiny tensors on CPU get one product per DWA (group 1); take the group that large tensors
        # get, so that the blocked scheme's own steps are what is timed.
        ours = DWA(args.depth, k, p, implementation="fast")
        for mode in ("infer", "train"):
            train = mode == "train"
            ours.fast.group = ours.fast.plan.group_size(1 << 20, train=train, device_type="cpu")
            mixers = {"transformer": Residual(args.depth), "ours": ours,
                      "reference": DWA(args.depth, k, p, implementation="reference")}
            x0 = torch.randn(1, 32, 64, requires_grad=train)
            grad = torch.randn_like(x0)
            calls = {name: (lambda m=m: run_once(model, m, x0, grad, train)) for name, m in mixers.items()}
            t = time_interleaved(calls, args.reps, 3, "cpu", between=lambda: clear_grads(model, mixers.values(), x0))
            per_block = {name: 1e6 * (t[name] - t["transformer"]) / args.depth for name in ("ours", "reference")}
            print(f"  {pattern:>4} {mode:<5} Transformer {1e3 * t['transformer']:7.2f} ms; per block: ours "
                  f"+{per_block['ours']:6.1f} us (g={ours.fast.group}), reference +{per_block['reference']:6.1f} us",
                  flush=True)


if __name__ == "__main__":
    main()
