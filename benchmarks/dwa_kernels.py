#!/usr/bin/env python
"""The two products inside the fast DWA, timed alone (not a test; asserts nothing about time).

    .venv/bin/python benchmarks/dwa_kernels.py        # ~30 s on the 2-core CPU

1. forward: P = A · X[:c] with A (g, c) and X (c, N): the blocked scheme's product (g rows) against
   one row (g = 1), in GB/s of (c + g) tensors moved;
2. α gradients: G · Xᵀ with G (R, N), X (S, N) for the lane sizes of depth 48 (12x1: 4 x 5, 4x1: 12 x 13,
   2x1: 24 x 25, 1x1: 48 x 49), the plain product against `dwa_fast.row_dots` (a batched product over
   column chunks on CPU), in ms. What `row_dots`'s threshold rests on.

N = 4 x 256 x 256 (the `dwa` section's width-256 tensors). X rotates over 8 buffers (400 MB in all) so
that no product finds its input in cache. Output: experiments/bench/<device>-fp32/kernels.csv.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from denselab.io import atomic_write_json, atomic_write_text, git_info, machine_info, read_json  # noqa: E402
from denselab.models.dwa_fast import row_dots  # noqa: E402

N, ROWS, BUFFERS = 4 * 256 * 256, 49, 8


def median_ms(fn, buffers: list[torch.Tensor], reps: int = 30) -> float:
    for i in range(4):
        fn(buffers[i % len(buffers)])
    times = []
    for r in range(reps):
        x = buffers[r % len(buffers)]
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    buffers = [torch.randn(ROWS, N) for _ in range(BUFFERS)]
    G = torch.randn(48, N)
    mb = N * 4 / 1e6  # one (B, T, C) tensor
    rows = []
    print(f"== DWA kernels, N = {N}, fp32, {torch.get_num_threads()} threads ==")
    for g, c in [(1, 12), (3, 12), (1, 42), (6, 40), (7, 42)]:
        A, out = torch.randn(g, c), torch.empty(g, N)
        ms = median_ms(lambda X, A=A, out=out, c=c: torch.mm(A, X[:c], out=out), buffers)
        rows.append({"product": "forward A·X", "rows": g, "cols": c, "variant": "torch.mm", "ms": ms,
                     "gb_per_s": (c + g) * mb / ms})
        print(f"  forward  g={g} c={c:<3}  torch.mm {ms:7.3f} ms  {(c + g) * mb / ms:5.1f} GB/s")
    for R, S in [(4, 5), (12, 13), (24, 25), (48, 49)]:
        for variant, fn in [("G @ X.t()", lambda X, R=R, S=S: G[:R] @ X[:S].t()),
                            ("chunked bmm", lambda X, R=R, S=S: row_dots(G[:R], X[:S], max_pairs=float("inf"))),
                            ("row_dots", lambda X, R=R, S=S: row_dots(G[:R], X[:S]))]:
            ms = median_ms(fn, buffers)
            rows.append({"product": "alpha grads G·Xᵀ", "rows": R, "cols": S, "variant": variant, "ms": ms,
                         "gb_per_s": (R + S) * mb / ms})
            print(f"  α grads  {R:>2} x {S:<2}  {variant:<12} {ms:7.3f} ms  {(R + S) * mb / ms:5.1f} GB/s")
    out = ROOT / "experiments" / "bench" / "cpu-fp32"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "kernels.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
    machine = {**machine_info(), **git_info(ROOT), "threads": torch.get_num_threads(), "device": "cpu",
               "dtype": "fp32", "command": " ".join([Path(sys.executable).name, *sys.argv])}
    sections = read_json(out / "machine.json") or {}
    atomic_write_json(out / "machine.json", {**sections, "kernels": machine})
    print(f"wrote {out.relative_to(ROOT)}/kernels.csv")


if __name__ == "__main__":
    main()
