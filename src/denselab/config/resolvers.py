"""The Hydra resolvers that conf/*.yaml calls by name (`${denselab.scale:...}`, `${denselab.dirname:...}`
...), and the deterministic run-folder names they produce.

`register_resolvers()` must run before a config is composed (run.py, the tests, the report and data
commands call it); the names registered there are part of the YAML's vocabulary.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from typing import Iterable

from omegaconf import OmegaConf

from denselab.config.errors import ConfigError

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


def hydra_quoted(value: str) -> str:
    """`value` as a quoted override value that Hydra's parser reads back unchanged (run folders hold '=' and ',')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sweep_dirname(name: str | None, overrides: Iterable[str], exclude_keys: Iterable[str] = ()) -> str:
    """`name` when given, else `dirname` of the sweep's own (unexpanded) overrides."""
    return str(name) if name else dirname(overrides, exclude_keys)


# ---------------------------------------------------------------------------------------------
# Arithmetic the YAML needs (scales, micro-batches)
# ---------------------------------------------------------------------------------------------


def micro_batch(batch_size: int, accumulate: int, devices: int = 1, num_nodes: int = 1) -> int:
    """Sequences per micro-batch on one device: `batch_size` (the global batch of an optimiser step)
    split over `accumulate` micro-batches on each of `devices` × `num_nodes` devices."""
    for key, value in (("trainer.devices", devices), ("trainer.num_nodes", num_nodes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key}={value}: allowed integers >= 1 (the global batch is split over the devices, "
                              "so their number must be known before training)")
    shards = accumulate * devices * num_nodes
    if batch_size % shards:
        allowed = (f"multiples of trainer.accumulate_grad_batches={accumulate}" if shards == accumulate else
                   f"multiples of trainer.accumulate_grad_batches × trainer.devices × trainer.num_nodes = "
                   f"{accumulate} × {devices} × {num_nodes} = {shards}")
        raise ConfigError(f"batch_size={batch_size}: allowed {allowed}")
    return batch_size // shards


def scaled(value: float, divisor: float, minimum: int = 1) -> int:
    """A paper quantity at another scale: value / divisor rounded half up, at least `minimum`."""
    return max(int(minimum), math.floor(value / divisor + 0.5))


def scaled_width(width: int, divisor: float, head_size: int) -> int:
    """A paper width at another scale, rounded to a whole number of heads of `head_size`."""
    return head_size * max(1, math.floor(width / divisor / head_size + 0.5))


def final_val_windows(steps: int, batch_size: int, val_windows: int | None) -> int:
    """Windows of the default final evaluation: as many as the run trained on, at least `val_windows`
    (the data module reads the whole split when that is more than it has)."""
    return max(int(steps) * int(batch_size), int(val_windows or 0), 1)


def exact_div(a: int, b: int) -> int:
    if a % b:
        raise ConfigError(f"{a} is not a multiple of {b}")
    return a // b


def register_resolvers() -> None:
    """Register every `denselab.*` resolver with OmegaConf (idempotent: `replace=True`)."""
    OmegaConf.register_new_resolver("denselab.scale", scaled, replace=True)
    OmegaConf.register_new_resolver("denselab.scale_width", scaled_width, replace=True)
    OmegaConf.register_new_resolver("denselab.div", exact_div, replace=True)
    OmegaConf.register_new_resolver("denselab.mul", lambda a, b: int(a) * int(b), replace=True)
    OmegaConf.register_new_resolver("denselab.cpu_count", lambda: os.cpu_count() or 1, replace=True)
    OmegaConf.register_new_resolver("denselab.micro_batch", micro_batch, replace=True)
    OmegaConf.register_new_resolver("denselab.final_val_windows", final_val_windows, replace=True)
    OmegaConf.register_new_resolver("denselab.dirname", dirname, replace=True)
    OmegaConf.register_new_resolver("denselab.sweep_dirname", sweep_dirname, replace=True)
