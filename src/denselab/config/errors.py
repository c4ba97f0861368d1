"""The one error a configuration check raises: `ConfigError`, a one-line `key=value: what is allowed`.

Its own module so that code that only refuses settings (data preparation, same-time runs, ...) can
import it without the Hydra resolvers or the validation rules.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run. Its message is one line: key=value: what is allowed."""
