"""What `trainer=gpu` and the CUDA defaults do, checked where a CPU can: bf16 autocast, the `auto`
settings, and the small scale at toy size."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from denselab.config import register_resolvers, validate_config
from denselab.lit_module import LanguageModel
from denselab.models import build_model
from denselab.train import on_cuda
from tests.conftest import REPO, TINY, run_cli


def composed(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_bf16_autocast_loss_is_within_tolerance_of_fp32_at_step_0_and_the_dwa_sums_stay_fp32():
    cfg = composed("model=denseformer", "depth=4", "width=64", "heads=2")
    torch.manual_seed(0)
    net = build_model(cfg.model, vocab_size=320)
    x = torch.randint(0, 256, (4, 64))
    y = torch.randint(0, 256, (4, 64))
    block_inputs = []  # each block reads the previous DWA's output Y_i
    hooks = [b.register_forward_pre_hook(lambda m, args: block_inputs.append(args[0].dtype)) for b in net.blocks]
    fp32 = LanguageModel.cross_entropy(net(x), y)
    block_inputs.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = LanguageModel.cross_entropy(net(x), y)
    for h in hooks:
        h.remove()
    assert bf16.dtype == torch.float32 and bf16.item() == pytest.approx(fp32.item(), rel=1e-2)
    assert bf16.item() != fp32.item()  # autocast did run the matrix products in bf16
    assert block_inputs[1:] == [torch.float32] * (len(net.blocks) - 1)  # every Y_i after X_0 summed in fp32


def test_compile_and_tf32_are_auto_on_cuda_only():
    cfg = composed()
    assert cfg.compile == "auto" and cfg.matmul_precision == "auto"
    assert on_cuda(composed("trainer=gpu")) and not on_cuda(composed("trainer.accelerator=cpu"))
    validate_config(composed("compile=auto", "matmul_precision=high"))


def test_scale_small_is_table_8s_smallest_model_on_owt2_with_gpt2_bpe():
    cfg = composed("scale=small")
    assert (cfg.depth, cfg.width, cfg.heads, cfg.seq_len, cfg.batch_size) == (24, 384, 6, 256, 128)
    assert cfg.data.name == "owt2" and cfg.data.tokenizer == "gpt2" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.steps == 20_000 and cfg.optim.warmup_steps == 1000 and cfg.scale.seeds == "0,1,2"


def test_scale_small_trains_at_toy_size(tmp_path, data_dir):
    toy = ["data=stdlib", "data.tokenizer=byte", "trainer=default", "paper.steps=12", "paper.warmup_steps=2",
           *[a for a in TINY if not a.startswith("steps=")]]  # 12 paper steps ÷ 2 = 6
    run_cli(["scale=small", *toy], tmp_path, data_dir)
    (metrics,) = tmp_path.rglob("metrics.json")
    record = json.loads(metrics.read_text())
    assert record["status"] == "completed" and record["hparams"]["scale"] == "small"
    assert record["hparams"]["paper_batch_size"] == 400 and record["steps"] == 6


@pytest.mark.parametrize("scale,decay", [("paper", 0.1), ("small", 0.1), ("mini", 0.0), ("smoke", 0.0)])
def test_the_mixing_weights_are_decayed_as_in_the_official_code_at_the_gpu_scales(scale, decay):
    assert composed(f"scale={scale}").optim.mixing_weight_decay == decay
