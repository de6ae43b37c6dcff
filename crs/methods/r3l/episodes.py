"""R³L reflect-then-retry on the multi-turn environments (``benchmark=maze``, ``calc_tool``).

The authors' trajectory-level workflow (``R3L_workflow.py`` / ``utils.py second_rollout``; spec
``docs/methods/turns.md`` §4.1): a failed episode is reflected on, a **new environment** is created and
reset, the first attempt's first ``pivot`` actions are **replayed** (their messages copied, the model not
called), and the policy plays on from there; pivotal credit masks the first ``pivot`` assistant turns of
both episodes. crs's port, on TRL's environment loop (driven by the GRPO trainer's ``_generate`` through the method's ``rollouts`` hook):

1. TRL plays every slot of the batch as usual. The first ``G − R`` slots of each group are first
   attempts; the last ``R`` slots hold fresh episodes, which stay as the fallback when a group has fewer
   failures than retry slots (the single-turn slot rule, :func:`crs.methods.r3l.single_turn.assign_retries`).
2. **Reflect** with an exact *turn* verifier (:data:`crs.envs.verifiers.TURN_VERIFIERS`; the ``rule`` reflector — no
   judge/PRM exists for the environments): ``maze`` — the first move that is invalid or not on a shortest
   path (BFS distances); ``calc_tool`` — the first call that differs from the gold call at its position.
   All calls right but the episode failed ⇒ the pivot is the turn after the last call (where the policy
   stopped or answered). Pivot = that call's assistant turn.
3. **Retry** in the retry slot's own environment instance: ``reset(**row)`` then replay the first
   attempt's calls of turns ``< pivot`` (the environments are deterministic), context = prompt ⊕ the first
   attempt's tokens up to the start of turn ``pivot`` (assistant *and* tool-result tokens, exact ids);
   the next turn is sampled with TRL's own generation and parsed as TRL does, the rest of the episode runs
   through TRL's ``_tool_call_loop`` (same tools, same limits). The retry row = prefix ⊕ new tokens, its
   ``tool_mask`` = the prefix's ⊕ the new one, its messages = the prefix's ⊕ the new ones.
4. **Pivotal credit**: the pivot *turn* of both rows feeds :func:`crs.methods.r3l.masks.pivot_suffix_mask`.

Deviations: no guidance message (``credit.r3l.guidance`` is single-turn only: the tiny env policies
never saw one); the new part of a retry may use up to ``max_completion_length`` tokens *after* the
replayed prefix (TRL's overlong check is relative to the context); TRL's completion-length metrics of
the rollout are logged before the retries replace the fallback episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crs.envs.turns import steps_to_turns, turn_index
from crs.envs.verifiers import TURN_VERIFIERS
from crs.methods.r3l.single_turn import assign_retries, retry_slot_count


def pivot_turn(first_wrong: int, step_turns: Sequence[int]) -> int:
    """The assistant turn of call ``first_wrong``; past the last call: the turn after the last call's."""
    if first_wrong < len(step_turns):
        return int(step_turns[first_wrong])
    return int(step_turns[-1]) + 1 if step_turns else 0


def turn_start(tool_mask_row: Sequence[int], turn: int) -> int:
    """Token position where assistant turn ``turn`` starts (−1 if the completion has no such turn)."""
    ti = turn_index(torch.tensor([list(tool_mask_row)], dtype=torch.float32))[0]
    hit = (ti == turn).nonzero().flatten()
    return int(hit[0]) if hit.numel() else -1


def prefix_messages(messages: Sequence[dict[str, Any]], turn: int) -> list[dict[str, Any]]:
    """The completion's messages before its ``turn``-th assistant message (assistant and tool ones)."""
    out, k = [], -1
    for m in messages:
        if m.get("role") == "assistant":
            k += 1
            if k >= turn:
                break
        out.append(m)
    return out


def retry_episodes(retry, trainer, prompts, res: tuple, rows, rho: float) -> tuple:
    """First attempts → turn reflection → replayed retries; returns ``_generate``'s tuple with retry rows
    replaced. ``retry`` is the run's :class:`crs.methods.r3l.single_turn.R3LRetry` (args, slot rule, record)."""
    from trl.chat_template_utils import parse_response

    prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, images, tool_images = res
    a = retry.args(rho)
    B, G = len(completion_ids), int(trainer.num_generations)
    R = retry_slot_count(G, float(a["retry_share"]))
    envs = trainer.environments
    first = [b for b in range(B) if b % G < G - R]
    frows = [rows[b] for b in first]
    r1 = torch.tensor(
        retry._rewards(
            trainer,
            frows,
            [completions[b] for b in first],
            [completion_ids[b] for b in first],
            environments=[envs[b] for b in first],
        )
    )
    failed = ~(r1 >= 1.0)
    verify = TURN_VERIFIERS[retry.benchmark.name]
    g = torch.Generator().manual_seed(int(trainer.state.global_step))
    drawn = torch.rand(len(first), generator=g) < float(a["rate"])
    eligible = torch.zeros(B, dtype=torch.bool)
    pivot = torch.full((B,), -1, dtype=torch.long)
    start = torch.full((B,), -1, dtype=torch.long)
    turns_of: dict[int, list[int]] = {}
    for i, b in enumerate(first):
        st = steps_to_turns(completions[b] if isinstance(completions[b], list) else None)
        turns_of[b] = st
        k = pivot_turn(verify(envs[b], list(envs[b].steps)[: len(st)]), st)
        pivot[b], start[b] = (
            k,
            turn_start(tool_mask[b] if tool_mask is not None else [1] * len(completion_ids[b]), k),
        )
        eligible[b] = bool(failed[i]) and start[b] >= 0 and bool(drawn[i])
    source = assign_retries(eligible, G, R)
    slots = [b for b in range(B) if int(source[b]) >= 0]
    ctx, pre_ids, pre_tm, pre_msgs, replayed = [], [], [], [], {}
    for b in slots:
        s, k = int(source[b]), int(pivot[int(source[b])])
        env = envs[b]
        env.reset(**{key: v for key, v in rows[b].items() if key != "environment"})
        replayed[b] = 0
        for rec, t in zip(list(envs[s].steps), turns_of[s]):  # replay the calls of turns < pivot
            if t < k:
                getattr(env, rec.name)(**rec.args)
                replayed[b] += 1
        p = int(start[s])
        pre_ids.append(list(completion_ids[s][:p]))
        pre_tm.append(list(tool_mask[s][:p]) if tool_mask is not None else [1] * p)
        pre_msgs.append(prefix_messages(completions[s], k))
        ctx.append(list(prompt_ids[b]) + pre_ids[-1])
    if slots:
        c, lp = trainer._crs_generate(ctx, None, {}, 1)
        tools = [trainer._env_tools[trainer._batch_environments[b]] for b in slots]
        msgs = [
            [parse_response(trainer._tokenizer, ids, prefix=cx, tools=t)] for ids, cx, t in zip(c, ctx, tools)
        ]
        saved = trainer._sync_tool_dicts, trainer._async_tool_dicts
        trainer._sync_tool_dicts = [saved[0][b] for b in slots]
        trainer._async_tool_dicts = [saved[1][b] for b in slots]
        try:
            loop_prompts = [list(prompts[b]) + list(m) for b, m in zip(slots, pre_msgs)]
            tm_new, comps_new, ids_new, lp_new, *_ = trainer._tool_call_loop(
                loop_prompts, ctx, [list(x) for x in c], msgs, lp, None, {}
            )
        finally:
            trainer._sync_tool_dicts, trainer._async_tool_dicts = saved
        completion_ids, completions = list(completion_ids), list(completions)
        tool_mask = list(tool_mask) if tool_mask is not None else [[1] * len(x) for x in completion_ids]
        for j, b in enumerate(slots):
            completion_ids[b] = pre_ids[j] + list(ids_new[j])
            tool_mask[b] = pre_tm[j] + list(tm_new[j])
            completions[b] = pre_msgs[j] + list(comps_new[j])
            if logprobs is not None and lp_new is not None:
                s = int(source[b])
                logprobs[b] = list(logprobs[s][: len(pre_ids[j])]) + list(lp_new[j])
    pos = torch.zeros(B, dtype=torch.long)  # here: the pivot *turn* of both rows of a retry
    for b in slots:
        pos[b] = pos[int(source[b])] = pivot[int(source[b])]
    retry.last = {
        "kind": "turn",
        "source": source,
        "pivot_pos": pos,
        "pivot_step": pivot,
        "pivot_token": start,
        "first_failed": int(failed.sum()),
        "first_success": float((~failed).float().mean()) if first else float("nan"),
        "contexts": dict(zip(slots, ctx)),
        "replayed": replayed,
        "slots": R * (B // G),
        "rule_match": [],
    }
    return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, images, tool_images
