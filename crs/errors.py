"""Errors the CLI turns into one clear line (no traceback)."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the accepted values."""
