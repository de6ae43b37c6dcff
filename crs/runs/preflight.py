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


WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def _model_config(path: Path, shown: str) -> dict[str, Any]:
    try:
        data = json.loads((path / "config.json").read_text())
    except OSError as err:
        raise ConfigError(f"model.name_or_path: cannot read {shown}/config.json ({err.strerror})") from None
    except json.JSONDecodeError:
        raise ConfigError(
            f"model.name_or_path: {shown}/config.json is not JSON (a half-written model folder?)"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"model.name_or_path: {shown}/config.json is not a model config")
    return data


def check_model_path(name_or_path: str | None) -> dict[str, Any] | None:
    """A local folder holding a complete model (config.json, weights, tokenizer), or a hub id already
    in the local HF cache (crs is offline). Returns the model's config.json (None for the embedded one)."""
    if name_or_path is None:
        return None
    shown = str(name_or_path)
    if not shown.strip():
        raise ConfigError(
            "model.name_or_path: empty; expected a model folder, a cached hub id, or null (embedded)"
        )
    path = Path(shown).expanduser()
    looks_local = shown.startswith(("/", ".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise ConfigError(f"model.name_or_path: no such folder {shown!r}")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError(f"model.name_or_path: the folder {shown!r} is not readable")
        if not (path / "config.json").exists():
            raise ConfigError(f"model.name_or_path: {shown!r} has no config.json (not a saved model)")
        config = _model_config(path, shown)
        if not any(any(path.glob(g)) for g in WEIGHTS):
            raise ConfigError(
                f"model.name_or_path: {shown!r} is not a complete model: no weights "
                "(model.safetensors or pytorch_model.bin)"
            )
        if not any((path / f).exists() for f in TOKENIZER):
            raise ConfigError(
                f"model.name_or_path: {shown!r} is not a complete model: no tokenizer "
                "(tokenizer.json or tokenizer_config.json)"
            )
        return config
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(shown, "config.json")
    except Exception:  # not a valid repo id
        cached = None
    if not isinstance(cached, str):
        raise ConfigError(
            f"model.name_or_path: {shown!r} is neither a local model folder nor a hub id in the local "
            "cache (crs does not download; pass the folder of a saved model)"
        )
    return _model_config(Path(cached).parent, shown)


POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


def check_lengths(cfg: DictConfig, model_config: Mapping[str, Any] | None) -> None:
    """prompt + completion must fit the model's positions (a completion the model cannot hold)."""
    from crs.benchmarks import is_multi_turn

    if is_multi_turn(OmegaConf.select(cfg, "benchmark.name")):
        return  # an environment's completions are per turn, by its own policy model (crs/envs/policy.py)
    if model_config is None:
        emb = OmegaConf.select(cfg, "model.embedded")
        positions = emb.get("max_position_embeddings") if emb is not None else None
        where = "model.embedded.max_position_embeddings"
    else:
        positions = next(
            (model_config[k] for k in POSITION_KEYS if isinstance(model_config.get(k), int)), None
        )
        where = "the model's max_position_embeddings"
    n = OmegaConf.select(cfg, "trainer.max_completion_length")
    if isinstance(positions, int) and isinstance(n, int) and n >= positions:
        raise ConfigError(
            f"trainer.max_completion_length must be < {where} ({positions}), leaving room for the prompt "
            f"(got {n})"
        )


def check_resume(resume: Any) -> None:
    """``resume=<folder>``: a complete checkpoint (its marker written last parses), or a run folder with one."""
    if not isinstance(resume, str) or resume in ("auto", "never"):
        return
    from crs.runs.checkpoint import MARKER, latest_checkpoint

    path = Path(resume).expanduser()
    if not path.exists():
        raise ConfigError(f"resume: no such checkpoint folder {resume!r} (or use auto / never)")
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"resume: {resume!r} is not a readable checkpoint folder")
    ckpt = path if (path / MARKER).exists() else latest_checkpoint(path)
    if ckpt is None:
        raise ConfigError(
            f"resume: {resume!r} holds no complete checkpoint (a folder with {MARKER}; a half-written one has "
            "none) — use resume=auto or never"
        )
    try:
        marker = json.loads((ckpt / MARKER).read_text())
        assert isinstance(marker, dict) and "step" in marker
    except (OSError, ValueError, AssertionError):
        raise ConfigError(f"resume: {ckpt / MARKER} is unreadable or half-written") from None
    if not (ckpt / "trainer_state.json").exists():
        raise ConfigError(f"resume: {ckpt} is half-written (no trainer_state.json)")


def check_launcher(launcher: Mapping[str, Any] | None, timeout: float = 5.0) -> None:
    """A SLURM launcher needs a reachable SLURM: ``sinfo`` answers (a service that is down fails here)."""
    target = str((launcher or {}).get("_target_", ""))
    if "slurm" not in target.lower():
        return
    import shutil
    import subprocess

    hint = "run where SLURM is reachable, or use hydra/launcher=local"
    if shutil.which("sinfo") is None:
        raise ConfigError(f"hydra/launcher=slurm: no sinfo on PATH (SLURM is not installed here); {hint}")
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(
            f"hydra/launcher=slurm: sinfo did not answer ({type(err).__name__}); {hint}"
        ) from None
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        raise ConfigError(
            f"hydra/launcher=slurm: SLURM is not reachable (sinfo exit {r.returncode}: "
            f"{why[-1][:160] if why else 'no output'}); {hint}"
        )


def _hf_files(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(split, file) pairs of a file-based hf benchmark; [] for hub ids and folders."""
    from crs.benchmarks.hf import FILE_BUILDERS

    path = str(cfg.get("path") or "")
    if "{split}" not in path and Path(path).suffix not in FILE_BUILDERS:
        if Path(path).is_dir():
            files = [p for p in sorted(Path(path).iterdir()) if p.suffix in FILE_BUILDERS]
            if not files:
                raise ConfigError(
                    f"benchmark.path: the folder {path!r} has no data files (expected <split>.jsonl, .json, "
                    ".parquet or .csv)"
                )
            return [(p.stem, str(p)) for p in files]
        if path.startswith(("/", ".", "~")) or not _in_hub_cache(path):
            raise ConfigError(
                f"benchmark.path: {path!r} is neither a local file or folder nor a hub dataset in the local "
                "cache (crs does not download; pass a .jsonl/.json/.parquet/.csv file or a folder of them)"
            )
        return []
    splits = dict.fromkeys([cfg.get("train_split", "train"), cfg.get("eval_split", "test")])
    return [(s, path.format(split=s)) for s in splits]


def _in_hub_cache(repo_id: str) -> bool:
    """A hub dataset id that ``datasets`` can load offline (hub cache or the datasets cache)."""
    if repo_id.count("/") > 1 or not repo_id.strip():
        return False
    hub = Path(
        os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
    )
    ds = Path(
        os.environ.get("HF_DATASETS_CACHE")
        or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "datasets"
    )
    return (hub.expanduser() / f"datasets--{repo_id.replace('/', '--')}").is_dir() or any(
        ds.expanduser().glob(f"{repo_id.replace('/', '___')}*")
    )


def _columns(file: str) -> list[str] | None:
    """The columns of a parquet file from its schema (no rows read); None for the other formats."""
    if Path(file).suffix != ".parquet":
        return None
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(file).names)
    except Exception as err:
        raise ConfigError(
            f"benchmark.path: {file} is not a readable parquet file ({type(err).__name__})"
        ) from None


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
        try:
            data = json.loads(p.read_text() or "[]")
        except json.JSONDecodeError as err:
            raise ConfigError(f"benchmark.path: {file} is not JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(data, list | dict):
            raise ConfigError(f"benchmark.path: {file} is not a list of rows")
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
        if Path(file).is_dir() or not os.access(file, os.R_OK):
            raise ConfigError(f"benchmark.path: {file!r} is not a readable file (split {split})")
        cols = _columns(file)
        if cols is not None and not {q, a} <= set(cols):
            raise ConfigError(
                f"benchmark: {file} has no column {', '.join(repr(c) for c in (q, a) if c not in cols)} "
                f"(columns: {', '.join(cols)}; set benchmark.question_field / benchmark.answer_field)"
            )
        n, bad, missing_cols = 0, [], set()
        try:
            rows = list(_rows(file))
        except UnicodeDecodeError:
            raise ConfigError(f"benchmark.path: {file} is not a text file (split {split})") from None
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError(f"benchmark.path: {file} cannot be read ({type(err).__name__})") from None
        for line, row in rows:
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
            have = ", ".join(map(str, row)) if isinstance(row, Mapping) else ""
            raise ConfigError(
                f"benchmark: {file} has no column {', '.join(sorted(map(repr, missing_cols)))} "
                f"(columns: {have}; benchmark.question_field={q}, benchmark.answer_field={a})"
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

    for key in ("experiment", "run_name"):
        val = tracking.get(key)
        if val is not None and not str(val).strip():
            raise ConfigError(
                f"tracking.{key}: empty; expected a name" + (" or null" if key == "run_name" else "")
            )
    check_store(
        tracking.get("uri") or default_uri(), "tracking.uri", timeout, tracking.get("experiment", "crs")
    )


SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(
    uri: str,
    what: str = "tracking.uri",
    timeout: float = PROBE_TIMEOUT_S,
    experiment: str = "crs",
    create: bool = True,
) -> None:
    """An MLflow store a run can use: a sqlite file that is a readable, writable database (or a writable
    folder to create it in, when ``create``), a file store folder, or an http(s) server answering within
    ``timeout``. Nothing is created (the write probe is removed)."""
    uri = str(uri)
    shown = redact_text(uri)
    if not uri.strip():
        raise ConfigError(f"{what}: empty; expected sqlite:///<file>, http(s)://host:port or a folder")
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///") or len(uri) == len("sqlite:///"):
            raise ConfigError(f"{what}: {shown} is not a sqlite URI (expected sqlite:///<path to .db>)")
        db = Path(uri[len("sqlite:///") :])
        if db.is_dir():
            raise ConfigError(f"{what}: the store {db} is a folder, not a sqlite file")
        if db.exists():
            try:
                with open(db, "r+b") as fh:
                    head = fh.read(len(SQLITE_HEADER))
            except OSError as err:
                raise ConfigError(
                    f"{what}: the store {db} is not readable and writable ({err.strerror})"
                ) from None
            if head and head != SQLITE_HEADER:
                raise ConfigError(f"{what}: {db} is not an MLflow sqlite store (not a sqlite database)")
            return
        if not create:
            raise ConfigError(f"{what}: no MLflow store at {db} (run crs train there first, or pass --uri)")
        folder = db.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".crs-probe-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            raise ConfigError(
                f"{what}: cannot write the store folder {folder} ({err.strerror}); uri {shown}"
            ) from None
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
                params={"experiment_name": experiment},
                timeout=timeout,
                auth=(user, pw) if user else None,
            )
        except requests.RequestException as err:
            raise ConfigError(
                f"{what}: no MLflow server answers at {shown} within {timeout:.0f} s ({type(err).__name__})"
            ) from None
        if r.status_code in (401, 403):
            raise ConfigError(f"{what}: {shown} refused the credentials (HTTP {r.status_code})")
        if r.status_code >= 500 or (r.status_code != 200 and "RESOURCE_DOES_NOT_EXIST" not in r.text):
            raise ConfigError(f"{what}: {shown} is not a working MLflow server (HTTP {r.status_code})")
        return
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(
            uri[len("file://") :]
            if uri.startswith("file://")
            else uri[len("file:") :]
            if uri.startswith("file:")
            else uri
        )
        if folder.exists() and not folder.is_dir():
            raise ConfigError(
                f"{what}: {shown} is a file, not a store folder (a sqlite store is sqlite:///{folder})"
            )
        if not folder.exists() and not create:
            raise ConfigError(f"{what}: no MLflow store at {folder}")
        parent = folder if folder.exists() else folder.parent
        if parent.exists() and not os.access(parent, os.R_OK | os.W_OK | os.X_OK):
            raise ConfigError(f"{what}: {shown} is not readable and writable")
        return
    raise ConfigError(
        f"{what}: {shown} is not a store crs can use (expected sqlite:///<file>, http(s)://host:port or a folder)"
    )


_CHECKED: set[str] = set()  # resources already checked in this process (the CLI's preflight, then the run)


def check_resources(cfg: DictConfig) -> None:
    """Model path (complete), prompt + completion within its positions, data files, tracking store and
    resume checkpoint of one job (no model or dataset is loaded). Memoised per config and directory."""
    parts = OmegaConf.masked_copy(cfg, [k for k in ("model", "benchmark", "tracking", "trainer") if k in cfg])
    key = OmegaConf.to_yaml(parts) + f"resume={cfg.get('resume')}\ncwd={os.getcwd()}"
    if key in _CHECKED:
        return
    model_config = check_model_path(cfg.model.get("name_or_path"))
    check_lengths(cfg, model_config)
    check_data_files(OmegaConf.to_container(cfg.benchmark, resolve=True))
    check_tracking(OmegaConf.to_container(cfg.tracking, resolve=True))
    check_resume(cfg.get("resume"))
    _CHECKED.add(key)
