"""Value checks of a composed config that need no method module (so neither torch nor TRL): empty names,
declared intervals of numeric fields, and TRL config field names read from TRL's sources.

Called by :func:`crs.config.validate_values`; a schema declares a field's interval next to it with
``metadata={"range": "[0, 1]"}``, fields of schemas owned elsewhere are listed in :data:`FIELD_RANGES`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crs.errors import ConfigError

# Accepted intervals (crs.ranges syntax) of numeric fields that _validate_values does not check by hand,
# by config path (``*`` matches one key). A schema may instead declare one next to the field:
# ``field(default=..., metadata={"help": ..., "range": "[0, 1]"})`` — both are walked generically,
# so a new group's or trainer's fields are checked without code here. ``null`` always passes.
FIELD_RANGES: dict[str, str] = {
    "trainer.steps_per_generation": "[1, inf)",
    "trainer.weight_decay": "[0, inf)",
    "trainer.max_grad_norm": "(0, inf)",
    "trainer.eval_prompts": "[1, inf)",
    "trainer.num_threads": "[1, inf)",
    "model.lora.r": "[1, inf)",
    "model.lora.alpha": "(0, inf)",
    "model.lora.dropout": "[0, 1)",
    "model.embedded.seed": "[0, 4294967295]",
    "model.embedded.vocab_size": "[1, inf)",
    "model.embedded.hidden_size": "[1, inf)",
    "model.embedded.num_layers": "[1, inf)",
    "model.embedded.num_heads": "[1, inf)",
    "model.embedded.num_kv_heads": "[1, inf)",
    "model.embedded.intermediate_size": "[1, inf)",
    "model.embedded.max_position_embeddings": "[2, inf)",
    "model.embedded.n_sft": "[0, inf)",
    "model.embedded.sft_steps": "[0, inf)",
    "model.embedded.sft_batch_size": "[1, inf)",
    "model.embedded.learning_rate": "(0, inf)",
    "model.embedded.warmup_steps": "[0, inf)",
    "model.embedded.weight_decay": "[0, inf)",
    "model.embedded.error_rate": "[0, 1]",
    "model.embedded.eval_k": "[1, inf)",
    "model.embedded.eval_temperature": "[0, inf)",
    "model.embedded.eval_max_new_tokens": "[1, inf)",
    "method.steps.*.n_prompts": "[1, inf)",
    "method.steps.*.samples_per_prompt": "[1, inf)",
    "method.steps.*.train_steps": "[0, inf)",
    "method.steps.*.lr": "(0, inf)",
    "method.steps.*.n_eval_prompts": "[0, inf)",
    "method.steps.*.temperature": "[0, inf)",
    "benchmark.n_train": "[1, inf)",
    "benchmark.n_eval": "[1, inf)",
    "benchmark.eval_seed": "[0, 4294967295]",
    "benchmark.min_terms": "[1, inf)",
    "benchmark.max_terms": "[1, inf)",
    "benchmark.max_operand": "[1, inf)",
    "benchmark.max_value": "[0, inf)",
    "tracking.sample_steps": "[0, inf)",
    "tracking.sample_size": "[0, inf)",
}


def check_field_ranges(cfg: DictConfig) -> None:
    """Every numeric leaf with a declared interval (FIELD_RANGES or a schema's ``range`` metadata)."""
    import dataclasses
    from fnmatch import fnmatchcase

    from crs.ranges import check_range

    def walk(node: DictConfig, prefix: str) -> None:
        schema = OmegaConf.get_type(node)
        declared = (
            {f.name: f.metadata["range"] for f in dataclasses.fields(schema) if "range" in f.metadata}
            if dataclasses.is_dataclass(schema)
            else {}
        )
        for k in node.keys():
            key = f"{prefix}{k}"
            if key == "hydra":  # Hydra's own node (a sweep job's config carries it): not crs's fields
                continue
            if OmegaConf.is_dict(node._get_node(k)):
                if node[k] is not None:  # a None-valued (optional) section has no leaves
                    walk(node[k], key + ".")
                continue
            if (
                OmegaConf.is_list(node._get_node(k))
                or OmegaConf.is_missing(node, k)
                or OmegaConf.is_interpolation(node, k)
            ):
                continue
            value = node[k]
            spec = declared.get(str(k)) or next(
                (r for pat, r in FIELD_RANGES.items() if fnmatchcase(key, pat)), None
            )
            if spec is not None and value is not None and not isinstance(value, str):
                check_range(key, value, spec)

    walk(cfg, "")


# keys whose value is a name, a path or a choice: an empty string there is a mistake, never a default
_NAMED = ("name", "kind", "experiment", "path", "name_or_path", "source", "run_name", "uri")


def check_names(node: Any, prefix: str = "") -> None:
    """No empty (or blank) string where a name, path or choice is needed, at any depth of the config."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            named = k in _NAMED or str(k).endswith(("_field", "_split"))
            if named and isinstance(v, str) and not v.strip():
                what = "a path" if "path" in str(k) or k in ("uri", "source") else "a name"
                raise ConfigError(f"{key}: empty; expected {what}" + (" or null" if k in _OPTIONAL else ""))
            check_names(v, key + ".")


_OPTIONAL = ("name_or_path", "source", "run_name", "uri")


def trl_config_fields(trl_class: str) -> tuple[set[str] | None, str]:
    """The field names of the TRL config class of ``trl_class`` (``trl.GRPOTrainer`` → ``GRPOConfig``),
    read from the sources (its class and its bases up to ``TrainingArguments``) without importing TRL or
    transformers; ``None`` when the sources cannot be read that way (then TRL is imported)."""
    import ast
    import importlib.util
    from pathlib import Path

    cls = trl_class.rsplit(".", 1)[-1].replace("Trainer", "Config")

    def fields_in(file: Path, name: str, depth: int = 0) -> set[str]:
        tree = ast.parse(file.read_text())
        imports = {
            a.asname or a.name: (n.module or "", n.level)
            for n in tree.body
            if isinstance(n, ast.ImportFrom)
            for a in n.names
        }
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
        out = {
            b.target.id for b in node.body if isinstance(b, ast.AnnAssign) and isinstance(b.target, ast.Name)
        }
        for base in node.bases:
            if not isinstance(base, ast.Name) or depth > 4:
                continue
            module, level = imports.get(base.id, (None, 0))
            if module is None:
                continue
            if level:
                where = (
                    file.parents[level - 1].joinpath(*module.split("."))
                    if module
                    else file.parents[level - 1]
                )
            else:
                top = importlib.util.find_spec(module.split(".")[0])
                where = Path(top.submodule_search_locations[0]).joinpath(*module.split(".")[1:])
            out |= fields_in(
                where.with_suffix(".py") if not where.is_dir() else where / "__init__.py", base.id, depth + 1
            )
        return out

    try:
        root = Path(importlib.util.find_spec("trl").submodule_search_locations[0])
        return fields_in(root / "trainer" / f"{cls[: -len('Config')].lower()}_config.py", cls), cls
    except Exception:
        try:
            import trl

            return {f.name for f in fields(getattr(trl, cls))}, cls
        except Exception:
            return None, cls
