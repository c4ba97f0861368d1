"""Configuration, by concern:

- `errors`: `ConfigError`, the one-line `key=value: what is allowed` refusal.
- `resolvers`: the Hydra resolvers conf/*.yaml calls (`${denselab.scale:...}`) and run-folder names.
- `fingerprint`: what a run trains, so that a run folder is resumed only by the same training.
- `validation`: every invalid setting refused before any compute.

This module re-exports the names the rest of denselab imports (`from denselab.config import X`);
anything else is imported from its own module.
"""

from denselab.config.errors import ConfigError
from denselab.config.fingerprint import NOT_TRAINING, NOT_TRAINING_NESTED, changed_keys, training_fingerprint
from denselab.config.resolvers import dirname, hydra_quoted, register_resolvers
from denselab.config.validation import SHORTHANDS, check_group_choices, used_shorthands, validate_config

__all__ = [
    "ConfigError",
    "NOT_TRAINING", "NOT_TRAINING_NESTED", "changed_keys", "training_fingerprint",
    "dirname", "hydra_quoted", "register_resolvers",
    "SHORTHANDS", "check_group_choices", "used_shorthands", "validate_config",
]
