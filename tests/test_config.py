"""Invalid settings are refused before any compute, in one line naming key, value and what is allowed."""

from __future__ import annotations


import pytest
from hydra import compose, initialize_config_dir

from denselab.config import ConfigError, dirname, register_resolvers, used_shorthands, validate_config
from tests.conftest import REPO, TINY, run_cli

register_resolvers()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def refusal(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(composed(*overrides), overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_default_config_is_valid():
    validate_config(composed())


@pytest.mark.parametrize("overrides,expected", [
    (["dilation=0"], "dilation=0: allowed integers >= 1 (model.net.mixer.dilation)"),
    (["dwa_period=0"], "dwa_period=0: allowed integers >= 1 (model.net.mixer.period)"),
    (["width=100", "heads=3"], "width=100: allowed multiples of heads=3"),
    (["width=96", "heads=32"], "width=96: allowed widths with an even head size"),
    (["depth=0"], "depth=0: allowed integers >= 1 (model.net.depth)"),
    (["steps=0"], "steps=0: allowed integers >= 1 (trainer.max_steps)"),
    (["lr=-0.001"], "lr=-0.001: allowed a finite number > 0 (optim.lr)"),
    (["batch_size=10", "trainer.accumulate_grad_batches=4"], "batch_size=10: allowed multiples of trainer.accumulate_grad_batches=4"),
    (["batch_size=10", "trainer.devices=4"], "batch_size=10: allowed multiples of trainer.accumulate_grad_batches × "
     "trainer.devices × trainer.num_nodes = 1 × 4 × 1 = 4"),
    (["trainer.devices=auto"], "trainer.devices='auto': allowed integers >= 1 (the global batch is split over the devices"),
    (["trainer.strategy=fsdp"], "trainer.strategy='fsdp': allowed one of auto, ddp"),
    (["compile=maybe"], "compile='maybe': allowed true, false or auto (on CUDA only)"),
    (["data.tokenizer=sentencepiece"], "data.tokenizer='sentencepiece': allowed one of byte, gpt2, bpe"),
    (["optim.warmup_fraction=1.5"], "optim.warmup_fraction=1.5: allowed 0 <= warmup_fraction < 1"),
    (["trainer.precision=8-bit"], "trainer.precision='8-bit': allowed one of 32-true"),
    (["model.net.max_seq_len=64", "seq_len=128"], "seq_len=128: allowed <= model.net.max_seq_len=64 (data.seq_len)"),
    (["data=text"], "data.paths is not set"),
    (["model=hyper_connections", "model.net.mixer.streams=0"], "model.net.mixer.streams=0: allowed integers >= 1"),
    (["model=attn_res", "model.net.mixer.block_size=0"], "model.net.mixer.block_size=0: allowed null (full AttnRes)"),
    (["dwa_start_step=-1"], "dwa_start_step=-1: allowed integers >= 0"),
    (["model=transformer", "dwa_start_step=100"], "dwa_start_step=100: allowed 0 for model=transformer, which has no depth-mixing"),
])
def test_invalid_setting_is_refused_with_key_value_and_allowed(overrides, expected):
    assert refusal(*overrides).startswith(expected)


@pytest.mark.parametrize("override,expected", [
    ("seed=-1", "seed=-1: allowed an integer 0 … 2**32-1"),
    ("seed=abc", "seed='abc': allowed an integer 0 … 2**32-1"),
    ("seed=4294967296", "seed=4294967296: allowed an integer 0 … 2**32-1"),
    ("seed=1.5", "seed=1.5: allowed an integer 0 … 2**32-1"),
    ("lr=inf", "lr=inf: allowed a finite number > 0 (optim.lr)"),
    ("lr=nan", "lr=nan: allowed a finite number > 0 (optim.lr)"),
    ("lr=-1", "lr=-1: allowed a finite number > 0 (optim.lr)"),
    ("lr=0", "lr=0: allowed a finite number > 0 (optim.lr)"),
])
def test_bad_seed_or_lr_is_refused_in_one_line(override, expected):
    # Hydra parses `lr=inf` / `lr=nan` as floats and `seed=abc` as a string: all reach validate_config.
    assert refusal(override) == expected


def test_largest_seed_is_valid():
    validate_config(composed(f"seed={2**32 - 1}"))


@pytest.mark.parametrize("overrides,expected", [
    (["model=denseformer", "model.net.mixer.semantics=both"], "model.net.mixer.semantics='both': allowed paper, official"),
    (["model=denseformer", "model.net.mixer.implementation=slow"],
     "model.net.mixer.implementation='slow': allowed auto, fast, reference"),
    (["model=connect_to_last", "model.net.mixer.implementation=slow"],
     "model.net.mixer.implementation='slow': allowed auto, fast, reference"),
    (["model=last_k", "model.net.mixer.k=0"], "model.net.mixer.k=0: allowed integers >= 1"),
    (["model=elc_bert", "model.net.mixer.weight_init=one"], "model.net.mixer.weight_init='one': allowed last, zero"),
    (["model=denseformer", "dilation=abc"], "dilation='abc': allowed integers >= 1 (model.net.mixer.dilation)"),
])
def test_bad_model_value_is_refused_with_the_constructors_own_allowed_values(overrides, expected):
    # The allowed values come from the model code (built on the meta device), not from a copy in config/.
    assert refusal(*overrides) == expected


def test_dilation_given_to_the_transformer_is_refused():
    message = refusal("model=transformer", "dilation=2")
    assert message.startswith("dilation=2: model=transformer does not use 'dilation'")


def test_transformer_uses_the_architecture_shorthands_but_not_the_dwa_ones():
    used = used_shorthands(composed("model=transformer"))
    assert {"depth", "width", "heads", "seq_len", "seed", "steps", "batch_size", "lr"} <= used
    assert not {"dilation", "dwa_period"} & used
    assert {"dilation", "dwa_period"} <= used_shorthands(composed("model=denseformer"))


def test_run_folders_are_named_by_their_overrides():
    assert dirname(["model=denseformer", "dilation=2"]) == "dilation=2,model=denseformer"
    assert dirname([]) == "default"
    assert dirname(["ckpt_path=null", "seed=1"], exclude_keys=["ckpt_path"]) == "seed=1"
    assert dirname(["data.paths=[/a/b.txt]"]) == "data.paths=[_a_b.txt]"
    assert len(dirname([f"x{i}=1" for i in range(100)])) <= 111


# -- through the command line, as a user meets them ------------------------------------------------------

def test_cli_refuses_bad_value_in_one_line_and_creates_no_run(tmp_path, data_dir):
    proc = run_cli(["dilation=0"], tmp_path, data_dir, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: dilation=0: allowed integers >= 1 (model.net.mixer.dilation)"]
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("*.ckpt"))


def test_cli_refuses_unknown_model_listing_the_known_ones(tmp_path, data_dir):
    proc = run_cli(["model=densformer"], tmp_path, data_dir, check=False)
    assert proc.returncode == 2
    from denselab.models.catalog import node_names

    assert proc.stderr.strip() == f"error: model=densformer: unknown model; allowed: {', '.join(sorted(node_names()))}"


def test_cli_refuses_a_sweep_with_an_invalid_job_before_starting_any(tmp_path, data_dir):
    proc = run_cli(["-m", "model=denseformer,transformer", "dilation=1,2", *TINY], tmp_path, data_dir, check=False)
    assert proc.returncode == 2
    assert "does not use 'dilation'" in proc.stderr
    assert "none of the 4 jobs was started" in proc.stderr
    assert not list(tmp_path.rglob("metrics.json"))


def test_cli_refuses_sequence_longer_than_the_data(tmp_path, data_dir):
    corpus = tmp_path / "tiny.jsonl"
    corpus.write_text("".join(f'{{"text": "short document {i}"}}\n' for i in range(40)))
    proc = run_cli(["data=text", f"data.paths=[{corpus}]", "seq_len=4096", "model.net.max_seq_len=4096",
                    *[a for a in TINY if not a.startswith("seq_len")]], tmp_path / "logs", data_dir, check=False)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")][0].startswith(
        "error: seq_len=4096: longer than the data allows; the train split has")
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


def test_a_run_folder_of_another_training_is_refused_naming_only_training_keys(tmp_path):
    from omegaconf import OmegaConf

    from denselab.config import training_fingerprint
    from denselab.train import _check_same_training

    before = {"name": "a", "lr": 0.1, "compile": False, "model": {"net": {"mixer": {"implementation": "fast"}}}}
    OmegaConf.save(OmegaConf.create(before), tmp_path / "config.yaml")
    previous = {"status": "completed", "fingerprint": training_fingerprint(before)}
    same = {**before, "name": "b", "compile": True, "model": {"net": {"mixer": {"implementation": "auto"}}}}
    _check_same_training(OmegaConf.create(same), tmp_path, previous)  # nothing trained differs: accepted
    with pytest.raises(ConfigError, match=r"differs in lr\)"):
        _check_same_training(OmegaConf.create({**same, "lr": 0.2}), tmp_path, previous)


def test_moving_the_folders_keeps_the_training_fingerprint():
    """Paths say where a run is, not what it trains: a sweep folder moved elsewhere (another root, output
    folder or data cache) keeps its fingerprint, so it is resumed and skipped as before."""
    from omegaconf import OmegaConf

    from denselab.config import training_fingerprint

    def resolved(root: str, *overrides: str) -> dict:
        cfg = composed(f"paths.root_dir={root}", f"paths.output_dir={root}/logs/sweeps/s/default", *overrides)
        return OmegaConf.to_container(cfg, resolve=True)

    here, moved = resolved("/old/place"), resolved("/new/place")
    assert here["trainer"]["default_root_dir"] != moved["trainer"]["default_root_dir"]
    assert here["data"]["cache_dir"] != moved["data"]["cache_dir"]
    assert training_fingerprint(here) == training_fingerprint(moved)
    # Set directly too, not only through paths.*.
    moved["trainer"]["default_root_dir"], moved["data"]["cache_dir"] = "/elsewhere/run", "/elsewhere/data"
    assert training_fingerprint(here) == training_fingerprint(moved)
    assert training_fingerprint(here) != training_fingerprint(resolved("/old/place", "lr=0.002"))
