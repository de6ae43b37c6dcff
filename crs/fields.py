"""Dataclass fields with a help text: the one helper every config schema of crs uses.

Every field of a crs config (``crs/config.py``, ``crs/steps/settings.py``, ``crs/eval/settings.py``,
``crs/pipeline/config.py``) carries a help text naming the paper and the trade-off, as TRL's configs do;
``crs train --help`` and the docs read it from ``metadata["help"]``::

    n: int = help_field(8, "Samples per problem (avg@n); more = tighter estimates, slower.")
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def help_field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with ``metadata={"help": help}``; a list or dict default is copied per instance."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)
