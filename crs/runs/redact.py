"""Credentials never stored or printed: URIs lose their password, secret-looking values become ``***``.

Applied to everything crs writes (params, tags, artifacts, ``summary.json``, the job's ``.hydra``
copies) and prints. A password in ``tracking.uri`` (``http://user:pw@host``) is moved into MLflow's
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` for this process, so MLflow itself only ever
sees (and prints) the clean URI; environment variables are never recorded.

    >>> redact_text("tracking.uri=http://ann:s3cret@host:5000 seed=1")
    'tracking.uri=http://ann:***@host:5000 seed=1'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# keys whose values are secrets (``api_key``, ``hf_token``, ``password``, ``AWS_SECRET_ACCESS_KEY``, ...)
SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|credential|auth)", re.I)
# scheme://user:password@  (the password part is masked; a lone user name is kept)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s'\"]*):(?P<pw>[^@/\s'\"]+)@")
# token-like query parameters and key=value / key: value pairs inside free text
_KV = re.compile(
    r"(?P<key>[A-Za-z0-9_.\-]*(?:pass(?:word|wd)?|secret|token|api[_-]?key|access[_-]?key|credential)"
    r"[A-Za-z0-9_\-]*)(?P<sep>\s*[=:]\s*)(?P<q>['\"]?)(?P<val>[^\s'\"&,;}]+)",
    re.I,
)


def redact_text(text: str) -> str:
    """Mask URI passwords and ``key=value`` secrets inside any string."""
    if not isinstance(text, str) or not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _KV.sub(lambda m: m["key"] + m["sep"] + m["q"] + (m["val"] if m["val"] == MASK else MASK), text)


def redact_value(key: str, value: Any) -> Any:
    """A config value as it may be recorded: secrets by key name become ``***``, strings are scanned."""
    leaf = str(key).rsplit(".", 1)[-1]
    if SECRET_KEY.search(leaf) and value not in (None, "", False) and not isinstance(value, Mapping | list):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(f"{key}.{k}", v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    return value


def redact_mapping(d: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: value}`` with every value passed through :func:`redact_value`."""
    return {k: redact_value(k, v) for k, v in d.items()}


def split_credentials(uri: str | None) -> tuple[str | None, str | None, str | None]:
    """``http://user:pw@host/x`` → ``("http://host/x", "user", "pw")``; other URIs unchanged."""
    if not uri or "@" not in uri or "://" not in uri:
        return uri, None, None
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, None, None
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return (
        urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)),
        parts.username,
        parts.password,
    )


def use_clean_uri(uri: str | None) -> str | None:
    """Move credentials of an http(s) tracking URI into MLflow's env vars; return the clean URI."""
    clean, user, pw = split_credentials(uri)
    if clean != uri and clean and clean.startswith(("http://", "https://")):
        if user:
            os.environ["MLFLOW_TRACKING_USERNAME"] = user
        if pw:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = pw
    return clean


def redact_files(folder: Path | str, patterns: tuple[str, ...] = ("*.yaml", "*.json", "*.log")) -> None:
    """Rewrite text files under ``folder`` with secrets masked (the job's ``.hydra`` copies, its log)."""
    folder = Path(folder)
    if not folder.exists():
        return
    for pattern in patterns:
        for path in folder.rglob(pattern):
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError):
                continue
            clean = redact_yaml_text(text) if path.suffix == ".yaml" else redact_text(text)
            if clean != text:
                path.write_text(clean)


def redact_yaml_text(text: str) -> str:
    """YAML lines ``password: x`` / ``- tracking.token=x`` masked, URIs cleaned."""
    out = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"^(\s*-?\s*)([A-Za-z0-9_.\-]+)(\s*:\s+)(.+?)(\s*)$", line)
        if m and SECRET_KEY.search(m.group(2).rsplit(".", 1)[-1]) and m.group(4) not in ("null", "''", '""'):
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{MASK}{m.group(5)}"
        out.append(redact_text(line))
    return "".join(out)


class RedactFilter:
    """A ``logging`` filter masking secrets in every record (Hydra prints each job's overrides)."""

    def filter(self, record) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


def install_log_redaction() -> None:
    """Add :class:`RedactFilter` to the handlers of the root and ``hydra`` loggers (idempotent)."""
    import logging

    for name in (None, "hydra"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactFilter) for f in handler.filters):
                handler.addFilter(RedactFilter())
