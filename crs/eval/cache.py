"""``crs eval`` results cached per (model hash, benchmark, sampling config).

A model is hashed by its files: names, sizes and the SHA-256 of each file's content (files over 64 MiB:
of their first, middle and last 4 MiB, so an 8B checkpoint hashes in seconds; a retrained model changes
every chunk). The key also holds the resolved benchmark config, the problem cap, every sampling setting
and the device kind (CPU and CUDA draw different samples). Entries are JSON files under
``<paths.cache_dir>/eval/``, written atomically; ``eval.cache=false`` recomputes and rewrites them.

    from crs.eval.cache import model_hash
    model_hash("/models/Qwen3-4B")
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

VERSION = 1  # bump when sampling or grading changes what a cached entry means
CHUNK = 4 << 20
FULL_HASH_BELOW = 64 << 20


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= FULL_HASH_BELOW:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            for off in (0, size // 2, size - CHUNK):
                fh.seek(off)
                h.update(fh.read(CHUNK))
    return h.hexdigest()


def model_hash(*folders: str | Path | None) -> str:
    """Content hash of one or more model folders (base and adapter), ignoring crs's own reports."""
    h = hashlib.sha256()
    for folder in folders:
        if folder is None:
            continue
        root = Path(folder)
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("crs_"))
        for p in files:
            rel = str(p.relative_to(root))
            if rel.startswith(("checkpoints/", "optimizer", "scheduler", "rng_state")):
                continue
            h.update(f"{rel}:{p.stat().st_size}:{_file_digest(p)}\n".encode())
    return h.hexdigest()[:16]


def cache_key(
    model: str, bench: Mapping[str, Any], n_problems: int | None, sampling: Mapping[str, Any]
) -> str:
    payload = {
        "v": VERSION,
        "model": model,
        "bench": dict(bench),
        "n": n_problems,
        "sampling": dict(sampling),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load(cache_dir: Path, key: str) -> dict[str, Any] | None:
    path = Path(cache_dir) / "eval" / f"{key}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged entry is recomputed


def store(cache_dir: Path, key: str, data: Mapping[str, Any]) -> Path:
    folder = Path(cache_dir) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    tmp = folder / f".{key}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)
    return path
