"""Errors the CLI turns into one clear line (no traceback)."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the accepted values."""


def unknown_option(err: BaseException) -> str | None:
    """Hydra's "Could not find 'group/name'" as one line listing every option of the group (no schemas)."""
    import re

    m = re.search(r"Could not find '([\w/]+)/([^']+)'", str(err))
    if not m:
        return None
    from pathlib import Path

    from crs.locations import CONF_DIR

    group, name = m.group(1), m.group(2)
    root = Path(CONF_DIR) / group
    options = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    if not options:
        return None
    return (
        f"{group}={name} is not an option{did_you_mean(name, options)}; choose one of: {', '.join(options)}"
    )


def did_you_mean(name: str, candidates) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def one_line(err: BaseException) -> str:
    """Hydra/OmegaConf errors are multi-line; keep the informative first lines, joined."""
    unknown = unknown_option(err)
    if unknown:
        return unknown
    parts = []
    for e in (err, err.__cause__):
        if e is None:
            continue
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
        if lines:
            text = (
                " ".join(lines[:8]).split(" Config search path")[0].replace(": \t", ": ").replace("\t", " ")
            )
            parts.append(text if len(text) <= 300 else text[:297] + "...")
    return " — ".join(dict.fromkeys(parts)) or type(err).__name__
