"""Every architecture node: builds from its YAML, trains, starts where its method says it starts,
and passes gradients to all of its mixing parameters."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from denselab.config import register_resolvers
from denselab.lit_module import LanguageModel
from denselab.models import DWA, GPT, build_model
from denselab.models.catalog import node_names, parameter_rows
from denselab.optim import build_optimizer
from tests.conftest import REPO

register_resolvers()
VOCAB = 64
NODES = node_names()
# Nodes defined to start as the Transformer (their initialisation is the identity / plain residual),
# and the tolerance: 0 where the arithmetic is the same, tiny where it is reordered.
STARTS_AS_TRANSFORMER = {
    "denseformer": 0.0, "last_k": 0.0, "connect_to_last": 0.0, "skips_with_gains": 0.0, "x0_shortcut": 0.0,
    "hyper_connections": 1e-5, "hyper_connections_dynamic": 1e-5,  # the mean of n equal streams
    "mudd": 1e-5,  # q, k, v projected separately
}
DIFFERS_FROM_TRANSFORMER = ["elc_bert", "elc_bert_skips", "elc_bert_skips_zero_init", "attn_res", "attn_res_block",
                            "value_residual", "value_residual_learnable"]


def build(name: str, depth: int = 4, width: int = 32, heads: int = 2) -> GPT:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", f"depth={depth}", f"width={width}", f"heads={heads}",
                                           "seq_len=16"])
    return build_model(cfg.model, VOCAB)


def tokens(batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))


def test_every_node_of_the_issue_has_a_yaml():
    assert set(NODES) >= {"transformer", "denseformer", "skips_with_gains", "last_k", "connect_to_last", "elc_bert",
                          "elc_bert_skips", "elc_bert_skips_zero_init", "value_residual", "value_residual_learnable",
                          "hyper_connections", "hyper_connections_dynamic", "mudd", "attn_res", "attn_res_block",
                          "x0_shortcut"}
    assert set(NODES) == set(STARTS_AS_TRANSFORMER) | set(DIFFERS_FROM_TRANSFORMER) | {"transformer"}


@pytest.mark.parametrize("name", NODES)
def test_node_maps_tokens_to_logits(name):
    torch.manual_seed(0)
    assert build(name)(tokens()).shape == (2, 16, VOCAB)


@pytest.mark.parametrize("name", sorted(STARTS_AS_TRANSFORMER))
def test_node_starts_as_the_transformer_with_the_same_weights(name):
    torch.manual_seed(0)
    transformer, node = build("transformer"), build(name)
    missing, unexpected = node.load_state_dict(transformer.state_dict(), strict=False)
    assert unexpected == [] and all(m.startswith("mixer.") for m in missing)
    expected, got = transformer(tokens()), node(tokens())
    if STARTS_AS_TRANSFORMER[name] == 0.0:
        assert torch.equal(expected, got)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=STARTS_AS_TRANSFORMER[name])


@pytest.mark.parametrize("name", DIFFERS_FROM_TRANSFORMER)
def test_node_does_not_start_as_the_transformer(name):
    torch.manual_seed(0)
    transformer, node = build("transformer"), build(name)
    node.load_state_dict(transformer.state_dict(), strict=False)
    assert (transformer(tokens()) - node(tokens())).abs().max() > 1e-3


@pytest.mark.parametrize("name", [n for n in NODES if n not in ("transformer", "value_residual")])
def test_gradients_reach_every_mixing_parameter(name):
    torch.manual_seed(0)
    model = build(name)
    mixing = model.parameter_groups()["mixing"]
    assert mixing, f"{name} has no mixing parameters"
    with torch.no_grad():  # away from the initialisation, where some paths are exactly zero (e.g. MUDD's W2)
        for _, p in mixing:
            p.add_(0.05 * torch.randn_like(p))
    model(tokens()).logsumexp(-1).mean().backward()
    dead = [n for n, p in mixing if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


@pytest.mark.parametrize("name", NODES)
def test_mixing_parameters_are_the_optimisers_mixing_group(name):
    model = build(name)
    optimizer = build_optimizer(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1,
                                mixing_weight_decay=0.0, mixing_lr_scale=2.0)
    groups = {g["name"]: g for g in optimizer.param_groups}
    mixing = {id(p) for n, p in model.named_parameters() if n.startswith("mixer.")}
    assert {id(p) for p in groups.get("mixing", {"params": []})["params"]} == mixing
    if mixing:
        assert groups["mixing"]["weight_decay"] == 0.0 and groups["mixing"]["lr"] == 2e-3


@pytest.mark.parametrize("name, norms", [("mudd", "k_norms.0.weight"), ("elc_bert", "post_norms.0.bias"),
                                         ("elc_bert_skips_zero_init", "post_norms.1.weight"),
                                         ("hyper_connections_dynamic", "norm_gain"), ("attn_res", "key_gains"),
                                         ("attn_res_block", "key_gains")])
def test_a_mixers_norm_gains_are_not_weight_decayed_where_the_mixing_weights_are(name, norms):
    """scale=small/paper decay the mixing weights (the official code's nn.Linear rule); norms never."""
    model = build(name)
    decayed = build_optimizer(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1,
                              mixing_weight_decay=0.1, mixing_lr_scale=1.0)
    decay_of = {id(p): g["weight_decay"] for g in decayed.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert f"mixer.{norms}" in model.mixer_norm_parameters()
    assert decay_of[id(named[f"mixer.{norms}"])] == 0.0
    weights = [n for n in named if n.startswith("mixer.") and n not in model.mixer_norm_parameters()]
    assert weights and all(decay_of[id(named[n])] == 0.1 for n in weights)  # W1/W2, logits, a_m, ... decayed
    undecayed = build_optimizer(model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1,
                                mixing_weight_decay=0.0, mixing_lr_scale=1.0)
    assert [g["name"] for g in undecayed.param_groups] == ["decay", "no_decay", "mixing"]  # mini's checkpoints load


@pytest.mark.parametrize("name", NODES)
def test_a_few_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = build(name)
    optimizer = build_optimizer(model, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0,
                                mixing_weight_decay=0.0, mixing_lr_scale=1.0)
    x = tokens(4, 16)
    losses = []
    for _ in range(8):
        loss = LanguageModel.cross_entropy(model(x[:, :-1]), x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_parameter_counts_at_the_papers_size():
    extra = {r["model"]: r["extra"] for r in parameter_rows()}
    assert extra["transformer"] == 0 and extra["value_residual"] == 0
    assert extra["denseformer"] == 48 * 51 // 2
    assert extra["skips_with_gains"] == extra["x0_shortcut"] == 96
    assert extra["last_k"] == 2 + 3 + 4 + 45 * 5  # X_0 plus the min(i, 4) most recent outputs
    assert extra["connect_to_last"] == 49
    # no logit for block 1, which has a single source; the reference layers add a LayerNorm (gain, bias) per block
    assert extra["elc_bert"] == extra["elc_bert_skips_zero_init"] == 48 * 49 // 2 - 1 + 2 * 768 * 48
    assert extra["elc_bert_skips"] == 48 * 49 // 2 - 1
    assert extra["value_residual_learnable"] == 2 * 47
    assert extra["hyper_connections"] == 96 * (4 * 4 + 2 * 4)
    assert extra["hyper_connections_dynamic"] == extra["hyper_connections"] + 96 * (768 * 7 + 2)  # incl. the norm gain
    assert extra["attn_res"] == extra["attn_res_block"] == 2 * 97 * 768
    # MUDD as released: hidden (H // 64 + 1)·64, the last block's H × 4, LN_k and LN_v for blocks 2..48
    assert extra["mudd"] == sum(768 * h + h * 4 * (i + 1) + 4 * (i + 1)
                                for i, h in ((i, (4 * (i + 1) // 64 + 1) * 64) for i in range(1, 48))) + (
        768 * 256 + 256 * 49 + 49) + 2 * 768 * 47


def test_readme_table_is_the_computed_one():
    from denselab.models.catalog import markdown_table

    assert markdown_table(parameter_rows()) in (REPO / "README.md").read_text()


def test_official_dwa_semantics_equal_the_paper_at_period_1_and_differ_beyond():
    for k in (1, 2, 4):
        paper, official = DWA(12, k, 1), DWA(12, k, 1, semantics="official")
        assert [list(paper.sources(i)) for i in paper.dwa_depths] == [list(official.sources(i)) for i in paper.dwa_depths]
    paper, official = DWA(12, 2, 3), DWA(12, 2, 3, semantics="official")
    assert list(paper.sources(12)) == [0, 2, 4, 6, 8, 10, 12]
    assert list(official.sources(12)) == [0, 6, 12]  # DWA points 0, 3, 6, 9, 12 with dilation 2 over them
    assert sum(a.numel() for a in official.alphas) < sum(a.numel() for a in paper.alphas)
    torch.manual_seed(0)
    models = [GPT(VOCAB, 12, 32, 2, 16, mixer=DWA(12, 2, 3, semantics=s)) for s in ("paper", "official")]
    models[1].load_state_dict({k: v for k, v in models[0].state_dict().items() if not k.startswith("mixer.")},
                              strict=False)
    for m in models:
        with torch.no_grad():
            for a in m.mixer.alphas:
                a.fill_(0.3)
    assert not torch.allclose(models[0](tokens()), models[1](tokens()))


def _fit(dwa_start_step: int, steps: int = 4) -> GPT:
    torch.manual_seed(0)
    net = GPT(VOCAB, 3, 32, 2, 16, mixer=DWA(3))
    optim = {"lr": 1e-2, "betas": [0.9, 0.95], "weight_decay": 0.0, "mixing_weight_decay": 0.0, "mixing_lr_scale": 1.0,
             "warmup_fraction": 0.0, "min_lr_ratio": 1.0, "dwa_start_step": dwa_start_step}
    data = [(x[:, :-1], x[:, 1:]) for x in (tokens(2, 17) for _ in range(steps))]
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(LanguageModel(net, optim, max_steps=steps), train_dataloaders=DataLoader(data, batch_size=None))
    return net


def test_delayed_dwa_keeps_alpha_at_identity_until_the_start_step():
    frozen, trained = _fit(dwa_start_step=4), _fit(dwa_start_step=0)
    assert torch.equal(frozen.mixer.alpha_matrix(), torch.eye(4))
    assert not torch.equal(trained.mixer.alpha_matrix(), torch.eye(4))
    late = _fit(dwa_start_step=3)  # trained in the last step only
    assert not torch.equal(late.mixer.alpha_matrix(), torch.eye(4))
    assert (late.mixer.alpha_matrix() - torch.eye(4)).abs().max() < (trained.mixer.alpha_matrix() - torch.eye(4)).abs().max()


@pytest.mark.parametrize("name", NODES)
def test_every_architecture_of_a_seed_starts_from_the_transformers_block_weights(name):
    """The tables are paired: for a given seed every row starts from the same embedding and block
    weights, its own mixing parameters at their init (whatever the mixer draws at construction)."""
    torch.manual_seed(7)
    transformer = build("transformer").state_dict()
    torch.manual_seed(7)
    ours = {k: v for k, v in build(name).state_dict().items() if not k.startswith("mixer.")}
    assert ours.keys() == transformer.keys()
    for key, value in ours.items():
        assert torch.equal(value, transformer[key]), key


@pytest.mark.parametrize("depth,block_size,blocks", [(48, 12, 8), (12, 3, 8), (6, 2, 6)])
def test_block_attn_res_keeps_about_eight_blocks_at_every_depth(depth, block_size, blocks):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=attn_res_block", f"depth={depth}", "width=32", "heads=2"])
    mixer = build_model(cfg.model, VOCAB, device="meta").mixer
    assert mixer.block_size == block_size and -(-2 * depth // mixer.block_size) == blocks


def test_dynamic_hyper_connections_normalise_the_streams_with_a_learnable_gain():
    mixer = build("hyper_connections_dynamic").mixer
    assert mixer.norm_gain.shape == (2 * 4, 32) and torch.equal(mixer.norm_gain, torch.ones(8, 32))
    x = tokens()
    net = build("hyper_connections_dynamic")
    with torch.no_grad():
        net.mixer.w_m.normal_()  # token-dependent weights, so that the normalised streams matter
        before = net(x)
        net.mixer.norm_gain.mul_(3.0)
        assert not torch.allclose(net(x), before)  # the gain scales H̄ inside tanh(H̄ W)


def test_x0_shortcut_offers_the_normalised_embedding_of_modded_nanogpt():
    torch.manual_seed(0)
    raw = build("x0_shortcut")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["model=x0_shortcut", "depth=4", "width=32", "heads=2", "seq_len=16",
                                           "model.net.mixer.normalize_x0=true"])
    torch.manual_seed(0)
    normed = build_model(cfg.model, VOCAB)
    x = tokens()
    assert torch.equal(raw(x), normed(x))  # λ = (1, 0): both are the Transformer at init
    seen = []
    normed.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        normed.mixer.lambdas[1] = torch.tensor([0.0, 1.0])  # block 1 reads the shortcut alone
        normed(x)
    x0 = normed.wte(x)
    assert torch.allclose(seen[0], torch.nn.functional.rms_norm(x0, x0.shape[-1:]), atol=1e-6)
