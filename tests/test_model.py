"""The backbone matches the paper's architecture: parameter counts, identity at init, causality."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from denselab.models import DWA, GPT, count_parameters, padded_vocab_size

PAPER_TABLES = Path(__file__).resolve().parents[1] / "experiments" / "paper_tables.csv"


def meta_model(depth: int, dwa: DWA | None = None, width: int = 768, heads: int = 12) -> GPT:
    with torch.device("meta"):
        return GPT(vocab_size=50304, depth=depth, width=width, n_heads=heads, max_seq_len=256, mixer=dwa)


def test_paper_transformer_48_blocks_has_378_446_592_parameters():
    assert count_parameters(meta_model(48))["total"] == 378_446_592


def test_paper_denseformer_48_blocks_adds_1224_alphas():
    counts = count_parameters(meta_model(48, DWA(48)))
    assert counts["mixing"] == 1224
    assert counts["total"] == 378_446_592 + 1224


def test_parameter_counts_match_every_row_of_paper_table_1():
    rows = [r for r in csv.DictReader(PAPER_TABLES.open()) if r["table"] == "1"]
    assert len(rows) == 12
    for r in rows:
        depth = int(r["depth"])
        dwa = DWA(depth, int(r["dilation"]), int(r["period"])) if r["model"] == "denseformer" else None
        total = count_parameters(meta_model(depth, dwa))["total"]
        assert round(total / 1e6, 2) == float(r["params_m"]), (r["model"], depth, total)


def test_gpt2_vocabulary_is_padded_to_50304():
    assert padded_vocab_size(50257, 64) == 50304
    assert padded_vocab_size(257, 64) == 320


@pytest.mark.parametrize("k,p", [(1, 1), (4, 1), (4, 5), (2, 3), (12, 1)])
def test_untrained_denseformer_computes_exactly_the_transformer(k, p):
    torch.manual_seed(0)
    transformer = GPT(320, depth=12, width=64, n_heads=2, max_seq_len=32)
    denseformer = GPT(320, depth=12, width=64, n_heads=2, max_seq_len=32, mixer=DWA(12, k, p))
    missing, unexpected = denseformer.load_state_dict(transformer.state_dict(), strict=False)
    assert unexpected == [] and all(m.startswith("mixer.") for m in missing)
    idx = torch.randint(0, 320, (3, 32))
    assert torch.equal(transformer(idx), denseformer(idx))


def test_trained_alphas_change_the_output():
    torch.manual_seed(0)
    model = GPT(320, depth=4, width=32, n_heads=1, max_seq_len=16, mixer=DWA(4))
    idx = torch.randint(0, 320, (2, 16))
    before = model(idx)
    with torch.no_grad():
        model.mixer.alpha(4)[0] = 0.5
    assert not torch.allclose(before, model(idx))


def test_embeddings_are_tied():
    model = GPT(320, depth=2, width=32, n_heads=1, max_seq_len=16)
    assert model.lm_head.weight is model.wte.weight


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    depth = 8
    model = GPT(320, depth=depth, width=256, n_heads=4, max_seq_len=16)
    proj = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.blocks])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.blocks])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * depth), rel=0.02)
    assert fc.std().item() == pytest.approx(0.02, rel=0.02)


def test_model_is_causal():
    torch.manual_seed(0)
    model = GPT(320, depth=3, width=32, n_heads=2, max_seq_len=16, mixer=DWA(3))
    idx = torch.randint(0, 320, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 320
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_no_biases_anywhere():
    model = GPT(320, depth=2, width=32, n_heads=1, max_seq_len=16, mixer=DWA(2))
    assert not any("bias" in name for name, _ in model.named_parameters())


def test_parameter_groups_cover_every_parameter_once():
    model = GPT(320, depth=3, width=32, n_heads=1, max_seq_len=16, mixer=DWA(3, 1, 1))
    groups = model.parameter_groups()
    names = [n for g in groups.values() for n, _ in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert {n for n, _ in groups["mixing"]} == {f"mixer.alphas.{i}" for i in range(3)}
    assert "wte.weight" in {n for n, _ in groups["no_decay"]}
    assert all(p.dim() == 2 for _, p in groups["decay"])
    assert all("ln_" in n for n, _ in groups["no_decay"] if n != "wte.weight")


def test_sequence_longer_than_rotary_table_is_refused():
    model = GPT(320, depth=1, width=32, n_heads=1, max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
