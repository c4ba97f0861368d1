#!/usr/bin/env python
"""Data-pipeline benchmark (not a test: it asserts nothing about absolute time). Prints

1. tokenization throughput, GPT-2 BPE: tiktoken alone in one process, and the whole preparation path
   (`prepare_tokens` on an OpenWebText2-layout parquet file: load, official split, tokenize in
   `num_proc` processes, write the bins) for each process count — tokens/s in total and per worker;
2. peak memory of a streaming preparation for two corpus sizes (bounded memory: it should not grow);
3. the time to draw one training micro-batch (the DataLoader over `TrainWindows`, page cache warm and
   cold) next to one training step (forward, backward, AdamW) of the chosen model, and their ratio.

    .venv/bin/python benchmarks/data_bench.py                       # main job's model, CPU
    .venv/bin/python benchmarks/data_bench.py --model paper         # 48 x 768, micro-batch 50 x 256 (a GPU job)

Text: the running interpreter's standard library (`data=stdlib`'s corpus; code, docstrings, comments),
one document per file: real text that needs no download. Web text (OWT2) tokenizes at another rate.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DENSELAB_ROOT", str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from denselab.data import HubDataset, PythonStdlib  # noqa: E402
from denselab.data.datamodule import TrainWindows  # noqa: E402
from denselab.data.prepare import encode_documents, prepare_tokens, rebatch  # noqa: E402

OWT2 = dict(name="owt2", dataset_id="vietgpt/the_pile_openwebtext2",
            revision="95270202e5635b381a2c960de426247ac9baaaca", val_fraction=0.0005, split_seed=2357)
PAPER_TOKENS = 17e9  # OpenWebText2, paper §4: "around 17B tokens"


def read_documents(max_mb: float, text_files: list[str]) -> list[str]:
    """About `max_mb` MB of documents: the standard library's files, or the paragraphs of `text_files`,
    repeated as often as needed."""
    if text_files:
        texts = [p for f in text_files for p in Path(f).read_text(errors="replace").split("\n\n") if p.strip()]
    else:
        texts = PythonStdlib().load()["train"]["text"]
    docs, size = [], 0
    for text in itertools.cycle(texts):
        docs.append(text)
        size += len(text)
        if size >= max_mb * 1e6:
            break
    return docs


def write_owt2_parquet(docs: list[str], path: Path) -> None:
    pq.write_table(pa.table({"title": [d[:40] for d in docs], "text": docs,
                             "reddit_scores": pa.array([[1]] * len(docs), type=pa.list_(pa.int32()))}), path)


def bench_tokenization(docs: list[str], procs: list[int], work: Path) -> None:
    chars = sum(len(d) for d in docs)
    print(f"\n== Tokenization (GPT-2 BPE) of {len(docs):,} documents, {chars / 1e6:.1f} M characters ==")
    encode_documents("gpt2", docs[:10])  # build the tokenizer outside the timing
    t0 = time.perf_counter()
    n = encode_documents("gpt2", docs).size
    dt = time.perf_counter() - t0
    print(f"tiktoken alone, 1 process:           {n / dt:>12,.0f} tokens/s  ({n:,} tokens in {dt:.2f} s)")
    parquet = work / "owt2-layout.parquet"
    write_owt2_parquet(docs, parquet)
    source = HubDataset(**OWT2, data_files=[str(parquet)], cache_dir=str(work / "hf-read"))
    t0 = time.perf_counter()
    read = sum(len(d) for _, batch in rebatch(source.batches()) for d in batch)
    dt = time.perf_counter() - t0
    print(f"reader alone (main process: load, split, read, batch; no tokenizing): {read / dt / 1e6:,.1f} M chars/s "
          f"= {read / dt * n / chars:,.0f} tokens/s at this text's {chars / n:.2f} chars/token")
    for p in procs:
        source = HubDataset(**OWT2, data_files=[str(parquet)], cache_dir=str(work / f"hf{p}"))
        t0 = time.perf_counter()
        directory = prepare_tokens(source, "gpt2", work / f"cache{p}", num_proc=p)
        dt = time.perf_counter() - t0
        tokens = sum(json.loads((directory / "meta.json").read_text())["tokens"].values())
        rate = tokens / dt
        print(f"preparation path, num_proc={p}:       {rate:>12,.0f} tokens/s  = {rate / p:,.0f} per worker "
              f"({tokens:,} tokens in {dt:.2f} s: load, split, tokenize, write); "
              f"OWT2's ~{PAPER_TOKENS / 1e9:.0f} B tokens = {PAPER_TOKENS / (rate / p) / 3600:.1f} worker-hours")


MEMORY_PROBE = """
import json, resource, sys
from denselab.data import HubDataset
from denselab.data.prepare import prepare_tokens
path, cache, procs = sys.argv[1], sys.argv[2], int(sys.argv[3])
source = HubDataset(**json.loads(sys.argv[4]), streaming=True, data_files=[path], cache_dir=cache + "/hf")
d = prepare_tokens(source, "gpt2", cache, num_proc=procs)
meta = json.loads((d / "meta.json").read_text())
print(json.dumps({"tokens": sum(meta["tokens"].values()),
                  "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def bench_memory(docs: list[str], sizes_mb: list[float], procs: int, work: Path) -> None:
    print(f"\n== Peak memory of a streaming preparation (jsonl, num_proc={procs}) ==")
    for size in sizes_mb:
        path = work / f"corpus-{size:g}mb.jsonl"
        written, rows = 0, 0
        with open(path, "w") as f:
            while written < size * 1e6:
                for d in docs:
                    line = json.dumps({"title": "", "text": d, "reddit_scores": [1]}) + "\n"
                    f.write(line)
                    written += len(line)
                    rows += 1
                    if written >= size * 1e6:
                        break
        settings = dict(OWT2, expected_rows=rows)
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), str(work / f"mem{size:g}"), str(procs),
                              json.dumps(settings)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{size:>6g} MB of text, {r['tokens']:>12,} tokens: peak RSS main process {r['main_mb']:,.0f} MB, "
              f"largest worker {r['worker_mb']:,.0f} MB")
        path.unlink()


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from denselab.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (this file only), so the next reads go to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_batches(model: str, bin_tokens: int, draws: int, steps: int, device: str, work: Path) -> None:
    from torch.utils.data import DataLoader

    from denselab.models import build_model, padded_vocab_size
    from denselab.optim import build_optimizer

    cfg = compose(["data.tokenizer=gpt2"] + (["experiment=paper"] if model == "paper" else []))
    seq_len, micro = cfg.data.seq_len, cfg.data.batch_size
    print(f"\n== Batch drawing vs a training step: model={model} (depth {cfg.depth}, width {cfg.width}), "
          f"micro-batch {micro} x {seq_len}, GPT-2 vocabulary, {device} ==")

    path = work / "train.bin"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for start in range(0, bin_tokens, 1 << 24):
            rng.integers(0, 50257, min(1 << 24, bin_tokens - start), dtype=np.uint16).tofile(f)

    def draw_time(seq: int, batch: int, cold: bool, first: int) -> float:
        """Median time of `next()` on the training DataLoader, as Lightning calls it."""
        loader = iter(DataLoader(TrainWindows(path, seq, batch, seed=0, start=first), batch_size=None))
        next(loader)  # maps the file
        times = []
        for _ in range(draws):
            if cold:
                evict(path)
            t0 = time.perf_counter()
            next(loader)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    shapes = {f"{micro} x {seq_len} (model={model})": (seq_len, micro), "50 x 256 (the paper's micro-batch)": (256, 50)}
    warm = {name: draw_time(*shape, False, 0) for name, shape in shapes.items()}  # the file was just written
    cold = {name: draw_time(*shape, True, 10**6) for name, shape in shapes.items()}
    drawn = {name: (warm[name], cold[name]) for name in shapes}

    torch.manual_seed(0)
    net = build_model(cfg.model, padded_vocab_size(50257, cfg.model.vocab_multiple), device=device)
    o = cfg.optim
    opt = build_optimizer(net, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                          mixing_weight_decay=o.mixing_weight_decay, mixing_lr_scale=o.mixing_lr_scale)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                else torch.autocast("cpu", enabled=False))
    x, y = (t.to(device) for t in TrainWindows(path, seq_len, micro, seed=0).batch(0))

    def step() -> None:
        with autocast:
            logits = net(x)
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: allocator, kernels
        step()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)

    print(f"train.bin: {bin_tokens:,} tokens ({path.stat().st_size / 1e9:.2f} GB); "
          f"medians of {draws} draws, {steps} steps")
    print(f"one training step (fwd+bwd+AdamW), model={model}: {step_s * 1e3:,.1f} ms")
    for name, (warm, cold) in drawn.items():
        print(f"draw {name}: warm {warm * 1e3:.3f} ms, cold {cold * 1e3:.3f} ms (page cache evicted before each draw)"
              f" -> under 1 % of any step longer than {100 * cold * 1e3:.1f} ms")
    warm, cold = drawn[next(iter(drawn))]
    verdict = "under" if cold < 0.01 * step_s else "NOT under"
    print(f"ratio for model={model}: warm {100 * warm / step_s:.4f} %, cold {100 * cold / step_s:.4f} % of a step "
          f"-> {verdict} 1 %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-mb", type=float, default=8.0, help="text for the tokenization benchmark")
    parser.add_argument("--text-files", nargs="*", default=[], help="use these files' paragraphs as documents")
    parser.add_argument("--procs", default="1,2", help="tokenizer process counts to compare")
    parser.add_argument("--memory-mb", default="25,100", help="corpus sizes for the memory probe ('' skips it)")
    parser.add_argument("--model", choices=("main", "paper"), default="main")
    parser.add_argument("--bin-tokens", type=int, default=1 << 29, help="tokens in the synthetic train.bin (1 GiB)")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
    procs = [int(p) for p in args.procs.split(",")]
    with tempfile.TemporaryDirectory(prefix="denselab-bench-") as tmp:
        work = Path(tmp)
        docs = read_documents(args.text_mb, args.text_files)
        bench_tokenization(docs, procs, work)
        if args.memory_mb:
            bench_memory(docs, [float(s) for s in args.memory_mb.split(",")], max(procs), work)
        bench_batches(args.model, args.bin_tokens, args.draws, args.steps, args.device, work)


if __name__ == "__main__":
    main()
