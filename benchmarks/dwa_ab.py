"""A/B of the DWA at an earlier commit against the working tree's, on a training step of the trunk.

    .venv/bin/python benchmarks/dwa_ab.py --old ef13d3b --width 256 --reps 31 --patterns 1x1 4x1

Loads `src/denselab/models/dwa.py` as it was at `--old` (`git show`) beside the current one, and
times the Transformer trunk, the old and the new DWA (both `implementation="fast"`, or
`--implementation`) in one process
with interleaved repetitions, as `dwa_bench.py` does. Prints each one's median ratio to the
Transformer and new / old (ratio of the medians), with the median and quartiles [q1, q3] of the
per-repetition ratios: a change whose ratio lies inside them is inside this host's noise. Asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dwa_bench as bench

from denselab.models import DWA, Residual

def load_old_dwa(commit: str):
    """The dwa module as it was at `commit`, imported under the name `dwa_at_<commit>`."""
    source = subprocess.run(["git", "show", f"{commit}:src/denselab/models/dwa.py"], cwd=bench.ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "dwa_old.py"
    path.write_text(source)
    name = f"dwa_at_{commit}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="commit whose dwa.py is the baseline")
    parser.add_argument("--width", type=int, default=256, help="a multiple of 64 (heads of 64)")
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--patterns", nargs="+", default=["1x1", "4x1"])
    parser.add_argument("--implementation", default="fast", choices=["auto", "fast", "reference"],
                        help="the DWA implementation both sides run")
    args = parser.parse_args(argv)

    old = load_old_dwa(args.old)
    bench.steady_allocator()
    tokens = bench.trunk_tokens(args.width)
    model = bench.build_trunk(args.depth, args.width, tokens[1], "cpu", torch.float32)
    x0 = torch.randn(*tokens, args.width, requires_grad=True)
    grad = torch.randn_like(x0)
    print(f"== train step, depth {args.depth}, width {args.width}, batch {tokens[0]} x {tokens[1]}, "
          f"{args.reps} repetitions, implementation={args.implementation!r}; old = dwa.py at {args.old}, "
          f"new = working tree ==", flush=True)
    for pattern in args.patterns:
        k, p = bench.parse_pattern(pattern)
        mixers = {"transformer": Residual(args.depth),
                  "old": old.DWA(args.depth, k, p, implementation=args.implementation),
                  "new": DWA(args.depth, k, p, implementation=args.implementation)}
        calls = {name: (lambda m=m: bench.run_once(model, m, x0, grad, True)) for name, m in mixers.items()}
        times = bench.time_paired(calls, args.reps, 2, "cpu",
                                  between=lambda mixers=mixers: bench.clear_grads(model, mixers.values(), x0))
        base = times["transformer"]
        for name in ("old", "new"):
            q1, paired, q3 = bench.paired_ratios(times[name], base)
            ratio = statistics.median(times[name]) / statistics.median(base)
            print(f"  {pattern} {name}: x{ratio:.3f}  per rep. {paired:.3f} [{q1:.3f}, {q3:.3f}] vs the Transformer",
                  flush=True)
        q1, paired, q3 = bench.paired_ratios(times["new"], times["old"])
        ratio = statistics.median(times["new"]) / statistics.median(times["old"])
        print(f"  {pattern} new / old: x{ratio:.3f}  per rep. {paired:.3f} [{q1:.3f}, {q3:.3f}]", flush=True)


if __name__ == "__main__":
    main()
