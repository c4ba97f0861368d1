#!/usr/bin/env python
"""DWA speed benchmark (not a test: it asserts nothing about absolute time). `make bench` runs it.

Side by side, in one process, with interleaved repetitions and medians, on the transformer trunk
(embedded tokens X_0 through the blocks and the depth mixing to Y_d; no embedding or LM head, so the
ratios are those of the part DWA changes, the strictest measure):

  transformer   the plain residual stream (`denselab.models.Residual`)
  keep_outputs  the same, but every block output stays alive until the end, as any DWA needs (no
                averaging at all): what keeping the outputs alone costs
  naive         App. A.1, Listings 1-2: a list of outputs, one multiply-add per source
  paper_a2      App. A.2, Listing 3: accumulator + InPlaceSetSlice + tensordot (benchmarks/paper_listings.py)
  ours          `denselab.models.DWA`, implementation="auto": the fast scheme of src/denselab/models/dwa.py
                where it pays, its reference loop elsewhere (the `implementation` column says which ran)

for depth 12 and 48, k×p in {1x1, 2x1, 4x1, 4x5, 12x1}, forward only ("infer", no autograd) and
forward + backward ("train"), at a small width (256) and at the paper's (768), heads of 64 dims.
Per row: the median time, its ratio to the Transformer's median, and the median and quartiles
[q1, q3] of the per-repetition ratios (each repetition runs every variant once, so these are free of
the host's slow drifts; the summary at the largest depth quotes their median), for ours the speed-up
over paper_a2 and the
achieved fraction of the memory-traffic bound of its scheme (`Plan.traffic` tensor transfers at the
copy bandwidth measured here, over the time it adds to the Transformer). Section "memory": the peak
extra memory of two training steps at the largest depth (on CPU the RSS high-water mark of a fresh
process over its RSS before the steps, with a fixed glibc mmap threshold so that freed tensors go
back to the OS; `max_memory_allocated` on CUDA).

On CPU the process first keeps freed memory (glibc `mallopt`, see `steady_allocator`; `--malloc default`
turns that off), so that no variant pays page faults that another one happened to avoid.

Then: ours with every group size of its blocked scheme (what `Plan.group_size` rests on), whole-model
`torch.compile` (cold-cache compile time and compiled step ratios), and KV-cached decoding
tokens/s of 48-block models with the GPT-2 vocabulary (`denselab.generate`).

    .venv/bin/python benchmarks/dwa_bench.py                 # everything (CPU: ~25 min)
    .venv/bin/python benchmarks/dwa_bench.py --quick         # tiny shapes, seconds (what the tests run)
    .venv/bin/python benchmarks/dwa_bench.py --device cuda --dtype bf16

Results: experiments/bench/<device>-<dtype>/{dwa,memory,groups,compile,decode}.csv and machine.json (machine,
commit and command per section; atomic writes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from denselab.io import atomic_write_json, atomic_write_text, git_info, machine_info, read_json  # noqa: E402
from denselab.models import DWA, GPT, Residual  # noqa: E402
from memory import peak_allocated_bytes  # noqa: E402
from paper_listings import NaiveDWA, PaperA2DWA  # noqa: E402

PATTERNS = ["1x1", "2x1", "4x1", "4x5", "12x1"]
VARIANTS = ["naive", "paper_a2", "ours"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_pattern(pattern: str) -> tuple[int, int]:
    k, p = pattern.split("x")
    return int(k), int(p)


class KeepOutputs(torch.nn.Module):
    """The Transformer's wiring, with every block output kept alive until the end of the forward
    pass (as a DWA keeps them), and no averaging."""

    def forward(self, x0: torch.Tensor, blocks: torch.nn.ModuleList, rotary) -> torch.Tensor:
        outputs, x = [x0], x0
        for block in blocks:
            x = block(x, rotary)
            outputs.append(x)
        return x


def build_mixer(variant: str, depth: int, pattern: str | None) -> torch.nn.Module:
    if variant == "transformer":
        return Residual(depth)
    if variant == "keep_outputs":
        return KeepOutputs()
    k, p = parse_pattern(pattern)
    return {"naive": NaiveDWA, "paper_a2": PaperA2DWA, "ours": DWA}[variant](depth, k, p)


def trunk_tokens(width: int, quick: bool = False) -> tuple[int, int]:
    """(batch, seq) of the trunk at a width: 4 x 256 at the small width, 1 x 256 at the paper's."""
    return (1, 32) if quick else (4, 256) if width < 512 else (1, 256)


def build_trunk(depth: int, width: int, seq: int, device: str, dtype: torch.dtype) -> GPT:
    torch.manual_seed(0)
    return GPT(64, depth, width, width // 64, seq, mixer=Residual(depth)).to(device=device, dtype=dtype)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_once(model: GPT, mixer, x0: torch.Tensor, grad: torch.Tensor, train: bool) -> None:
    if train:
        mixer(x0, model.blocks, model.rotary).backward(grad)
    else:
        with torch.no_grad():
            mixer(x0, model.blocks, model.rotary)


def clear_grads(model: GPT, mixers, x0: torch.Tensor) -> None:
    x0.grad = None
    for p in [*model.parameters(), *(p for m in mixers for p in m.parameters())]:
        p.grad = None


def time_interleaved(calls: dict, reps: int, warmup: int, device: str, between=lambda: None) -> dict[str, float]:
    """Median seconds per call; repetition r runs every call once, starting at a rotating offset."""
    return {name: statistics.median(t) for name, t in time_paired(calls, reps, warmup, device, between).items()}


def time_paired(calls: dict, reps: int, warmup: int, device: str, between=lambda: None) -> dict[str, list[float]]:
    """Seconds of every call in every repetition, in repetition order: times[a][r] and times[b][r]
    ran next to each other, so their ratio is free of the host's slow drifts (see `paired_ratios`)."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
            between()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            calls[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
            between()
    return times


def paired_ratios(times: list[float], base: list[float]) -> tuple[float, float, float]:
    """Lower quartile, median and upper quartile of the per-repetition ratios times[r] / base[r].

    Each repetition runs every variant once, so its ratio is free of the host's slow drifts; the
    ratio of the two medians is not, and can fall outside [q1, q3] when the base's median
    repetition happened to be slow or fast (1x1 train at width 256, depth 48, in the first run at
    commit 302dbd7: x1.057 with [q1, q3] = [1.065, 1.113], benchmarks/README.md). The summary
    quotes the per-repetition median."""
    ratios = [t / b for t, b in zip(times, base)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q1, median, q3


def steady_allocator() -> str:
    """Keep freed memory in the process (glibc `mallopt`), so that every variant reuses warm pages.

    Why: by default glibc maps each large tensor on its own and unmaps it when freed, or trims the
    heap, depending on the history of the process; a step that gets fresh pages pays a page fault
    per 4 KB, and which variant pays it depends on what ran before. Measured at depth 48, width 256,
    the same Transformer forward took 406 ms in one run and 478 ms in another, and keeping the block
    outputs alone (`keep_outputs`) cost x1.016 in one and x1.165 in the other. With mmap off and no
    trimming, what a step allocates comes from pages already touched, as with a GPU's caching allocator.
    `--malloc default` measures with glibc's defaults instead.
    """
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # <malloc.h>
    settings = [(m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 256 * 2**20)]
    if not all(libc.mallopt(param, value) == 1 for param, value in settings):
        raise RuntimeError("mallopt refused a setting; run with --malloc default")
    return "steady (glibc mallopt: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1, M_TOP_PAD=256 MiB)"


def copy_bandwidth(numel: int, device: str, dtype: torch.dtype, reps: int = 7) -> float:
    """Bytes/s of `dst.copy_(src)` (read + write) over a tensor far larger than any cache."""
    n = max(numel, 64 * 2**20 // torch.empty(0, dtype=dtype).element_size())
    src = torch.randn(n, device=device).to(dtype)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, reps, 1, device)["copy"]
    return 2 * src.numel() * src.element_size() / t


def peak_extra_memory(args, width: int, depth: int, tokens: tuple[int, int], variant: str,
                      pattern: str | None) -> tuple[float, float]:
    """MB two training steps add at their peak, (RSS, allocated): on CUDA in this process (both
    `max_memory_allocated`), on CPU in a fresh one: the RSS high-water mark, and the tensors' peak
    at full size (`memory.peak_allocated_bytes`, what a GPU would count)."""
    if args.device == "cuda":
        return measure_peak(width, depth, tokens, variant, pattern, args.device, args.dtype)
    cmd = [sys.executable, __file__, "--peak-memory-of",
           json.dumps([width, depth, tokens, variant, pattern, args.device, args.dtype])]
    # A fixed mmap threshold: glibc then maps every large tensor on its own and unmaps it when freed,
    # so the peak RSS follows the live tensors (with the default, adaptive threshold freed tensors
    # stay in the heap and every variant showed the same peak).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    rss, allocated = out.stdout.strip().splitlines()[-1].split()
    return float(rss), float(allocated)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    over from the parent through fork and exec, so every child reported the benchmark's own peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def measure_peak(width, depth, tokens, variant, pattern, device, dtype_name) -> float:
    dtype = DTYPES[dtype_name]
    model = build_trunk(depth, width, tokens[1], device, dtype)
    mixer = build_mixer(variant, depth, pattern).to(device=device, dtype=dtype)
    x0 = torch.randn(*tokens, width, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x0)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(2):
            run_once(model, mixer, x0, grad, True)
            clear_grads(model, [mixer], x0)
        torch.cuda.synchronize()
        allocated = (torch.cuda.max_memory_allocated() - before) / 2**20
        return allocated, allocated
    before = rss_bytes()

    def two_steps():  # the second step shows what the first one leaves behind (reused buffers)
        for _ in range(2):
            run_once(model, mixer, x0, grad, True)
            clear_grads(model, [mixer], x0)

    allocated = peak_allocated_bytes(two_steps)  # tensors at full size, as a GPU's allocator counts them
    return (peak_rss_bytes() - before) / 2**20, allocated / 2**20


def bench_trunk(args, width: int, depth: int, tokens: tuple[int, int], reps: int, bandwidth: float) -> list[dict]:
    """Rows for one (width, depth): every variant and pattern, infer and train."""
    dtype = DTYPES[args.dtype]
    model = build_trunk(depth, width, tokens[1], args.device, dtype)
    mixers = {("transformer", None): Residual(depth), ("keep_outputs", None): KeepOutputs()}
    for pattern in args.patterns:
        if parse_pattern(pattern)[1] > depth:
            continue  # a period beyond the depth places no DWA
        for variant in args.variants:
            mixers[(variant, pattern)] = build_mixer(variant, depth, pattern).to(device=args.device, dtype=dtype)
    x0 = torch.randn(*tokens, width, device=args.device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x0)
    tensor_bytes = x0.numel() * x0.element_size()
    rows = []
    for mode in ("infer", "train"):
        train = mode == "train"
        calls = {key: (lambda m=m: run_once(model, m, x0, grad, train)) for key, m in mixers.items()}
        times = time_paired(calls, reps, args.warmup, args.device,
                            between=lambda: clear_grads(model, mixers.values(), x0))
        medians = {key: statistics.median(t) for key, t in times.items()}
        base = medians[("transformer", None)]
        for (variant, pattern), t in medians.items():
            q1, paired, q3 = paired_ratios(times[(variant, pattern)], times[("transformer", None)])
            row = {"width": width, "depth": depth, "batch": tokens[0], "seq": tokens[1], "mode": mode,
                   "pattern": pattern or "-", "variant": variant, "median_ms": 1e3 * t, "ratio": t / base,
                   "ratio_paired": paired, "ratio_q1": q1, "ratio_q3": q3, "reps": reps}
            if variant == "ours":
                mixer = mixers[(variant, pattern)]
                a2 = medians.get(("paper_a2", pattern), float("nan"))
                # implementation="auto" picks the scheme per pattern (`Plan.pays_off`)
                row.update(implementation="fast" if mixer.uses_fast_path else "reference",
                           # whole trunk, and the DWA alone: the time each adds to the Transformer
                           speedup_vs_paper_a2=a2 / t,
                           dwa_speedup_vs_paper_a2=(a2 - base) / (t - base) if t > base else float("nan"))
                if mixer.uses_fast_path:
                    plan = mixer.fast.plan
                    group = plan.group_size(x0.numel(), train=train, device_type=x0.device.type)
                    traffic = plan.traffic(group, train=train)
                    bound = traffic * tensor_bytes / bandwidth
                    row.update(group=group, traffic_tensors=traffic, bound_ms=1e3 * bound,
                               bound_fraction=bound / (t - base) if t > base else float("nan"))
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    text = (f"  d={row['depth']:<3} w={row['width']:<4} {row['mode']:<5} {row['pattern']:>4} {row['variant']:<11} "
            f"{row['median_ms']:9.2f} ms  x{row['ratio']:.3f}  per rep. {row['ratio_paired']:.3f} "
            f"[{row['ratio_q1']:.3f}, {row['ratio_q3']:.3f}]")
    if "implementation" in row:
        text += (f"  {row['implementation']:<9}  vs A.2 {row['speedup_vs_paper_a2']:.2f}x "
                 f"(DWA alone {row['dwa_speedup_vs_paper_a2']:.2f}x)")
    if "traffic_tensors" in row:
        text += (f"  traffic {row['traffic_tensors']} tensors (g={row['group']}),"
                 f" bound {row['bound_ms']:.2f} ms = {100 * row['bound_fraction']:.0f} % of the added time")
    if "peak_extra_mb" in row:
        text += f"  peak +{row['peak_extra_mb']:.0f} MB"
    return text


def bench_groups(args, width: int, depth: int, tokens: tuple[int, int], reps: int) -> list[dict]:
    """Ours with every group size g of the blocked scheme (1: one product per DWA) and the automatic
    choice (`Plan.group_size`, by the traffic model), against the Transformer: what it is based on."""
    dtype = DTYPES[args.dtype]
    model = build_trunk(depth, width, tokens[1], args.device, dtype)
    x0 = torch.randn(*tokens, width, device=args.device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x0)
    rows = []
    for pattern in ("1x1", "4x1"):
        mixers = {"transformer": Residual(depth)}
        for g in [None, *range(1, 9)]:
            mixers[f"g={g or 'auto'}"] = build_mixer("ours", depth, pattern).to(device=args.device, dtype=dtype)
            mixers[f"g={g or 'auto'}"].fast.group = g
        for mode in ("infer", "train"):
            train = mode == "train"
            calls = {name: (lambda m=m: run_once(model, m, x0, grad, train)) for name, m in mixers.items()}
            medians = time_interleaved(calls, reps, args.warmup, args.device,
                                       between=lambda: clear_grads(model, mixers.values(), x0))
            plan = mixers["g=1"].fast.plan
            auto = plan.group_size(x0.numel(), train=train, device_type=x0.device.type)
            for name, t in medians.items():
                g = auto if name == "g=auto" else None if name == "transformer" else int(name[2:])
                rows.append({"width": width, "depth": depth, "pattern": pattern, "mode": mode, "variant": name,
                             "group": g, "traffic_tensors": plan.traffic(g, train=train) if g else None,
                             "median_ms": 1e3 * t, "ratio": t / medians["transformer"]})
            print(f"  d={depth} w={width} {pattern} {mode:<5} " + "  ".join(
                f"{r['variant']}{'(' + str(r['group']) + ')' if r['variant'] == 'g=auto' else ''} x{r['ratio']:.3f}"
                for r in rows[-len(medians):] if r["variant"] != "transformer"), flush=True)
    return rows


def cold_compile_cache():
    """An empty, temporary Inductor cache (PyTorch's own test helper), removed afterwards."""
    from torch._inductor.utils import fresh_cache

    return fresh_cache()


class FastSchemeTraced(DWA):
    """`DWA` that keeps its fast scheme under torch.compile too. The product does not: inside
    `torch.compile` it runs its readable loop (`DWA.forward`); this variant measures why."""

    def forward(self, x0, blocks, rotary):
        return self.fast(list(self.alphas), x0, blocks, rotary)


# Without a reset between the models (see below), Dynamo would see the α of one pattern after those
# of another under the same names and mark their sizes dynamic; a user compiles one model per process.
@torch._dynamo.config.patch(automatic_dynamic_shapes=False)
def bench_compile(args, width: int, depth: int, tokens: tuple[int, int], reps: int,
                  patterns: list[str]) -> list[dict]:
    """Whole-model torch.compile of the Transformer and DenseFormers (ours) of `patterns`: compile
    time (first compiled step minus an eager step), graphs and graph breaks, and then the eager and
    compiled train steps of all of them in one loop of interleaved repetitions, as in the dwa
    section: ratios to the eager / compiled Transformer, with the per-repetition median and
    quartiles. And a 1x1 DenseFormer whose fast scheme is traced by torch.compile instead of the
    readable loop (`FastSchemeTraced`), with the reasons Dynamo gives for its breaks and the error,
    if any (compile time and graphs only)."""
    dtype = DTYPES[args.dtype]
    rows, steps = [], {}
    for name, pattern in [("transformer", None), *(("denseformer", p) for p in patterns),
                          ("denseformer fast-scheme-traced", "1x1")]:
        torch.manual_seed(0)
        if name.endswith("traced"):
            mixer = FastSchemeTraced(depth, *parse_pattern(pattern), implementation="fast")
        else:
            mixer = build_mixer("ours" if pattern else name, depth, pattern)
        model = GPT(512, depth, width, width // 64, tokens[1], mixer=mixer).to(device=args.device, dtype=dtype)
        idx = torch.randint(0, 512, tokens, device=args.device)

        def step(model=model, idx=idx, compiled=True):
            # `forward` called directly runs eagerly; the module's call runs the compiled code.
            (model(idx) if compiled else model.forward(idx)).float().square().mean().backward()
            for p in model.parameters():
                p.grad = None

        eager = time_interleaved({"eager": lambda step=step: step(compiled=False)}, 2, 1, args.device)["eager"]
        counters = torch._dynamo.utils.counters
        graphs, breaks = counters["stats"]["unique_graphs"], dict(counters["graph_break"])
        model.compile()
        key = f"{name} {pattern or ''}".strip()
        row = {"width": width, "depth": depth, "batch": tokens[0], "seq": tokens[1], "model": key,
               "compile_cache": "cold"}
        # A cold compile, as a user's first run pays it: an empty Inductor cache per model (with the
        # default on-disk cache, a second run of this benchmark compiled in 1-3 s instead of 20-30 s).
        # No `torch._dynamo.reset()` between the models, which would drop the compiled code of the
        # ones before: each model is a new module, so Dynamo traces it anew (its graphs and breaks
        # are the counters' growth).
        with cold_compile_cache():
            try:
                sync(args.device)
                start = time.perf_counter()
                step()
                sync(args.device)
                row["compile_s"] = time.perf_counter() - start - eager
            except RuntimeError as error:  # the traced fast scheme: autograd's in-place check fails
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        new_breaks = {reason: n - breaks.get(reason, 0) for reason, n in counters["graph_break"].items()
                      if n > breaks.get(reason, 0)}
        row.update(graphs=counters["stats"]["unique_graphs"] - graphs, graph_breaks=sum(new_breaks.values()),
                   break_reasons=" | ".join(sorted({reason.splitlines()[0] for reason in new_breaks})))
        if "error" not in row and not name.endswith("traced"):
            steps[key] = step
        rows.append(row)
    calls = {}
    for key, step in steps.items():
        calls[(key, "eager")] = lambda step=step: step(compiled=False)
        calls[(key, "compiled")] = step
    times = time_paired(calls, reps, 1, args.device)
    for row in rows:
        text = (f"  compile d={depth} w={width} {row['model']:<32} {row['graphs']:3d} graphs, "
                f"{row['graph_breaks']:3d} breaks   ")
        if "error" in row:
            text += f"compiled: FAILED ({row['error']})\n    breaks: {row['break_reasons']}"
        elif row["model"] not in steps:
            text += f"compile {row['compile_s']:6.1f} s (cold)"
        else:
            for mode in ("eager", "compiled"):
                mine, base = times[(row["model"], mode)], times[("transformer", mode)]
                q1, ratio, q3 = paired_ratios(mine, base)
                row.update({f"{mode}_ms": 1e3 * statistics.median(mine), f"{mode}_ratio": ratio,
                            f"{mode}_ratio_q1": q1, f"{mode}_ratio_q3": q3})
            row["compiled_speedup"] = row["eager_ms"] / row["compiled_ms"]
            text += (f"compile {row['compile_s']:6.1f} s (cold)   eager {row['eager_ms']:8.2f} ms "
                     f"(x{row['eager_ratio']:.3f} [{row['eager_ratio_q1']:.3f}, {row['eager_ratio_q3']:.3f}])   "
                     f"compiled {row['compiled_ms']:8.2f} ms (x{row['compiled_ratio']:.3f} "
                     f"[{row['compiled_ratio_q1']:.3f}, {row['compiled_ratio_q3']:.3f}])")
        print(text, flush=True)
    torch._dynamo.reset()
    return rows


def bench_decode(args, width: int, depth: int, prompt: int, new_tokens: int, reps: int, vocab: int) -> list[dict]:
    """KV-cached decoding, batch 1: tokens/s of the Transformer and of 1x1 / 4x5 DenseFormers (ours),
    prefill excluded; the same weights in all three."""
    from denselab.generate import generate

    dtype = DTYPES[args.dtype]
    models = {}
    for name, pattern in [("transformer", None), ("denseformer 1x1", "1x1"), ("denseformer 4x5", "4x5")]:
        torch.manual_seed(0)
        mixer = build_mixer("transformer" if pattern is None else "ours", depth, pattern)
        models[name] = GPT(vocab, depth, width, width // 64, prompt + new_tokens, mixer=mixer).to(args.device, dtype)
        models[name].load_state_dict(models["transformer"].state_dict(), strict=False)
        models[name].eval()
    idx = torch.randint(0, vocab, (1, prompt), device=args.device)

    def decode(model):  # time of `new_tokens` tokens minus the prefill's (one token generated)
        start = time.perf_counter()
        generate(model, idx, 1, temperature=0)
        sync(args.device)
        mid = time.perf_counter()
        generate(model, idx, new_tokens + 1, temperature=0)
        sync(args.device)
        return (time.perf_counter() - mid) - (mid - start)

    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(reps + 1):
        for name, model in models.items():
            t = decode(model)
            if r:  # the first round warms up
                times[name].append(t)
    base = new_tokens / statistics.median(times["transformer"])
    rows = []
    for name, t in times.items():
        tok_s = new_tokens / statistics.median(t)
        rows.append({"width": width, "depth": depth, "vocab": vocab, "prompt": prompt, "new_tokens": new_tokens,
                     "model": name, "tokens_per_s": tok_s, "ratio_to_transformer": tok_s / base, "reps": reps})
        print(f"  decode d={depth} w={width} {name:<16} {tok_s:8.1f} tokens/s  x{tok_s / base:.3f} of the Transformer",
              flush=True)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    if rows:
        atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def summarize(rows: list[dict], depth: int) -> list[str]:
    """Ours at `depth`, per width, pattern and mode: the ratio of the medians to the Transformer, the
    median and [q1, q3] of the per-repetition ratios, and at 1x1 train the speed-up over App. A.2."""
    df = pd.DataFrame(rows)
    lines = []
    for width in sorted(df.width.unique()):
        keep = df[(df.depth == depth) & (df.width == width) & (df.variant == "keep_outputs")]
        for _, r in keep.iterrows():
            lines.append(f"  w={width:<4}    - {r['mode']:<5} x{r['ratio']:.3f}  keeping the outputs alone (keep_outputs)")
        d = df[(df.depth == depth) & (df.width == width) & (df.variant == "ours")]
        for _, r in d.iterrows():
            lines.append(f"  w={width:<4} {r['pattern']:>4} {r['mode']:<5} x{r['ratio']:.3f}  per rep. "
                         f"{r['ratio_paired']:.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}]  {r['implementation']}")
        r = d[(d.pattern == "1x1") & (d["mode"] == "train")]
        if len(r):  # the time the 1x1 DWA adds to a training step, against App. A.2's
            speedup, trunk = float(r.dwa_speedup_vs_paper_a2.iloc[0]), float(r.speedup_vs_paper_a2.iloc[0])
            lines.append(f"  w={width:<4}  1x1 train ours {speedup:.2f}x faster than paper_a2 on the DWA's added time "
                         f"({trunk:.2f}x on the whole trunk)")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repetitions (the tests)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--depths", type=int, nargs="+", default=[12, 48])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 768], help="small and paper width")
    parser.add_argument("--patterns", nargs="+", default=PATTERNS)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions (default 7 small, 3 paper width; compile section 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sections", nargs="+", default=["dwa", "memory", "groups", "compile", "decode"],
                        choices=["dwa", "memory", "groups", "compile", "decode"])
    parser.add_argument("--compile-depth", type=int, default=12, help="depth of the compile section (width 256)")
    parser.add_argument("--compile-patterns", nargs="+", default=["1x1", "4x5"],
                        help="DenseFormers of the compile section (besides the traced fast scheme)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSVs (default experiments/bench/…)")
    parser.add_argument("--malloc", default="steady", choices=["steady", "default"],
                        help="CPU: keep freed memory in the process (see steady_allocator) or glibc's defaults")
    parser.add_argument("--peak-memory-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_memory_of:  # child process of `peak_extra_memory`
        width, depth, tokens, variant, pattern, device, dtype = json.loads(args.peak_memory_of)
        print(*measure_peak(width, depth, tuple(tokens), variant, pattern, device, dtype))
        return
    if args.quick:
        args.depths, args.widths = [6, 12], [64]
    out = args.out or ROOT / "experiments" / "bench" / f"{args.device}-{args.dtype}"
    out.mkdir(parents=True, exist_ok=True)

    # After the memory children branch off above: they set their own allocator (`peak_extra_memory`).
    malloc = steady_allocator() if args.device == "cpu" and args.malloc == "steady" else "default"
    machine = {**machine_info(), **git_info(ROOT), "threads": torch.get_num_threads(), "device": args.device,
               "dtype": args.dtype, "malloc": malloc, "command": " ".join([Path(sys.executable).name, *sys.argv])}
    print(f"== DWA benchmark on {machine['processor']} ({machine['cpu_count']} CPUs, {machine['threads']} torch threads), "
          f"torch {machine['torch']}, {args.device} {args.dtype}, commit {machine.get('commit', '?')[:7]} ==")
    print(f"allocator: {malloc}")
    # One entry per section, so that a run of some sections keeps the provenance of the others.
    sections = read_json(out / "machine.json") or {}
    sections = sections if all(isinstance(v, dict) for v in sections.values()) else {}
    atomic_write_json(out / "machine.json", {**sections, **{name: machine for name in args.sections}})

    if "dwa" in args.sections:
        rows = []
        for width in args.widths:
            tokens = trunk_tokens(width, args.quick)
            reps = args.reps or (2 if args.quick else 7 if width < 512 else 3)
            bandwidth = copy_bandwidth(tokens[0] * tokens[1] * width, args.device, DTYPES[args.dtype])
            print(f"-- width {width}, batch {tokens[0]} x {tokens[1]} tokens, {reps} interleaved repetitions, "
                  f"copy bandwidth {bandwidth / 1e9:.1f} GB/s --", flush=True)
            for depth in args.depths:
                rows += bench_trunk(args, width, depth, tokens, reps, bandwidth)
        write_csv(rows, out / "dwa.csv")
        lines = summarize(rows, max(args.depths))
        if lines:
            print(f"-- ours at depth {max(args.depths)} --")
            print("\n".join(lines))
    if "memory" in args.sections:
        print("-- peak extra memory of two training steps (fresh process per variant) --", flush=True)
        rows = []
        for width in args.widths:
            tokens = trunk_tokens(width, args.quick)
            depth = max(args.depths)
            for variant, pattern in [("transformer", None), ("keep_outputs", None),
                                     *((v, p) for p in args.patterns if parse_pattern(p)[1] <= depth
                                       for v in args.variants)]:
                rss, allocated = peak_extra_memory(args, width, depth, tokens, variant, pattern)
                rows.append({"width": width, "depth": depth, "batch": tokens[0], "seq": tokens[1],
                             "pattern": pattern or "-", "variant": variant, "peak_extra_mb": rss,
                             "allocated_peak_extra_mb": allocated})
            output_mb = tokens[0] * tokens[1] * width * torch.empty(0, dtype=DTYPES[args.dtype]).element_size() / 2**20
            base = next(r for r in rows if r["width"] == width and r["variant"] == "transformer")
            for r in rows:
                if r["width"] != width:
                    continue
                steps = max(1, len(DWA(depth, *parse_pattern(r["pattern"])).dwa_depths)) if r["pattern"] != "-" else None
                for kind, prefix in (("peak_extra_mb", ""), ("allocated_peak_extra_mb", "allocated_")):
                    r[f"{prefix}extra_vs_transformer_mb"] = r[kind] - base[kind]
                    r[f"{prefix}outputs_per_dwa_step"] = (
                        r[f"{prefix}extra_vs_transformer_mb"] / output_mb / steps if steps else None)
                print(f"  d={depth} w={width} {r['pattern']:>4} {r['variant']:<12} peak RSS +{r['peak_extra_mb']:7.1f} MB"
                      f" ({r['extra_vs_transformer_mb']:+6.1f} vs the Transformer), allocated "
                      f"+{r['allocated_peak_extra_mb']:7.1f} MB ({r['allocated_extra_vs_transformer_mb']:+6.1f})"
                      + (f"; outputs per DWA step: RSS {r['outputs_per_dwa_step']:.2f}, allocated "
                         f"{r['allocated_outputs_per_dwa_step']:.2f}" if steps else ""), flush=True)
        write_csv(rows, out / "memory.csv")
    if "groups" in args.sections:
        print("-- group size g of the blocked scheme (ours; ratios to the Transformer) --", flush=True)
        width, depth, tokens = (64, 12, (1, 32)) if args.quick else (256, 48, (4, 256))
        write_csv(bench_groups(args, width, depth, tokens, 2 if args.quick else 5), out / "groups.csv")
    if "compile" in args.sections:
        print("-- whole-model torch.compile (train steps: forward + backward) --", flush=True)
        width, depth, tokens = (64, 6, (1, 32)) if args.quick else (256, args.compile_depth, (4, 256))
        reps = 2 if args.quick else args.reps or 5
        write_csv(bench_compile(args, width, depth, tokens, reps, args.compile_patterns),
                  out / "compile.csv")
    if "decode" in args.sections:
        print("-- KV-cached decoding, batch 1, prefill excluded --", flush=True)
        if args.quick:
            rows = bench_decode(args, 64, 6, 8, 8, 2, 512)
        else:
            rows = bench_decode(args, 256, 48, 64, 128, 5, 50304)
        write_csv(rows, out / "decode.csv")


if __name__ == "__main__":
    main()
