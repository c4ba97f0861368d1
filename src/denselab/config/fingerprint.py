"""What a run trains: `training_fingerprint` hashes the resolved config without the keys that do not
change the training, so two runs with the same fingerprint train the same thing. A run folder is
resumed or skipped only when its recorded fingerprint matches (train.py); `changed_keys` names what
differs when it does not.
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
