"""A/B of the DWA at an earlier commit against the working tree's, on a training step of the trunk
(or, with `--decode N`, on KV-cached decoding of N tokens).

    .venv/bin/python benchmarks/dwa_ab.py --old ef13d3b --width 256 --reps 31 --patterns 1x1 4x1
    .venv/bin/python benchmarks/dwa_ab.py --old 6485a3e --decode 64 --patterns 1x1 --reps 9

Loads `src/denselab/models/dwa.py` as it was at `--old` (`git show`) beside the current one, and
times the Transformer trunk, the old and the new DWA (both `implementation="fast"`, or
`--implementation`) in one process
with interleaved repetitions, as `dwa_bench.py` does. Prints each one's median ratio to the
Transformer and new / old (ratio of the medians), with the median and quartiles [q1, q3] of the
per-repetition ratios: a change whose ratio lies inside them is inside this host's noise. Asserts
nothing about time. `--decode N`: whole models (vocabulary 512, the same weights in all three) fed a
16-token prompt and then N tokens one at a time with `GPT.kv_caching`, greedy; the time of a call
includes the prompt.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dwa_bench as bench

from denselab.models import DWA, GPT, Residual

def _git_show(commit: str, path: str) -> str | None:
    proc = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=bench.ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def _load(name: str, source: str):
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def load_old_dwa(commit: str):
    """The dwa module as it was at `commit`, imported under the name `dwa_at_<commit>`; from the commit
    on which the fast scheme has a module of its own (`dwa_fast.py`), with that commit's one."""
    source = _git_show(commit, "src/denselab/models/dwa.py")
    if source is None:
        raise SystemExit(f"{commit}: no src/denselab/models/dwa.py there")
    fast = _git_show(commit, "src/denselab/models/dwa_fast.py")
    if fast is not None:
        fast_name = "dwa_fast_at_" + re.sub(r"\W", "_", commit)  # a name an import statement takes
        _load(fast_name, fast)
        source = source.replace("from denselab.models.dwa_fast import", f"from {fast_name} import")
    return _load(f"dwa_at_{commit}", source)


def print_ab(pattern: str, times: dict[str, list[float]]) -> None:
    base = times["transformer"]
    for name in ("old", "new"):
        q1, paired, q3 = bench.paired_ratios(times[name], base)
        ratio = statistics.median(times[name]) / statistics.median(base)
        print(f"  {pattern} {name}: x{ratio:.3f}  per rep. {paired:.3f} [{q1:.3f}, {q3:.3f}] vs the Transformer",
              flush=True)
    q1, paired, q3 = bench.paired_ratios(times["new"], times["old"])
    ratio = statistics.median(times["new"]) / statistics.median(times["old"])
    print(f"  {pattern} new / old: x{ratio:.3f}  per rep. {paired:.3f} [{q1:.3f}, {q3:.3f}]", flush=True)


def decode_ab(args, old) -> None:
    vocab, prompt = 512, 16
    idx = torch.randint(0, vocab, (1, prompt))
    print(f"== KV-cached decoding, depth {args.depth}, width {args.width}, {args.decode} tokens after a "
          f"{prompt}-token prompt, batch 1, {args.reps} repetitions, implementation={args.implementation!r}; "
          f"old = dwa.py at {args.old}, new = working tree ==", flush=True)

    def decode(model: GPT) -> None:
        with torch.no_grad(), model.kv_caching(1):
            token = model(idx)[:, -1:].argmax(-1)
            for _ in range(args.decode):
                token = model(token)[:, -1:].argmax(-1)

    for pattern in args.patterns:
        k, p = bench.parse_pattern(pattern)
        models = {}
        for name, mixer in [("transformer", Residual(args.depth)),
                            ("old", old.DWA(args.depth, k, p, implementation=args.implementation)),
                            ("new", DWA(args.depth, k, p, implementation=args.implementation))]:
            torch.manual_seed(0)
            models[name] = GPT(vocab, args.depth, args.width, args.width // 64, prompt + args.decode + 1,
                               mixer=mixer).eval()
            models[name].load_state_dict(models["transformer"].state_dict(), strict=False)
        calls = {name: (lambda m=m: decode(m)) for name, m in models.items()}
        print_ab(pattern, bench.time_paired(calls, args.reps, 1, "cpu"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="commit whose dwa.py is the baseline")
    parser.add_argument("--width", type=int, default=256, help="a multiple of 64 (heads of 64)")
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--patterns", nargs="+", default=["1x1", "4x1"])
    parser.add_argument("--implementation", default="fast", choices=["auto", "fast", "reference"],
                        help="the DWA implementation both sides run")
    parser.add_argument("--malloc", default="steady", choices=["steady", "default"],
                        help="keep freed memory in the process (dwa_bench.steady_allocator) or glibc's defaults, "
                             "as training runs")
    parser.add_argument("--decode", type=int, default=None, metavar="N",
                        help="time KV-cached decoding of N tokens instead of a training step")
    args = parser.parse_args(argv)

    old = load_old_dwa(args.old)
    if args.decode:
        return decode_ab(args, old)
    if args.malloc == "steady":
        bench.steady_allocator()
    tokens = bench.trunk_tokens(args.width)
    model = bench.build_trunk(args.depth, args.width, tokens[1], "cpu", torch.float32)
    x0 = torch.randn(*tokens, args.width, requires_grad=True)
    grad = torch.randn_like(x0)
    print(f"== train step, depth {args.depth}, width {args.width}, batch {tokens[0]} x {tokens[1]}, "
          f"{args.reps} repetitions, implementation={args.implementation!r}, malloc {args.malloc}; "
          f"old = dwa.py at {args.old}, "
          f"new = working tree ==", flush=True)
    for pattern in args.patterns:
        k, p = bench.parse_pattern(pattern)
        mixers = {"transformer": Residual(args.depth),
                  "old": old.DWA(args.depth, k, p, implementation=args.implementation),
                  "new": DWA(args.depth, k, p, implementation=args.implementation)}
        calls = {name: (lambda m=m: bench.run_once(model, m, x0, grad, True)) for name, m in mixers.items()}
        times = bench.time_paired(calls, args.reps, 2, "cpu",
                                  between=lambda mixers=mixers: bench.clear_grads(model, mixers.values(), x0))
        print_ab(pattern, times)


if __name__ == "__main__":
    main()
