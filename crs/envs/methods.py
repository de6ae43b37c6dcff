"""Imports the turn-level methods so their credit steps register (``crs.credit`` imports this)."""

from crs.envs import (
    a2tgpo,  # noqa: F401
    gigpo,  # noqa: F401
    matchtir,  # noqa: F401
    r3l,  # noqa: F401
)
