"""Imports the turn-level methods so their credit steps register (``crs.credit`` imports this)."""

from crs.envs import (
    gigpo,  # noqa: F401
    matchtir,  # noqa: F401
)
