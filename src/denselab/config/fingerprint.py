"""What a run trains: `training_fingerprint` hashes the resolved config without the keys that do not
change the training, so two runs with the same fingerprint train the same thing. A run folder is
resumed or skipped only when its recorded fingerprint matches (train.py); `changed_keys` names what
differs when it does not. `RENAMED_KEYS` lists the keys renamed since runs were first recorded.
"""

from __future__ import annotations

import copy
import hashlib
import json

# Top-level keys that do not change what is trained (names, folders, reporting, measuring).
NOT_TRAINING = ("experiment_name", "name", "report", "paths", "ckpt_path", "speed", "matmul_precision", "num_threads",
                "compile")
# Nested ones. Paths say where a run lives, not what it trains: `trainer.default_root_dir` (the run
# folder) and `data.cache_dir` (the token cache, whose content the data settings fix) are left out
# so that a sweep folder moved elsewhere keeps its fingerprint. (`data.paths` / `data.val_paths` /
# `data.data_files` stay in: they name the text that is trained on.) `callbacks` and `logger` hold
# folders too, and no training setting. DWA's `implementation`: the same sums either way, exact to
# 1e-5; runs made before it existed still match. How many devices share a step (and so the per-device
# micro-batch `data.batch_size`) does not change it either: the global batch of every step is the same
# (datamodule.py), so a run interrupted on 8 GPUs may resume on 4. Nor does how the final evaluation is
# batched or how many windows it reads (metrics.json records final_val_tokens).
NOT_TRAINING_NESTED = (("data", "num_proc"), ("data", "cache_dir"), ("trainer", "enable_progress_bar"),
                       ("trainer", "default_root_dir"), ("callbacks",), ("logger",),
                       ("model", "net", "mixer", "implementation"), ("data", "batch_size"), ("trainer", "devices"),
                       ("trainer", "num_nodes"), ("trainer", "strategy"), ("trainer", "use_distributed_sampler"),
                       ("data", "eval_batch_size"), ("data", "final_val_windows"))


# Keys renamed since runs were first recorded: old name → new name, within the same group. validation.py
# refuses the old names in one line naming the new one. The fingerprint hashes each value under its old
# name, so a run folder recorded before the rename is resumed or skipped by the same training (not refused
# as "another configuration"), and a run records the fingerprint its training always had.
RENAMED_KEYS = {
    # The group holds every mixer's parameters (hyper-connection, MUDD, gains), not DWA's α alone.
    "optim.dwa_weight_decay": "optim.mixing_weight_decay",
    "optim.dwa_lr_scale": "optim.mixing_lr_scale",
}


def _rename(config: dict, pairs: dict[str, str]) -> dict:
    """A copy of a nested config with each dotted key `a.b` of `pairs` renamed to `a.c`."""
    config = copy.deepcopy(config)
    for old, new in pairs.items():
        parent, _, key = old.rpartition(".")
        node = config
        for part in parent.split(".") if parent else ():
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and key in node:
            node[new.rpartition(".")[2]] = node.pop(key)
    return config


def with_current_names(config: dict) -> dict:
    """A config recorded before a rename (a run folder's config.yaml), with today's key names."""
    return _rename(config, RENAMED_KEYS)


def training_fingerprint(resolved: dict) -> str:
    """sha256 of the resolved config without the keys that do not change what is trained."""
    old_names = _rename(resolved, {new: old for old, new in RENAMED_KEYS.items()})  # a copy
    trimmed = {k: v for k, v in old_names.items() if k not in NOT_TRAINING}
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
