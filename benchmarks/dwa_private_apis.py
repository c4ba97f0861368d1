#!/usr/bin/env python
"""What the fast DWA's private torch API buys, with and without side by side (not a test: it prints
figures and asserts nothing about time; < 1 min on the 2-core reference CPU).

    .venv/bin/python benchmarks/dwa_private_apis.py                  # depth 48, width 256, 1x1
    .venv/bin/python benchmarks/dwa_private_apis.py --threads 1      # on a host shared with other work

`torch.autograd._unsafe_preserve_version_counter`: the fast scheme writes into rows of a buffer whose
other rows autograd has saved, hidden from autograd's version counter. Without it (`Pass._hidden_write`
a no-op, through `FastScheme.pass_type`) autograd refuses the training step, which this prints; so
without it the fast scheme cannot run, and what it buys is the fast scheme's time against the
reference sums' (`implementation="reference"`), timed here in the same loop.

(The fast scheme used a second one, `torch._C._storage_Use_Count`, to reuse its buffers from one
forward pass to the next; measured with and without by the first version of this script, it saved
nothing beyond the noise, and was removed: benchmarks/README.md, "Private APIs".)

Training steps (forward + backward of the transformer trunk, as in `dwa_bench.py`) and forward passes
without autograd, interleaved repetitions; per pair the median times and the median [q1, q3] of the
per-repetition ratios with / without, on the wall clock and on the process's CPU time (user + system,
all threads). On a host shared with other work the CPU time is the steadier of the two, most of all
with `--threads 1`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dwa_bench as bench  # noqa: E402

from denselab.models import DWA  # noqa: E402
from denselab.models.dwa_fast import Pass  # noqa: E402


class VisibleWrites(Pass):
    """The fast scheme with its buffer writes shown to autograd's version counter."""

    def _hidden_write(self, tensor: torch.Tensor):
        return nullcontext()


def time_both(calls: dict, reps: int, between) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of every call in every repetition; repetition r runs every call once,
    starting at a rotating offset, after one warm-up round."""
    names = list(calls)
    for name in names:
        calls[name]()
        between()
    times = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            calls[name]()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
            between()
    return times


def compare(label: str, calls: dict, reps: int, between) -> None:
    times = time_both(calls, reps, between)
    (with_name, with_t), (without_name, without_t) = times.items()
    parts = []
    for clock in ("wall", "cpu"):
        q1, ratio, q3 = bench.paired_ratios(with_t[clock], without_t[clock])
        parts.append(f"{clock} {1e3 * statistics.median(with_t[clock]):7.0f} / {1e3 * statistics.median(without_t[clock]):7.0f}"
                     f" ms, x{ratio:.3f} [{q1:.3f}, {q3:.3f}]")
    print(f"  {label:<5} with ({with_name}) / without ({without_name}):  " + "   ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--width", type=int, default=256, help="a multiple of 64 (heads of 64)")
    parser.add_argument("--pattern", default="1x1", help="kxp, one the fast scheme serves")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    k, p = bench.parse_pattern(args.pattern)
    tokens = bench.trunk_tokens(args.width)
    model = bench.build_trunk(args.depth, args.width, tokens[1], "cpu", torch.float32)
    x0 = torch.randn(*tokens, args.width, requires_grad=True)
    grad = torch.randn_like(x0)
    fast = DWA(args.depth, k, p, implementation="fast")
    reference = DWA(args.depth, k, p, implementation="reference")
    print(f"== fast DWA, private torch APIs: depth {args.depth}, width {args.width}, batch {tokens[0]} x {tokens[1]}, "
          f"{args.pattern}, fp32, {torch.get_num_threads()} threads, {args.reps} interleaved repetitions; "
          f"torch {torch.__version__} ==", flush=True)

    def between():
        bench.clear_grads(model, [fast, reference], x0)

    print("torch.autograd._unsafe_preserve_version_counter (buffer writes hidden from autograd):")
    visible = DWA(args.depth, k, p, implementation="fast")
    visible.fast.pass_type = VisibleWrites
    try:
        bench.run_once(model, visible, x0, grad, True)
        print("  without: the training step ran (unexpected)")
    except RuntimeError as error:
        print(f"  without: autograd refuses the training step: {str(error).splitlines()[0][:150]}")
    between()
    for mode in ("train", "infer"):
        train = mode == "train"
        calls = {"fast scheme": lambda m=fast: bench.run_once(model, m, x0, grad, train),
                 "reference sums": lambda m=reference: bench.run_once(model, m, x0, grad, train)}
        compare(mode, calls, args.reps, between)


if __name__ == "__main__":
    main()
