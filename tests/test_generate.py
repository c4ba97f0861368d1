"""Generation: KV-cached decoding gives the logits of the full forward pass for every architecture
node, and `python -m denselab.generate` samples from a checkpoint written by run.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from denselab.generate import generate
from tests.conftest import REPO, TINY, run_cli
from tests.test_architectures import NODES, VOCAB, build


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Mixing parameters away from their initial values, so that every source contributes."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.mixer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", NODES)
def test_cached_decoding_gives_the_logits_of_the_full_forward_pass(name):
    torch.manual_seed(0)
    model = perturb(build(name, depth=5))
    idx = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(idx)  # (2, 12, V)
        with model.kv_caching(batch_size=2):
            steps = [model(idx[:, :5])]  # a prompt of 5 tokens, then one token at a time
            steps += [model(idx[:, t: t + 1]) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["denseformer", "transformer"])
def test_greedy_generation_with_and_without_the_cache_agree(name):
    torch.manual_seed(0)
    model = perturb(build(name, depth=4))
    idx = torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(0))
    cached = generate(model, idx, 12, temperature=0, cache=True)  # up to max_seq_len = 16 positions
    recomputed = generate(model, idx, 12, temperature=0, cache=False)
    assert cached.shape == (1, 16) and torch.equal(cached, recomputed)


def test_generation_goes_on_past_the_context_length():
    model = perturb(build("denseformer", depth=2))
    out = generate(model, torch.zeros(1, 3, dtype=torch.long), 40, temperature=1.0, top_k=5,
                   generator=torch.Generator().manual_seed(0))  # max_seq_len = 16: the cache is rebuilt twice
    assert out.shape == (1, 43) and int(out.max()) < VOCAB


def test_the_cache_refuses_more_positions_than_it_holds():
    model = build("denseformer", depth=2).eval()
    with torch.no_grad(), model.kv_caching(batch_size=1, max_len=4):
        model(torch.zeros(1, 4, dtype=torch.long))
        with pytest.raises(ValueError, match="KV cache holds 4 positions, 5 needed"):
            model(torch.zeros(1, 1, dtype=torch.long))


def test_generate_cli_samples_from_a_run_py_checkpoint(tmp_path, data_dir):
    run_cli(["model=denseformer", *TINY], tmp_path / "logs", data_dir)
    ckpt = next((tmp_path / "logs").rglob("last.ckpt"))
    cmd = [sys.executable, "-m", "denselab.generate", f"ckpt={ckpt}", "prompt=def main(", "max_new_tokens=12",
           "temperature=0"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert first.stdout.startswith("def main(") and len(first.stdout) > len("def main(\n")
    assert first.stdout == again.stdout  # greedy decoding is deterministic


@pytest.mark.parametrize("args,message", [
    ([], "ckpt=<path/to/last.ckpt> is required"),
    (["ckpt=/nonexistent.ckpt"], "ckpt=/nonexistent.ckpt: no such file"),
    (["ckpt=x.ckpt", "temprature=1"], "temprature=1: expected key=value with key one of"),
    (["ckpt=x.ckpt", "top_k=0"], "top_k=0: allowed null or integers >= 1"),
])
def test_generate_cli_rejects_bad_arguments_in_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "denselab.generate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
