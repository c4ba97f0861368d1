"""Checks that refuse a configuration before any compute: `validate_config` raises a one-line
`ConfigError` (`key=value: what is allowed`) for the first setting that cannot run,
`check_group_choices` refuses `group=option` arguments with no YAML before Hydra starts, and
`check_renamed_keys` refuses a key under its former name (Hydra would only say it does not exist).

What a model node accepts is checked by the node's own constructor: validation builds the model on the
meta device (no memory, no compute) and turns the constructor's `arg=value: allowed ...` ValueError into
a ConfigError naming the config key, so the allowed values live in one place, the model code.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from denselab.config.errors import ConfigError
from denselab.config.fingerprint import RENAMED_KEYS
from denselab.config.resolvers import override_key

# Top-level keys of conf/config.yaml that the groups interpolate (`${depth}` …): the short names a
# researcher sweeps on the command line. `dwa_start_step` keeps the paper's name for Table 5's knob
# ("delaying the training of the DWA weights", App. B.4), although it freezes any mixer's parameters.
SHORTHANDS = ("depth", "width", "heads", "dilation", "dwa_period", "seq_len", "seed", "steps", "batch_size", "lr",
              "dwa_start_step")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "64-true")
# numpy's seeds, and so Lightning's `seed_everything`, are unsigned 32-bit integers; anything else fails
# (or, for a string of digits, is silently converted) only once the run is being set up.
SEED_RANGE = range(0, 2**32)
# Data parallel only: every device holds the whole model and trains its slice of each global batch
# (trainer.devices > 1 with `auto` is Lightning's DDP too). Sharded strategies are not wired or tested.
STRATEGIES = ("auto", "ddp")


# ---------------------------------------------------------------------------------------------
# Which shorthands a model uses
# ---------------------------------------------------------------------------------------------

def _walk_strings(node: Any, path: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def used_shorthands(cfg: DictConfig) -> set[str]:
    """Shorthands that some config group actually interpolates (outside the top level itself)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    used = set()
    for path, text in _walk_strings({k: v for k, v in raw.items() if k not in SHORTHANDS and k != "hydra"}):
        for name in SHORTHANDS:
            if re.search(r"\$\{\s*" + name + r"\s*\}", text):
                used.add(name)
    return used


# ---------------------------------------------------------------------------------------------
# Helpers: reading a key and refusing it in one line
# ---------------------------------------------------------------------------------------------

def _display_key(cfg: DictConfig, path: str) -> str:
    """The key the user would type: the shorthand when the node is `${shorthand}`, else the path."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    m = re.fullmatch(r"\$\{\s*(\w+)\s*\}", node) if isinstance(node, str) else None
    return m.group(1) if m and m.group(1) in SHORTHANDS else path


def _fail(cfg: DictConfig, path: str, value: Any, allowed: str) -> ConfigError:
    key = _display_key(cfg, path)
    where = f" ({path})" if key != path else ""
    return ConfigError(f"{key}={value!r}: allowed {allowed}{where}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    """A number that is not inf or nan (Hydra parses `lr=inf` and `lr=nan` as floats)."""
    return _is_num(v) and math.isfinite(v)


def _exists(cfg: DictConfig, path: str) -> bool:
    """Whether the key is present (set, null or '???')."""
    parent_path, _, key = path.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    return isinstance(parent, DictConfig) and key in parent.keys()


def _missing(cfg: DictConfig, path: str) -> bool:
    """Whether the key holds '???' (mandatory, not set)."""
    parent_path, _, key = path.rpartition(".")
    return OmegaConf.is_missing(OmegaConf.select(cfg, parent_path) if parent_path else cfg, key)


def _require(cfg: DictConfig, path: str, ok: Callable[[Any], bool], allowed: str) -> Any:
    if not _exists(cfg, path):
        return None
    if _missing(cfg, path):
        raise ConfigError(f"{path} is not set: allowed {allowed}")
    value = OmegaConf.select(cfg, path)
    if not ok(value):
        raise _fail(cfg, path, value, allowed)
    return value


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------

def validate_config(cfg: DictConfig, overrides: Iterable[str] = ()) -> None:
    """Raise ConfigError for the first setting that cannot run. Cheap: touches no data; the model is
    built on the meta device only."""
    overrides = list(overrides)
    model_name = OmegaConf.select(cfg, "model.name", default="?")
    check_renamed_keys(overrides)
    for old in RENAMED_KEYS:  # set under its former name in a YAML, or added with +key=value
        if _exists(cfg, old):
            raise _renamed(old, OmegaConf.select(cfg, old))

    # A shorthand given on the command line must reach the model, or the sweep repeats itself.
    used = used_shorthands(cfg)
    for o in overrides:
        key = override_key(o)
        if key in SHORTHANDS and key not in used:
            raise ConfigError(
                f"{o}: model={model_name} does not use '{key}', so every value would train the same model; "
                f"drop '{key}' for this model (allowed for it: {', '.join(s for s in SHORTHANDS if s in used)})"
            )
    _require(cfg, "seed", lambda v: _is_int(v) and v in SEED_RANGE, "an integer 0 … 2**32-1")

    # Model: the shape of the shared blocks. The mixer's own settings (dilation, semantics, ...) are
    # its constructor's to check, at the end (_meta_mixing_parameters).
    net = "model.net"
    _require(cfg, f"{net}.depth", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    width = _require(cfg, f"{net}.width", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    heads = _require(cfg, f"{net}.n_heads", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    if width is not None and heads is not None:
        if width % heads:
            raise _fail(cfg, f"{net}.width", width, f"multiples of heads={heads} (width must be divisible by heads)")
        if (width // heads) % 2:
            raise _fail(cfg, f"{net}.width", width, f"widths with an even head size (width/heads={width // heads} "
                        "is odd; rotary encoding rotates pairs of dims)")
    _require(cfg, f"{net}.dropout", lambda v: _is_num(v) and 0 <= v < 1, "0 <= dropout < 1")
    mixer = f"{net}.mixer"
    for key in ("depth", "width"):  # a mixer built for another shape than the blocks it wires
        if not _exists(cfg, f"{mixer}.{key}"):
            continue
        ours, model = OmegaConf.select(cfg, f"{mixer}.{key}"), OmegaConf.select(cfg, f"{net}.{key}")
        if ours != model:
            raise _fail(cfg, f"{mixer}.{key}", ours, f"the model's {key} ({model})")
    _require(cfg, "model.vocab_multiple", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    _require(cfg, f"{net}.max_seq_len", lambda v: _is_int(v) and v >= 1, "integers >= 1")

    # Data
    from denselab.data.tokenizers import TOKENIZERS

    _require(cfg, "data.tokenizer", lambda v: v in TOKENIZERS, f"one of {', '.join(TOKENIZERS)}")
    seq_len = _require(cfg, "data.seq_len", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    max_seq_len = OmegaConf.select(cfg, f"{net}.max_seq_len")
    if seq_len is not None and max_seq_len is not None and seq_len > max_seq_len:
        raise _fail(cfg, "data.seq_len", seq_len, f"<= model.net.max_seq_len={max_seq_len}")
    accumulate = _require(cfg, "trainer.accumulate_grad_batches", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    devices = _require(cfg, "trainer.devices", lambda v: _is_int(v) and v >= 1,
                       "integers >= 1 (the global batch is split over the devices, so their number must be known)")
    nodes = _require(cfg, "trainer.num_nodes", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    _require(cfg, "trainer.strategy", lambda v: v in STRATEGIES, f"one of {', '.join(STRATEGIES)}")
    batch = _require(cfg, "batch_size", lambda v: _is_int(v) and v >= 1, "integers >= 1 (sequences per optimiser step)")
    shards = (accumulate or 1) * (devices or 1) * (nodes or 1)
    if batch is not None and batch % shards:
        allowed = (f"multiples of trainer.accumulate_grad_batches={accumulate}" if shards == (accumulate or 1) else
                   f"multiples of trainer.accumulate_grad_batches × trainer.devices × trainer.num_nodes = "
                   f"{accumulate or 1} × {devices or 1} × {nodes or 1} = {shards}")
        raise _fail(cfg, "batch_size", batch, allowed)
    _require(cfg, "data.batch_size", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    _require(cfg, "data.num_proc", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    if OmegaConf.select(cfg, "data.tokenizer") == "bpe":
        _require(cfg, "data.bpe_vocab_size", lambda v: _is_int(v) and 258 <= v <= 65535,
                 "integers 258..65535 (256 bytes, the end-of-text token and at least one merge; token ids are uint16)")
    for key in ("data.val_windows", "data.final_val_windows"):
        _require(cfg, key, lambda v: v is None or (_is_int(v) and v >= 1), "null (all windows) or integers >= 1")
    from denselab.data.prepare import VERIFY_MODES

    _require(cfg, "data.verify_bins", lambda v: v in VERIFY_MODES, f"one of {', '.join(VERIFY_MODES)}")
    if _exists(cfg, "data.dataset_id"):  # a hub corpus: its own checks, the ones preparation would make
        from denselab.data.hub import HubDataset

        for key in ("data.name", "data.dataset_id", "data.revision"):
            if _missing(cfg, key):
                raise ConfigError(f"{key} is not set: allowed a non-empty string")
        settings = OmegaConf.to_container(cfg.data, resolve=True)
        HubDataset(**{k: settings[k] for k in inspect.signature(HubDataset).parameters
                      if k in settings and k != "cache_dir"})
    if _exists(cfg, "data.paths"):
        if _missing(cfg, "data.paths"):
            raise ConfigError("data.paths is not set: data=text needs data.paths=[file.txt,file.jsonl,...]")
        paths = OmegaConf.select(cfg, "data.paths")
        if not isinstance(paths, (list, ListConfig)) or not paths:
            raise ConfigError(f"data.paths={paths!r}: allowed a non-empty list, e.g. data.paths=[a.txt,b.jsonl]")

    # Optimisation. `lr=inf` would train to nan and only be noticed as a divergence; refuse it here.
    _require(cfg, "optim.lr", lambda v: _is_finite(v) and v > 0, "a finite number > 0")
    _require(cfg, "optim.betas", lambda v: len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)")
    _require(cfg, "optim.weight_decay", lambda v: _is_finite(v) and v >= 0, "finite numbers >= 0")
    _require(cfg, "optim.mixing_weight_decay", lambda v: _is_finite(v) and v >= 0, "finite numbers >= 0")
    _require(cfg, "optim.mixing_lr_scale", lambda v: _is_finite(v) and v >= 0, "finite numbers >= 0")
    start = _require(cfg, "optim.dwa_start_step", lambda v: _is_int(v) and v >= 0, "integers >= 0")
    _require(cfg, "optim.warmup_fraction", lambda v: _is_num(v) and 0 <= v < 1, "0 <= warmup_fraction < 1")
    _require(cfg, "optim.warmup_steps", lambda v: v is None or (_is_int(v) and v >= 0), "null or integers >= 0")
    _require(cfg, "optim.min_lr_ratio", lambda v: _is_num(v) and 0 <= v <= 1, "0 <= min_lr_ratio <= 1")

    # Trainer
    steps = _require(cfg, "trainer.max_steps", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    _require(cfg, "trainer.val_check_interval", lambda v: _is_int(v) and v >= 1, "integers >= 1 (steps)")
    _require(cfg, "trainer.gradient_clip_val", lambda v: v is None or (_is_num(v) and v >= 0), "null or numbers >= 0")
    _require(cfg, "trainer.precision", lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
    warmup = OmegaConf.select(cfg, "optim.warmup_steps")
    if warmup is not None and steps is not None and warmup >= steps:
        raise _fail(cfg, "optim.warmup_steps", warmup, f"fewer than steps={steps}")
    _require(cfg, "speed.inference_batch_size", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    _require(cfg, "speed.train_batch_size", lambda v: v is None or (_is_int(v) and v >= 1), "null or integers >= 1")
    _require(cfg, "speed.repeats", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    _require(cfg, "speed.warmup", lambda v: _is_int(v) and v >= 0, "integers >= 0")
    _require(cfg, "num_threads", lambda v: v is None or (_is_int(v) and v >= 1), "null or integers >= 1")
    _require(cfg, "ckpt_path", lambda v: v is None or isinstance(v, str), "null (fresh start), 'last' or a .ckpt path")
    _require(cfg, "compile", lambda v: isinstance(v, bool) or v == "auto", "true, false or auto (on CUDA only)")
    _require(cfg, "matmul_precision", lambda v: v in (None, "auto", "highest", "high", "medium"),
             "auto, null, highest, high or medium")

    # Last, the model itself, built on the meta device (no memory, no compute): the constructors'
    # checks, and whether it has depth-mixing parameters at all.
    mixing = _meta_mixing_parameters(cfg, model_name)
    if start and not mixing:
        raise _fail(cfg, "optim.dwa_start_step", start, f"0 for model={model_name}, which has no depth-mixing parameters")


# A constructor's refusal of one argument: "dilation=0: allowed integers >= 1" (models/*.py).
_ARGUMENT_ERROR = re.compile(r"(?P<argument>\w+)=.*?: allowed (?P<allowed>.+)")
# Hydra names the node whose constructor failed on a line of its InstantiationException.
_FULL_KEY = re.compile(r"^full_key: (?P<node>\S+)$", re.MULTILINE)


def _meta_mixing_parameters(cfg: DictConfig, model_name: str) -> int:
    """Number of depth-mixing parameters of the configured model, built on the meta device. A
    constructor's `arg=value: allowed ...` error becomes `<config key>=value: allowed ...`."""
    from hydra.errors import InstantiationException

    from denselab.models import build_model, count_parameters

    try:
        model = build_model(cfg.model, vocab_size=cfg.model.vocab_multiple, device="meta")
    except (InstantiationException, ValueError) as e:
        cause = e.__cause__ or e
        argument = _ARGUMENT_ERROR.fullmatch(str(cause).strip())
        node = _FULL_KEY.search(str(e))
        if argument and node and _exists(cfg, key := f"{node['node']}.{argument['argument']}"):
            raise _fail(cfg, key, OmegaConf.select(cfg, key), argument["allowed"]) from None
        # Any other refusal (or an argument the config does not set): the constructor's first line.
        raise ConfigError(f"model={model_name}: {cause}".splitlines()[0]) from None
    return count_parameters(model)["mixing"]


def _renamed(old: str, value: Any) -> ConfigError:
    new = RENAMED_KEYS[old]
    return ConfigError(f"{old}={value}: renamed {new} (the group holds every mixer's parameters, not DWA's alone); "
                       f"pass {new}={value}")


def check_renamed_keys(overrides: Iterable[str]) -> None:
    """Refuse a command-line override that names a key by its former name (fingerprint.RENAMED_KEYS),
    before Hydra, which would refuse it only as a key that does not exist."""
    for o in overrides:
        if "=" in o and (key := override_key(o)) in RENAMED_KEYS:
            raise _renamed(key, o.split("=", 1)[1])


def public_options(conf_dir: str | Path, group: str) -> list[str]:
    """The options of a config group a user chooses from: its YAMLs, less the private `_name.yaml`
    ones that other options of the group build on (data/_hub, experiment/_paper, scale/_scaled, ...)."""
    return sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml") if not p.stem.startswith("_"))


def _groups(conf_dir: Path) -> list[str]:
    return sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra")


def config_groups_help(conf_dir: str | Path) -> str:
    """`group: option, option, ...`, one line a group, for `run.py --help` (conf/hydra/default.yaml):
    Hydra's own list ($APP_CONFIG_GROUPS) shows the private options too."""
    return "\n".join(f"{group}: {', '.join(public_options(conf_dir, group))}" for group in _groups(Path(conf_dir)))


def check_group_choices(argv: list[str], conf_dir: str | Path) -> None:
    """Refuse `group=option` arguments naming an option that has no YAML, before Hydra starts."""
    conf_dir = Path(conf_dir)
    groups = set(_groups(conf_dir))
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in groups or any(c in value for c in "()[]{}$"):
            continue  # not a group, or a sweep expression Hydra must interpret
        options = public_options(conf_dir, key)
        for choice in value.split(","):
            choice = choice.strip()
            if choice and choice != "null" and choice not in options:
                print(f"error: {key}={choice}: unknown {key}; allowed: {', '.join(options)}", file=sys.stderr)
                raise SystemExit(2)
