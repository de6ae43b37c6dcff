"""``crs pretrain``: build (or show) the embedded warm-started model for the configured benchmark.

Same config tree as ``crs train`` (``model.embedded.*``, ``benchmark.*``), so what ``crs train`` would
build on first use is exactly what this command builds. Cached models are reused; the report gives
pass@1 / pass@k / greedy accuracy / token entropy of the warm start on the eval split — RL needs a
policy that is right sometimes but not always::

    crs pretrain
    crs pretrain model.embedded.sft_steps=300 model.embedded.error_rate=0.4
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from crs.config import register_configs
from crs.errors import ConfigError
from crs.locations import CONF_DIR
from crs.quiet import quiet


def pretrain_job(cfg: DictConfig) -> dict:
    if cfg.model.name_or_path:
        raise ConfigError(
            "crs pretrain builds the embedded model; model.name_or_path must be null (model=embedded)"
        )
    quiet()
    from rich.console import Console
    from rich.table import Table

    from crs.embedded import cache_key, ensure_embedded_model

    cache_dir = Path(cfg.paths.cache_dir)
    key = cache_key(cfg.model.embedded, cfg.benchmark)
    cached = (cache_dir / f"embedded-{key}").exists()
    t0 = time.time()
    path = ensure_embedded_model(cfg.model.embedded, cfg.benchmark, cache_dir)
    report = json.loads((path / "crs_pretrain.json").read_text())
    table = Table(title=f"embedded model {'(cached)' if cached else f'built in {time.time() - t0:.0f} s'}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in (report.get("eval") or {}).items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    table.add_row("parameters", f"{report.get('n_params', 0) / 1e6:.2f}M")
    table.add_row("build time", f"{(report.get('wall_time_s') or {}).get('total', 0):.0f} s")
    table.add_row("path", str(path))
    Console().print(table)
    return report


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        pretrain_job(cfg)
    except ConfigError as err:
        from crs.progress import error_line

        error_line(str(err))
        sys.exit(2)
