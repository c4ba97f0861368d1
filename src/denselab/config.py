"""Config checks and Hydra helpers: every invalid setting is refused before any compute, in one line
naming the key, its value and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

# Top-level keys of conf/config.yaml that the groups interpolate (`${depth}` …): the short names a
# researcher sweeps on the command line.
SHORTHANDS = ("depth", "width", "heads", "dilation", "dwa_period", "seq_len", "seed", "steps", "batch_size", "lr",
              "dwa_start_step")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "64-true")


class ConfigError(ValueError):
    """A configuration that cannot run. Its message is one line: key=value: what is allowed."""


# ---------------------------------------------------------------------------------------------
# Deterministic output folders
# ---------------------------------------------------------------------------------------------

def override_key(override: str) -> str:
    """'++model.depth=3' → 'model.depth'."""
    return override.split("=", 1)[0].lstrip("+~")


def dirname(overrides: Iterable[str], exclude_keys: Iterable[str] = (), more_exclude_keys: Iterable[str] = ()) -> str:
    """A folder name that is a pure function of the command-line overrides, e.g.
    'dilation=2,model=denseformer'; 'default' when there are none."""
    exclude = set(exclude_keys) | set(more_exclude_keys)
    kept = sorted(o for o in overrides if override_key(o) not in exclude and not override_key(o).startswith("hydra."))
    name = ",".join(kept) or "default"
    name = re.sub(r"[^A-Za-z0-9=,._+\-\[\]]", "_", name)
    if len(name) > 120:  # keep paths short but unique
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def sweep_dirname(name: str | None, overrides: Iterable[str], exclude_keys: Iterable[str] = ()) -> str:
    """`name` when given, else `dirname` of the sweep's own (unexpanded) overrides."""
    return str(name) if name else dirname(overrides, exclude_keys)


def micro_batch(batch_size: int, accumulate: int) -> int:
    """Sequences per micro-batch, so that `accumulate` micro-batches make one optimiser batch."""
    if batch_size % accumulate:
        raise ConfigError(f"batch_size={batch_size}: allowed multiples of trainer.accumulate_grad_batches={accumulate}")
    return batch_size // accumulate


def scaled(value: float, divisor: float, minimum: int = 1) -> int:
    """A paper quantity at another scale: value / divisor rounded half up, at least `minimum`."""
    return max(int(minimum), math.floor(value / divisor + 0.5))


def scaled_width(width: int, divisor: float, head_size: int) -> int:
    """A paper width at another scale, rounded to a whole number of heads of `head_size`."""
    return head_size * max(1, math.floor(width / divisor / head_size + 0.5))


def exact_div(a: int, b: int) -> int:
    if a % b:
        raise ConfigError(f"{a} is not a multiple of {b}")
    return a // b


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("denselab.scale", scaled, replace=True)
    OmegaConf.register_new_resolver("denselab.scale_width", scaled_width, replace=True)
    OmegaConf.register_new_resolver("denselab.div", exact_div, replace=True)
    OmegaConf.register_new_resolver("denselab.mul", lambda a, b: int(a) * int(b), replace=True)
    OmegaConf.register_new_resolver("denselab.cpu_count", lambda: os.cpu_count() or 1, replace=True)
    OmegaConf.register_new_resolver("denselab.micro_batch", micro_batch, replace=True)
    OmegaConf.register_new_resolver("denselab.dirname", dirname, replace=True)
    OmegaConf.register_new_resolver("denselab.sweep_dirname", sweep_dirname, replace=True)


# ---------------------------------------------------------------------------------------------
# What a run trains: two runs with the same fingerprint train the same thing
# ---------------------------------------------------------------------------------------------

# Keys that do not change what is trained (names, folders, reporting, logging, measuring).
NOT_TRAINING = ("experiment_name", "name", "report", "paths", "ckpt_path", "speed", "matmul_precision", "num_threads",
                "compile")
# (DWA's `implementation`: the same sums either way, exact to 1e-5; runs made before it existed still match.)
NOT_TRAINING_NESTED = (("data", "num_proc"), ("trainer", "enable_progress_bar"), ("callbacks",), ("logger",),
                       ("model", "net", "mixer", "implementation"))


# DWA's choices, as `denselab.models.dwa` defines them (SEMANTICS, IMPLEMENTATIONS): written out here
# because this module checks a config before torch is imported (tests/test_config.py keeps them equal).
DWA_SEMANTICS = ("paper", "official")
DWA_IMPLEMENTATIONS = ("auto", "fast", "reference")


def training_fingerprint(resolved: dict) -> str:
    """sha256 of the resolved config without the keys that do not change what is trained."""
    trimmed = copy.deepcopy({k: v for k, v in resolved.items() if k not in NOT_TRAINING})
    for path in NOT_TRAINING_NESTED:
        node = trimmed
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return hashlib.sha256(json.dumps(trimmed, sort_keys=True, default=str).encode()).hexdigest()


def changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += changed_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


# ---------------------------------------------------------------------------------------------
# Validation
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


def validate_config(cfg: DictConfig, overrides: Iterable[str] = ()) -> None:
    """Raise ConfigError for the first setting that cannot run. Cheap: touches no data or model."""
    overrides = list(overrides)
    model_name = OmegaConf.select(cfg, "model.name", default="?")

    # A shorthand given on the command line must reach the model, or the sweep repeats itself.
    used = used_shorthands(cfg)
    for o in overrides:
        key = override_key(o)
        if key in SHORTHANDS and key not in used:
            raise ConfigError(
                f"{o}: model={model_name} does not use '{key}', so every value would train the same model; "
                f"drop '{key}' for this model (allowed for it: {', '.join(s for s in SHORTHANDS if s in used)})"
            )

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
    if OmegaConf.select(cfg, mixer) is not None:
        _require(cfg, f"{mixer}.dilation", lambda v: _is_int(v) and v >= 1, "integers >= 1")
        _require(cfg, f"{mixer}.period", lambda v: _is_int(v) and v >= 1, "integers >= 1")
        _require(cfg, f"{mixer}.semantics", lambda v: v in DWA_SEMANTICS, f"one of {', '.join(DWA_SEMANTICS)}")
        _require(cfg, f"{mixer}.implementation", lambda v: v in DWA_IMPLEMENTATIONS,
                 f"one of {', '.join(DWA_IMPLEMENTATIONS)}")
        _require(cfg, f"{mixer}.k", lambda v: _is_int(v) and v >= 1, "integers >= 1")
        _require(cfg, f"{mixer}.streams", lambda v: _is_int(v) and v >= 1, "integers >= 1")
        _require(cfg, f"{mixer}.block_size", lambda v: v is None or (_is_int(v) and v >= 1),
                 "null (full AttnRes) or integers >= 1")
        _require(cfg, f"{mixer}.weight_init", lambda v: v in ("last", "zero"), "one of last, zero")
        for key in ("depth", "width"):
            if _exists(cfg, f"{mixer}.{key}") and OmegaConf.select(cfg, f"{mixer}.{key}") != OmegaConf.select(cfg, f"{net}.{key}"):
                raise _fail(cfg, f"{mixer}.{key}", OmegaConf.select(cfg, f"{mixer}.{key}"),
                            f"the model's {key} ({OmegaConf.select(cfg, f'{net}.{key}')})")
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
    batch = _require(cfg, "batch_size", lambda v: _is_int(v) and v >= 1, "integers >= 1 (sequences per optimiser step)")
    if batch is not None and accumulate is not None and batch % accumulate:
        raise _fail(cfg, "batch_size", batch, f"multiples of trainer.accumulate_grad_batches={accumulate}")
    _require(cfg, "data.batch_size", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    _require(cfg, "data.num_proc", lambda v: _is_int(v) and v >= 1, "integers >= 1")
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

    # Optimisation
    _require(cfg, "optim.lr", lambda v: _is_num(v) and v > 0, "numbers > 0")
    _require(cfg, "optim.betas", lambda v: len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)")
    _require(cfg, "optim.weight_decay", lambda v: _is_num(v) and v >= 0, "numbers >= 0")
    _require(cfg, "optim.dwa_weight_decay", lambda v: _is_num(v) and v >= 0, "numbers >= 0")
    _require(cfg, "optim.dwa_lr_scale", lambda v: _is_num(v) and v >= 0, "numbers >= 0")
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
    _require(cfg, "compile", lambda v: isinstance(v, bool), "true or false")

    # Last, the model itself, built on the meta device (no memory, no compute): constructor checks
    # and whether it has depth-mixing parameters at all.
    mixing = _meta_mixing_parameters(cfg, model_name)
    if start and not mixing:
        raise _fail(cfg, "optim.dwa_start_step", start, f"0 for model={model_name}, which has no depth-mixing parameters")


def _meta_mixing_parameters(cfg: DictConfig, model_name: str) -> int:
    """Number of depth-mixing parameters of the configured model, built on the meta device."""
    from hydra.errors import InstantiationException

    from denselab.models import build_model, count_parameters

    try:
        model = build_model(cfg.model, vocab_size=cfg.model.vocab_multiple, device="meta")
    except (InstantiationException, ValueError) as e:
        cause = e.__cause__ or e
        raise ConfigError(f"model={model_name}: {cause}".splitlines()[0]) from None
    return count_parameters(model)["dwa"]


def check_group_choices(argv: list[str], conf_dir: str | Path) -> None:
    """Refuse `group=option` arguments naming an option that has no YAML, before Hydra starts."""
    conf_dir = Path(conf_dir)
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in groups or any(c in value for c in "()[]{}$"):
            continue  # not a group, or a sweep expression Hydra must interpret
        options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml") if not p.stem.startswith("_"))
        for choice in value.split(","):
            choice = choice.strip()
            if choice and choice != "null" and choice not in options:
                print(f"error: {key}={choice}: unknown {key}; allowed: {', '.join(options)}", file=sys.stderr)
                raise SystemExit(2)
