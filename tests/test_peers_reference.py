"""The peers as their reference code wires them (issue 22): MUDD (Caiyun-AI/MUDDFormer) and ELC-BERT
(ltgoslo/elc-bert). Each test pins one property the reference has; the module docstrings cite the lines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from denselab.config import register_resolvers
from denselab.models import GPT, build_model, count_parameters
from denselab.models.catalog import node_names
from denselab.models.mudd import MUDD, hidden_size
from tests.conftest import REPO
from tests.test_config import refusal

register_resolvers()
VOCAB = 64


def build(name: str, *overrides: str, depth: int = 4, width: int = 32, heads: int = 2, device=None) -> GPT:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", f"depth={depth}", f"width={width}", f"heads={heads}",
                                           "seq_len=16", *overrides])
    return build_model(cfg.model, VOCAB, device=device)


def tokens(batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))


def mixing_count(name: str, *overrides: str) -> int:
    return count_parameters(build(name, *overrides, depth=48, width=768, heads=12, device="meta"))["mixing"]


# --- MUDD ---------------------------------------------------------------------------------------------


def test_mudd_defaults_are_the_released_configs():
    mixer = build("mudd").mixer
    assert (mixer.sepln, mixer.round64, mixer.expand_last) == (True, True, True)


@pytest.mark.parametrize("switch", ["sepln", "round64", "expand_last"])
def test_mudd_switch_that_is_not_a_boolean_is_refused(switch):
    assert refusal("model=mudd", f"model.net.mixer.{switch}=maybe") == f"model.net.mixer.{switch}='maybe': allowed true or false"


def test_mudd_has_three_distinct_attention_norms_from_block_two_on():
    net = build("mudd")
    for index, block in enumerate(net.blocks):
        norms = net.mixer.attention_norms(index, block)
        if index == 0:  # one input stream (X_0), one norm, as the reference's block lidx = 0
            assert norms == (block.ln_1,) * 3
            continue
        assert len({id(n) for n in norms}) == 3
        assert len({n.weight.data_ptr() for n in norms}) == 3
        assert norms[0] is block.ln_1 and all(torch.equal(n.weight, torch.ones(32)) for n in norms)
    unshared = build("mudd", "model.net.mixer.sepln=false")
    assert len(unshared.mixer.k_norms) == len(unshared.mixer.v_norms) == 0
    assert all(unshared.mixer.attention_norms(i, b) == (b.ln_1,) * 3 for i, b in enumerate(unshared.blocks))


@pytest.mark.parametrize("which", ["k_norms", "v_norms"])
def test_mudd_key_and_value_norms_are_used(which):
    torch.manual_seed(0)
    net = build("mudd")
    before = net(tokens())
    with torch.no_grad():
        getattr(net.mixer, which)[1].weight.mul_(2.0)  # block 3's key (value) norm
    assert not torch.allclose(net(tokens()), before)


def test_mudd_first_layer_is_initialised_fan_in_normal():
    torch.manual_seed(0)
    net = build("mudd", depth=8, width=256, heads=4)  # GPT.reset_parameters leaves the mixer to its own init
    w1 = torch.cat([w.w1.flatten() for w in net.mixer.weights])
    assert abs(w1.mean().item()) < 3e-3
    assert w1.std().item() == pytest.approx(1 / math.sqrt(256), rel=0.03)  # not 0.02
    for w in net.mixer.weights:
        assert torch.equal(w.w2, torch.zeros_like(w.w2))
        assert torch.equal(w.static, F.one_hot(torch.tensor(w.n_sources - 1), w.n_sources).float().expand_as(w.static))


def test_mudd_hidden_sizes_are_rounded_as_the_reference_rounds():
    mixer = MUDD(48, 768)
    hidden = [w.hidden for w in mixer.weights]
    assert all(h % 64 == 0 for h in hidden)
    assert hidden[0] == 64 and hidden[13] == 64 and hidden[14] == 128  # block 15: 4·16 = 64 → 128, (H // 64 + 1)·64
    assert hidden[-1] == 256  # the last block: 1 stream × 49 sources × 4 = 196 → 256
    assert hidden_size(49, 1, last=True, expand_last=False) == 64
    assert hidden_size(49, 1, last=True, round64=False) == 196
    assert [w.hidden for w in MUDD(48, 768, round64=False, expand_last=False).weights] == [
        4 * (i + 1) for i in range(1, 48)] + [49]


def test_mudd_starts_as_the_plain_residual_network():
    torch.manual_seed(0)
    transformer, mudd = build("transformer"), build("mudd")
    missing, unexpected = mudd.load_state_dict(transformer.state_dict(), strict=False)
    assert unexpected == [] and any(".k_norms." in m for m in missing)
    torch.testing.assert_close(mudd(tokens()), transformer(tokens()), rtol=0, atol=1e-5)


def test_mudd_parameters_at_48_by_768():
    streams = [4] * 47 + [1]
    hidden = [hidden_size(i + 1, s, last=i == 48) for i, s in zip(range(1, 49), streams)]
    dense = sum(768 * h + h * s * (i + 1) + s * (i + 1) for i, (h, s) in enumerate(zip(hidden, streams), start=1))
    assert mixing_count("mudd") == dense + 2 * 768 * 47 == 5_860_493
    off = ("model.net.mixer.sepln=false", "model.net.mixer.round64=false", "model.net.mixer.expand_last=false")
    assert mixing_count("mudd", *off) == 4_262_750  # the node before issue 22


# --- ELC-BERT -----------------------------------------------------------------------------------------


def layer_outputs(net: GPT, x: torch.Tensor) -> list[torch.Tensor]:
    return net.mixer.layer_outputs(net.wte(x), net.blocks, net.rotary)


@pytest.mark.parametrize("name", ["elc_bert", "elc_bert_skips_zero_init"])
def test_elc_layer_outputs_are_of_order_one_at_init(name):
    torch.manual_seed(0)
    net = build(name, depth=48, width=64)  # the paper's depth: output projections 0.02/√96 at init
    with torch.no_grad():
        outputs = layer_outputs(net, tokens())
    scales = [o.std().item() for o in outputs]
    assert all(0.5 < s < 2.0 for s in scales), scales  # X_0 and every o_i, not ~1e-3 (nor X_0's 0.02)
    # without the reference's norms, the same blocks give outputs of ~1e-3 and X_0 of 0.02
    x0 = net.wte(tokens())
    with torch.no_grad():
        a = net.blocks[0].attn_branch(x0, net.rotary)
        bare = a + net.blocks[0].mlp_branch(a)
    assert bare.std().item() < 5e-3 and x0.std().item() < 0.03


def test_elc_layers_are_the_references():
    torch.manual_seed(0)
    base, zero = build("elc_bert"), build("elc_bert_skips_zero_init")
    zero.load_state_dict(base.state_dict(), strict=False)  # the same blocks (logits differ by init)
    x = tokens()
    with torch.no_grad():
        for net, mlp_input in ((base, lambda h, a: a), (zero, lambda h, a: h + a)):
            outputs = layer_outputs(net, x)
            x0 = net.wte(x)
            torch.testing.assert_close(outputs[0], F.layer_norm(x0, x0.shape[-1:], eps=1e-7))  # word_layer_norm, no affine
            h = net.mixer.weighted_sum(net.mixer.logits[0], outputs[:2])  # block 2's input
            a = net.mixer.post_norms[1](net.blocks[1].attn_branch(h, net.rotary))
            torch.testing.assert_close(outputs[2], a + net.blocks[1].mlp_branch(mlp_input(h, a)))
    assert all(n.weight is not None and n.bias is not None for n in base.mixer.post_norms)
    assert len(base.mixer.post_norms) == 4 and len(build("elc_bert_skips").mixer.post_norms) == 0


def test_elc_logit_initialisations():
    logits = build("elc_bert").mixer.logits
    assert all(torch.equal(w, F.one_hot(torch.tensor(len(w) - 1), len(w)).float()) for w in logits)
    assert all(torch.equal(w, torch.zeros_like(w)) for w in build("elc_bert_skips_zero_init").mixer.logits)
    assert all(torch.equal(w, torch.zeros_like(w)) for w in build("elc_bert_skips", "model.net.mixer.weight_init=zero").mixer.logits)


def test_elc_parameters_at_48_by_768():
    logits = 48 * 49 // 2 - 1
    assert mixing_count("elc_bert") == mixing_count("elc_bert_skips_zero_init") == logits + 2 * 768 * 48 == 74_903
    assert mixing_count("elc_bert_skips") == logits == 1_175


def test_fig15_names_existing_models():
    rows = OmegaConf.load(REPO / "conf" / "experiment" / "fig15.yaml").hydra.sweeper.rows
    names = [n.strip() for row in rows for n in str(row["model"]).split(",")]
    assert set(names) <= set(node_names())
    assert {"elc_bert", "elc_bert_skips", "elc_bert_skips_zero_init"} <= set(names)
