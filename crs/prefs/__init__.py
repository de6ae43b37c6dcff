"""Preference data and contrastive token rewards for crs's DPO trainer (``trainer=dpo``; T-REG, arXiv 2412.02685).

Three pieces, each a module:

``warmstart``
    The embedded model's *contrastive* warm-start variant: the same toy Qwen2 and SFT recipe as
    :mod:`crs.embedded`, but a share of the SFT rows carries a control prefix (``[+]`` before correct
    solutions, ``[-]`` before solutions with a wrong step). A 0.3M-parameter policy cannot follow T-REG's
    natural-language revision prompts; these prefixes are the toy analogue of "make it better / worse".
    Its own cache key: the default embedded model is untouched.
``data``
    Preference pairs in TRL's format (``prompt``/``chosen``/``rejected``): on-policy pairs sampled from the
    warm-started policy and labelled by the verifier (best = chosen, worst = rejected, ties dropped), cached
    under a content hash; or a local file.
``rewards``
    ``r̂_t = σ(log π_ref(y_t | better) − log π_ref(y_t | worse)) − 0.5`` for every response token of TRL's
    tokenized pairs (a dataset ``map`` pass, like TRL's reference log-prob precompute).

    crs train trainer=dpo method=t_reg
"""

from crs.prefs.data import load_preference_file, on_policy_pairs, preference_dataset
from crs.prefs.rewards import add_token_rewards, response_logps
from crs.prefs.warmstart import CONTROL_BETTER, CONTROL_WORSE, ensure_contrastive_model

__all__ = [
    "CONTROL_BETTER",
    "CONTROL_WORSE",
    "add_token_rewards",
    "ensure_contrastive_model",
    "load_preference_file",
    "on_policy_pairs",
    "preference_dataset",
    "response_logps",
]
