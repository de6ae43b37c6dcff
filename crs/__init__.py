"""crs: credit-assignment experiment runner for RLVR (Hydra + TRL GRPO + MLflow)."""

__version__ = "0.1.0"
