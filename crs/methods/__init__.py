"""Credit-assignment methods: one module each, listed here — the one place that knows them all.

A method module ends with ``METHOD = Method(...)`` (:class:`crs.credit.method.Method`): its loss-time step
(a pure tensor function), its arguments with help texts and ranges, and the hooks it needs. The
trainers call the hooks and never name a method; :class:`~crs.methods.chain.CreditChain` composes the
steps a method config lists (``conf/method/<name>.yaml``: ``credit: {step: {args..., drive: ...}}``), so
methods compose where the papers compose them (TP-Schedule on GSPO, R³L = retries + amplification).

======================  ===========  ==================================================================
module                  substrate    paper
======================  ===========  ==================================================================
``tp_schedule``         tokens       TP-Schedule (arXiv 2605.25381)
``forking_tokens``      tokens       Beyond the 80/20 rule (arXiv 2506.01939)
``entropy_adv``         tokens       Reasoning with exploration: an entropy perspective
``focal_grpo``          group        Focal GRPO (arXiv 2602.06717)
``f_grpo``              phases       Factorized F-GRPO (arXiv 2605.12995)
``adora``               group        ADORA (arXiv 2602.10019)
``r3l_amplify``         group        R³L positive amplification (arXiv 2601.03715)
``pure``                steps        PURE (arXiv 2504.15275)
``capo``                steps        CAPO (arXiv 2508.02298)
``oprl``                steps        OPRL / iStar (arXiv 2509.19199)
``int``                 steps        InT (arXiv 2601.14209)
``gigpo``               turns        GiGPO (arXiv 2505.10978)
``a2tgpo``              turns        A²TGPO (arXiv 2605.06200)
``matchtir``            turns        MatchTIR (arXiv 2601.10712)
``orch_credit``         events       Orchestration-trace credit (crs design on arXiv 2605.02801)
``r3l``                 turns/steps  R³L reflect-then-retry (arXiv 2601.03715)
``dpo``                 sequences    DPO (arXiv 2305.18290) on ``trainer=dpo``: the preference pairs
``t_reg``               tokens       T-REG token-reward regulariser (arXiv 2412.02685), ``trainer=dpo``
``opd``                 tokens       on-policy distillation, teacher log-ratio credit (arXiv 2605.12483)
======================  ===========  ==================================================================

Adding one = one module here + one yaml in ``conf/method/`` + one golden test (``docs/adding-a-method.md``);
a method outside the package loads from its file with ``method.source=path/to/my_method.py``::

    crs train method=forking_tokens schedule=linear
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from crs.credit.method import Method
from crs.errors import ConfigError
from crs.methods import (
    a2tgpo,
    adora,
    capo,
    dpo,
    entropy_adv,
    f_grpo,
    focal_grpo,
    forking_tokens,
    gigpo,
    matchtir,
    opd,
    oprl,
    orch_credit,
    pure,
    r3l,
    r3l_amplify,
    t_reg,
    tp_schedule,
)
from crs.methods import int as intervention  # `int` names InT's module; kept off the builtin

_BUILTIN = (
    tp_schedule,
    forking_tokens,
    entropy_adv,
    focal_grpo,
    f_grpo,
    adora,
    r3l_amplify,
    pure,
    capo,
    oprl,
    intervention,
    gigpo,
    a2tgpo,
    matchtir,
    orch_credit,
    r3l,
    dpo,  # trainer=dpo (TRL DPOTrainer)
    t_reg,
    opd,  # sparse-to-dense stage 2b (crs pipeline sparse_to_dense)
)

METHODS: dict[str, Method] = {m.METHOD.name: m.METHOD for m in _BUILTIN}


def register(method: Method) -> Method:
    """Add a method that lives outside this package (a user's file, a test); a different one of an
    existing name is an error."""
    old = METHODS.get(method.name)
    if old is not None and old.fn is not method.fn:
        raise ConfigError(f"method {method.name!r} is already defined")
    METHODS[method.name] = method
    return method


def load_source(path: str | Path) -> list[Method]:
    """Import a Python file that defines ``METHOD`` (or ``METHODS``, a list) and register them.

    ``method.source`` points here, so a researcher can try a method without editing crs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"method.source: no such file {str(path)!r} (a .py file that defines METHOD)")
    name = f"crs_user_method_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise ConfigError(f"method.source {str(path)!r}: {type(err).__name__}: {err}") from None
        sys.modules[name] = module
    module = sys.modules[name]
    found = list(getattr(module, "METHODS", []) or ([module.METHOD] if hasattr(module, "METHOD") else []))
    if not found or not all(isinstance(m, Method) for m in found):
        raise ConfigError(f"method.source {str(path)!r} must define METHOD = crs.credit.method.Method(...)")
    return [register(m) for m in found]


__all__ = ["METHODS", "Method", "load_source", "register"]
