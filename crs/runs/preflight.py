"""Resources checked before anything loads: model paths, data files, the tracking store.

Called by the CLI for a single run, by the sweep launcher for every job before any is submitted, and
by :func:`crs.train.train` itself. Each failure is one :class:`~crs.errors.ConfigError` line naming
the key; nothing is created (the store probe writes nothing, a sqlite store is not created).

    crs train model.name_or_path=/nonexistent        # crs: error: model.name_or_path: ...
    crs train tracking.uri=http://127.0.0.1:9        # crs: error: tracking.uri: ... (in ~2 s)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crs.errors import ConfigError
from crs.runs.redact import redact_text, split_credentials

PROBE_TIMEOUT_S = 3.0


def check_model_path(name_or_path: str | None) -> None:
    """A local folder with ``config.json``, or a hub id already in the local HF cache (crs is offline)."""
    if not name_or_path:
        return
    path = Path(str(name_or_path)).expanduser()
    looks_local = str(name_or_path).startswith(("/", ".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise ConfigError(f"model.name_or_path: no such folder {str(name_or_path)!r}")
        if not (path / "config.json").exists():
            raise ConfigError(
                f"model.name_or_path: {str(name_or_path)!r} has no config.json (not a saved model)"
            )
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "config.json")
    except Exception:  # not a valid repo id
        cached = None
    if not isinstance(cached, str):
        raise ConfigError(
            f"model.name_or_path: {str(name_or_path)!r} is neither a local model folder nor a hub id in the local "
            "cache (crs does not download; pass the folder of a saved model)"
        )


def _hf_files(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(split, file) pairs of a file-based hf benchmark; [] for hub ids and folders."""
    from crs.benchmarks.hf import FILE_BUILDERS

    path = str(cfg.get("path") or "")
    if "{split}" not in path and Path(path).suffix not in FILE_BUILDERS:
        if Path(path).is_dir():
            return [(p.stem, str(p)) for p in sorted(Path(path).glob("*.jsonl"))]
        return []
    splits = dict.fromkeys([cfg.get("train_split", "train"), cfg.get("eval_split", "test")])
    return [(s, path.format(split=s)) for s in splits]


def _rows(file: str, limit: int = 1_000_000):
    """Rows of a .jsonl / .json / .csv file (parquet via pyarrow), with their 1-based line/row numbers."""
    p = Path(file)
    if p.suffix == ".jsonl":
        with open(p) as fh:
            for i, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield i, json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ConfigError(
                            f"benchmark.path: {file} line {i} is not JSON ({err.msg})"
                        ) from None
    elif p.suffix == ".json":
        data = json.loads(p.read_text() or "[]")
        if isinstance(data, dict):
            data = [dict(zip(data, vals)) for vals in zip(*data.values())] if data else []
        yield from enumerate(data, 1)
    elif p.suffix == ".csv":
        import csv

        with open(p, newline="") as fh:
            yield from enumerate(csv.DictReader(fh), 2)
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(p).to_pylist(), 1)


def check_data_files(bench: Mapping[str, Any]) -> None:
    """Local data files exist, are not empty, have the columns, and every row has an answer."""
    if bench.get("name") != "hf":
        return
    q, a, fmt = (
        bench.get("question_field", "question"),
        bench.get("answer_field", "answer"),
        bench.get("answer_format", "raw"),
    )
    for split, file in _hf_files(bench):
        if not Path(file).exists():
            raise ConfigError(f"benchmark.path: no such file {file!r} (split {split})")
        n, bad, missing_cols = 0, [], set()
        for line, row in _rows(file):
            n += 1
            if not isinstance(row, Mapping):
                raise ConfigError(f"benchmark.path: {file} row {line} is not an object")
            for col in (q, a):
                if col not in row:
                    missing_cols.add(col)
            if missing_cols:
                break
            ans = row.get(a)
            if (
                ans is None
                or str(ans).strip() in ("", "None", "nan")
                or (fmt == "gsm8k" and "####" not in str(ans))
            ):
                bad.append(line)
        if missing_cols:
            raise ConfigError(
                f"benchmark: {file} has no column {', '.join(sorted(map(repr, missing_cols)))} "
                f"(benchmark.question_field={q}, benchmark.answer_field={a})"
            )
        if n == 0:
            raise ConfigError(f"benchmark.path: {file} is empty (split {split})")
        if bad:
            what = "an answer after '####'" if fmt == "gsm8k" else f"an answer in {a!r}"
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            raise ConfigError(f"benchmark: {len(bad)} of {n} rows in {file} have no {what} (rows {shown})")


def check_tracking(tracking: Mapping[str, Any], timeout: float = PROBE_TIMEOUT_S) -> None:
    """The store is reachable and writable, in seconds: a sqlite folder we can write, or a server answering."""
    if tracking.get("name") == "none":
        return
    from crs.locations import default_uri

    uri = tracking.get("uri") or default_uri()
    shown = redact_text(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        folder = db.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".crs-probe-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            raise ConfigError(
                f"tracking.uri: cannot write the store folder {folder} ({err.strerror}); uri {shown}"
            ) from None
        if db.exists():
            try:
                with open(db, "r+b"):
                    pass
            except OSError as err:
                raise ConfigError(f"tracking.uri: the store {db} is not writable ({err.strerror})") from None
        return
    if uri.startswith(("http://", "https://")):
        import requests

        clean, user, pw = split_credentials(uri)
        user = user or os.environ.get("MLFLOW_TRACKING_USERNAME")
        pw = pw or os.environ.get("MLFLOW_TRACKING_PASSWORD")
        url = clean.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name"
        try:
            r = requests.get(
                url,
                params={"experiment_name": tracking.get("experiment", "crs")},
                timeout=timeout,
                auth=(user, pw) if user else None,
            )
        except requests.RequestException as err:
            raise ConfigError(
                f"tracking.uri: no MLflow server answers at {shown} within {timeout:.0f} s ({type(err).__name__})"
            ) from None
        if r.status_code in (401, 403):
            raise ConfigError(f"tracking.uri: {shown} refused the credentials (HTTP {r.status_code})")
        if r.status_code >= 500 or (r.status_code != 200 and "RESOURCE_DOES_NOT_EXIST" not in r.text):
            raise ConfigError(f"tracking.uri: {shown} is not a working MLflow server (HTTP {r.status_code})")
        return
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
        parent = folder if folder.exists() else folder.parent
        if parent.exists() and not os.access(parent, os.W_OK):
            raise ConfigError(f"tracking.uri: {shown} is not writable")


def check_resources(cfg: DictConfig) -> None:
    """Model path, data files and tracking store of one job (no model or dataset is loaded)."""
    check_model_path(cfg.model.get("name_or_path"))
    check_data_files(OmegaConf.to_container(cfg.benchmark, resolve=True))
    check_tracking(OmegaConf.to_container(cfg.tracking, resolve=True))
