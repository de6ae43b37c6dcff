"""R³L reflect-then-retry (crs/methods/r3l/single_turn.py) and its pivotal credit (crs/methods/r3l/ ``r3l`` step).

Golden: the slot assignment on a hand-made batch, pivot positions, the splice, the mask step. Trainer
(tiny model, real TRL generation, the arithmetic verifier): a retry row is exactly prompt ⊕ first
attempt's prefix ⊕ regenerated tokens, with the guidance tokens only in the generation context; the
prefix of both attempts is masked; prefix tokens contribute exactly zero gradient (old log-probs
perturbed there leave the gradient unchanged, perturbed on the suffix they change it), and the loss
equals TRL's own loss fed the masked batch and the amplified advantages by hand. Multi-turn (calc_tool,
the default env policy; ``slow``: it is built on first use): a retry replays the first attempt's calls
before the pivot turn in its own environment and starts with the first attempt's exact tokens; turns
before the pivot get no loss and exactly zero gradient in both episodes.

    pytest tests/test_r3l.py
"""

from __future__ import annotations

import copy
import string

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from crs.benchmarks import build_benchmark
from crs.credit import CreditBatch
from crs.methods.chain import CreditChain
from crs.methods.r3l import R3LRollouts as R3LRetry
from crs.methods.r3l.masks import pivot_token_mask
from crs.methods.r3l.single_turn import assign_retries, pivot_rows, splice, step_start
from crs.methods.r3l_amplify import r3l_amplify
from crs.steps.scorers import StepScorer
from crs.testing import cpu_grpo_config
from crs.trainers.grpo import CreditGRPOTrainer

# ------------------------------------------------------------------------------------------------ golden


def test_assign_retries_hand_made():
    # 2 groups of G=4, R=2: slots 0,1 first attempts, slots 2,3 retries
    eligible = torch.tensor([True, True, False, False, False, True, True, True])
    src = assign_retries(eligible, group_size=4, retry_slots=2)
    # group 0: both failures retried in order; group 1: one failure -> slot 7 is a fresh sample;
    # eligibility flags on retry slots (6, 7) are ignored
    assert src.tolist() == [-1, -1, 0, 1, -1, -1, 5, -1]
    # more failures than retry slots: the first ones (index order) get them
    src = assign_retries(torch.tensor([True, True, True, False]), group_size=4, retry_slots=1)
    assert src.tolist() == [-1, -1, -1, 0]


def test_pivot_rows_and_step_start():
    ends = torch.tensor([[2, 5, 9], [1, -1, -1], [3, 6, -1], [0, 4, 7]])
    k = torch.tensor([2, 0, 1, -1])
    assert step_start(ends, k).tolist() == [6, 0, 4, 0]
    src = torch.tensor([-1, -1, 0, 1, -1, -1, 5, -1])
    first_pos = torch.tensor([6, 4, 0, 0, 0, 3, 0, 0])
    # retry slot and its first attempt share the pivot; everything else is fully trained (0)
    assert pivot_rows(src, first_pos).tolist() == [6, 4, 6, 4, 0, 3, 3, 0]


def test_splice_caps_at_max_len():
    assert splice([1, 2], [3, 4, 5], 10) == [1, 2, 3, 4, 5]
    assert splice([1, 2], [3, 4, 5], 4) == [1, 2, 3, 4]


def test_mask_step_zeroes_prefix_of_both_rows():
    mask = torch.ones(3, 5)
    keep = pivot_token_mask(mask, torch.tensor([2, 2, 0]))
    chain = CreditChain({"r3l": {}})
    out = chain.mask_phase(CreditBatch(torch.zeros(3), mask, features={"r3l_keep": keep}), 1.0)
    assert out.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    # pivotal=false (the authors' w/o_credit ablation) and evaluation (no feature) leave the mask alone
    off = CreditChain({"r3l": {"pivotal": False}})
    assert off.mask_phase(CreditBatch(torch.zeros(3), mask, features={"r3l_keep": keep}), 1.0).eq(1).all()
    assert chain.mask_phase(CreditBatch(torch.zeros(3), mask, features={}), 1.0).eq(1).all()


def test_bad_config_is_one_clear_error(compose_cfg, monkeypatch):
    from crs.config import validate
    from crs.errors import ConfigError

    validate(compose_cfg("method=r3l", "benchmark=maze"))  # multi-turn: the exact turn verifier reflects
    with pytest.raises(ConfigError, match="use method.steps.scorer=rule"):
        validate(compose_cfg("method=r3l", "benchmark=maze", "method.steps.scorer=judge"))
    with pytest.raises(ConfigError, match="single-turn only"):
        validate(compose_cfg("method=r3l", "benchmark=calc_tool", "method.credit.r3l.guidance=hint"))
    with pytest.raises(ConfigError, match="must name wrong steps"):
        validate(compose_cfg("method=r3l", "method.steps.scorer=implicit"))
    with pytest.raises(ConfigError, match="retry slots"):
        validate(compose_cfg("method=r3l", "method.credit.r3l.retry_share=0.1", "trainer.num_generations=4"))
    monkeypatch.setenv(
        "WORLD_SIZE", "2"
    )  # several processes: whole groups per process (test_multiprocess.py)
    validate(compose_cfg("method=r3l"))


# ----------------------------------------------------------------------------------------------- trainer


class MiddleStepWrong(StepScorer):
    """A hand-made reflector: the middle step (index ``n // 2``) of a completion with ``n ≥ 2`` steps is its
    first wrong one, so retries replay non-empty prefixes of varied length (the tiny test policy writes
    near-garbage, on which the rule verifier would always name step 1)."""

    name = "middle"

    def score(self, view):
        s = torch.ones(view.steps.valid.shape)
        n = view.steps.valid.sum(1)
        for b in range(s.shape[0]):
            if n[b] >= 2:
                s[b, int(n[b]) // 2] = 0.0
        return s


# every printable character ends a step: the tiny policy's near-garbage completions get many steps
SEPARATORS = list(string.printable)


def varied_reward(completion_ids, **kwargs):
    """Below full reward everywhere (every first attempt fails and is retried), varied within groups."""
    return [float(sum(ids) % 7) / 7.0 for ids in completion_ids]


BENCH = {"name": "arithmetic", "n_train": 16, "n_eval": 4, "max_terms": 3}
GUIDE = "Fix step {step}."


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tok


@pytest.fixture(scope="module")
def rollout(model_and_tok, tmp_path_factory):
    """One r3l training rollout (unshuffled: rows in generation order) and its trainer."""
    model, tok = model_and_tok
    bench = build_benchmark(BENCH, 0)
    chain = CreditChain({"r3l": {"guidance": GUIDE}, "r3l_amplify": {}})
    retry = R3LRetry(chain, {"separators": SEPARATORS}, bench, tok, scorer=MiddleStepWrong())
    tr = CreditGRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=[varied_reward],
        args=cpu_grpo_config(tmp_path_factory.mktemp("r3l"), max_completion_length=16),
        train_dataset=bench.train,
        processing_class=tok,
        credit=chain,
        schedule=lambda p: 1.0,
        rollouts=retry,
    )
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    tr._crs_rho = 1.0
    out = tr._generate_and_score_completions(next(iter(tr.get_train_dataloader())))
    return tr, retry, out


def _valid(ids, mask):
    return ids[mask.bool()].tolist()


def test_retry_rows_are_prompt_prefix_suffix_without_guidance(rollout, model_and_tok):
    tr, retry, out = rollout
    tok = model_and_tok[1]
    last = retry.last
    src, pos = last["source"], last["pivot_pos"]
    retries = (src >= 0).nonzero().flatten().tolist()
    assert retries and (pos[retries] > 0).any(), "the fixture must retry from a non-empty prefix"
    for b in retries:
        s, p = int(src[b]), int(pos[b])
        k = int(last["pivot_step"][s])
        g_ids = tok(GUIDE.format(step=k + 1), add_special_tokens=False)["input_ids"]
        prompt_b = _valid(out["prompt_ids"][b], out["prompt_mask"][b])
        comp_b = _valid(out["completion_ids"][b], out["completion_mask"][b])
        comp_s = _valid(out["completion_ids"][s], out["completion_mask"][s])
        # the training sample: the row's own prompt (no guidance) ⊕ the first attempt's prefix ⊕ new tokens
        assert prompt_b == _valid(out["prompt_ids"][s], out["prompt_mask"][s])
        assert comp_b[:p] == comp_s[:p]
        gen = last["generated"][b]
        assert comp_b == (comp_s[:p] + gen)[: tr.max_completion_length]
        # the generation context held the guidance before the prompt, the training sample does not
        assert last["contexts"][b] == g_ids + prompt_b + comp_s[:p]
        assert prompt_b[: len(g_ids)] != g_ids
    # fresh fallback slots are plain samples from the prompt
    for b in last["contexts"]:
        if int(src[b]) < 0:
            assert last["contexts"][b] == _valid(out["prompt_ids"][b], out["prompt_mask"][b])


def test_pivotal_mask_zeroes_prefix_of_retry_and_first_attempt(rollout):
    tr, retry, out = rollout
    src, pos = retry.last["source"], retry.last["pivot_pos"]
    keep, cm = out["crs_r3l_keep"], out["completion_mask"].float()
    torch.testing.assert_close(out["tool_mask"].float(), cm * keep)
    for b in (src >= 0).nonzero().flatten().tolist():
        p = int(pos[b])  # the retry's replayed prefix length: the shared prefix of both attempts
        for row in (b, int(src[b])):
            assert keep[row, :p].sum() == 0 and keep[row, p:].eq(1).all()
    untouched = [b for b in range(len(src)) if b not in set(src[src >= 0].tolist()) and src[b] < 0]
    assert keep[untouched].eq(1).all()
    m = tr._metrics["train"]
    assert m["r3l/retry_rate"] and m["r3l/pivot_step"] and m["r3l/retry_success"]
    retried = src[src >= 0]
    assert m["r3l/pivot_step"][-1] == pytest.approx(float(retry.last["pivot_step"][retried].float().mean()))


def _grad(tr, inputs, plain=False):
    tr.model.zero_grad()
    loss = tr._compute_loss(tr.model, dict(inputs)) if plain else tr.compute_loss(tr.model, dict(inputs))
    loss.backward()
    return torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None]).clone()


def test_prefix_tokens_get_exactly_zero_gradient(rollout):
    tr, retry, out = rollout
    src, pos = retry.last["source"], retry.last["pivot_pos"]
    inputs = dict(out)
    inputs["old_per_token_logps"] = torch.full(out["completion_ids"].shape, -2.0)  # ratio ≠ 1: masks matter
    base = _grad(tr, inputs)
    # perturb the old log-probs on every prefix token of BOTH attempts: the gradient must not move at all
    prefix = torch.zeros_like(inputs["old_per_token_logps"], dtype=torch.bool)
    rows = [(r, int(pos[b])) for b in (src >= 0).nonzero().flatten().tolist() for r in (b, int(src[b]))]
    for r, p in rows:  # p: the retry's replayed prefix length, shared by both attempts
        prefix[r, :p] = True
    assert prefix.any()
    moved = dict(inputs)
    moved["old_per_token_logps"] = torch.where(prefix, torch.tensor(-0.3), inputs["old_per_token_logps"])
    torch.testing.assert_close(_grad(tr, moved), base, rtol=0, atol=0)
    # ... while the same perturbation on a trained suffix token does move it (the test can fail)
    r, p = rows[0]
    sfx = dict(inputs)
    sfx["old_per_token_logps"] = inputs["old_per_token_logps"].clone()
    sfx["old_per_token_logps"][r, p] = -0.3
    assert not torch.equal(_grad(tr, sfx), base)
    # and the loss is TRL's own, fed the pivot-masked batch and R³L's amplified advantages by hand
    fed = dict(inputs)
    cb = CreditBatch(
        advantages=out["advantages"],
        mask=fed["tool_mask"],
        features={"reward": out["crs_reward"], "group_mean": out["crs_group_mean"]},
    )
    fed["advantages"] = r3l_amplify(cb).advantages
    torch.testing.assert_close(_grad(tr, inputs), _grad(tr, fed, plain=True), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------- multi-turn (envs)


def test_turn_verifiers_and_turn_layout_helpers():
    from crs.envs.base import StepRecord
    from crs.envs.maze import MazeConfig, MazeEnv
    from crs.envs.verifiers import calc_first_wrong, maze_first_wrong
    from crs.methods.r3l.episodes import pivot_turn, prefix_messages, turn_start

    env = MazeEnv(MazeConfig())
    env.reset(task=3)
    best = env.task.best_moves(env.task.start)[0]
    nxt = env.task.step(env.task.start, best)
    bad = next(d for d in ("up", "down", "left", "right") if d not in env.task.best_moves(nxt))
    rec = [StepRecord("", "move", {"direction": d}, valid=True, reward=0.0) for d in (best, bad)]
    assert maze_first_wrong(env, rec) == 1 and maze_first_wrong(env, rec[:1]) == 1
    calc = type("E", (), {"gold_calls": [{"name": "add", "arguments": {"a": 7, "b": 5}}]})()
    ok = StepRecord("", "add", {"a": 7, "b": 5}, valid=True, reward=0.0)
    assert calc_first_wrong(calc, [ok]) == 1 and calc_first_wrong(calc, [ok, ok]) == 1
    assert calc_first_wrong(calc, [StepRecord("", "add", {"a": 7, "b": 4}, valid=True, reward=0.0)]) == 0
    # call 1 wrong -> its turn; all calls right -> the turn after the last call
    assert pivot_turn(1, [0, 1, 1]) == 1 and pivot_turn(3, [0, 1, 1]) == 2 and pivot_turn(0, []) == 0
    assert turn_start([1, 1, 0, 0, 1, 1, 0, 1], 1) == 4 and turn_start([1, 0, 1], 2) == -1
    msgs = [
        {"role": "assistant"},
        {"role": "tool"},
        {"role": "assistant"},
        {"role": "tool"},
        {"role": "assistant"},
    ]
    assert prefix_messages(msgs, 2) == msgs[:4] and prefix_messages(msgs, 0) == []


@pytest.fixture(scope="module")
def calc_policy(tmp_path_factory):
    """The default calc_tool policy (``conf/benchmark/calc_tool.yaml``: it makes real, partly right tool
    calls; the 40-step test policy of tests/test_envs.py writes no parsable call). Content-addressed and
    cached; building it takes minutes on a busy CPU, hence the ``slow`` mark of its tests."""
    import os
    from pathlib import Path

    from crs.envs import default_bench_cfg
    from crs.envs.policy import ensure_env_policy

    cfg = default_bench_cfg("calc_tool")
    cache = Path(os.environ.get("CRS_CACHE_DIR") or tmp_path_factory.mktemp("envcache"))
    return ensure_env_policy(cfg["policy"], cfg, cache, show_progress=False), cfg


def second_call_wrong(env, steps):
    """A hand-made turn reflector: call 2 is the first wrong one (so retries replay a non-empty prefix)."""
    return 1 if len(steps) >= 2 else len(steps)


@pytest.fixture(scope="module")
def env_rollout(calc_policy, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.envs import verifiers as env_retry
    from crs.envs.chat import ensure_response_template

    path, cfg = calc_policy
    bench = build_benchmark(cfg, 0)
    tok = ensure_response_template(AutoTokenizer.from_pretrained(path))
    tok.padding_side = "left"
    chain = CreditChain({"r3l": {}, "r3l_amplify": {}})
    retry = R3LRetry(chain, {}, bench, tok)
    tr = CreditGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        reward_funcs=[varied_reward],
        args=cpu_grpo_config(
            tmp_path_factory.mktemp("r3l-env"), max_completion_length=128, max_tool_calling_iterations=6
        ),
        train_dataset=bench.train,
        processing_class=tok,
        credit=chain,
        schedule=lambda p: 1.0,
        environment_factory=bench.info["environment_factory"],
        rollouts=retry,
    )
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    saved = env_retry.TURN_VERIFIERS["calc_tool"]
    env_retry.TURN_VERIFIERS["calc_tool"] = second_call_wrong
    try:
        torch.manual_seed(0)
        tr._crs_rho = 1.0
        out = tr._generate_and_score_completions(next(iter(tr.get_train_dataloader())))
    finally:
        env_retry.TURN_VERIFIERS["calc_tool"] = saved
    return tr, retry, out


@pytest.mark.slow
def test_env_retry_replays_prefix_and_masks_both_episodes(env_rollout):
    tr, retry, out = env_rollout
    last = retry.last
    src, k_of, start = last["source"], last["pivot_step"], last["pivot_token"]
    retries = (src >= 0).nonzero().flatten().tolist()
    assert retries and any(last["replayed"][b] > 0 for b in retries), "the fixture must replay a call"
    cm, keep = out["completion_mask"].float(), out["crs_r3l_keep"]
    for b in retries:
        s, k, p = int(src[b]), int(k_of[int(src[b])]), int(start[int(src[b])])
        # the retry = the first attempt's exact tokens up to turn k (assistant and tool results), then new ones
        assert out["completion_ids"][b, :p].tolist() == out["completion_ids"][s, :p].tolist()
        assert out["tool_mask"][b, :p].tolist() == out["tool_mask"][s, :p].tolist()
        # the first attempt's calls of turns < k were replayed in the retry's own environment, in order
        n = last["replayed"][b]
        assert [(r.name, r.args) for r in tr.environments[b].steps[:n]] == [
            (r.name, r.args) for r in tr.environments[s].steps[:n]
        ]
        # pivotal credit: turns < k of both episodes get no loss, turns >= k keep theirs
        for row in (b, s):
            ti = out["crs_turn_index"][row]  # turns of TRL's own loss mask (before the pivotal mask)
            assert keep[row][(ti >= 0) & (ti < k)].sum() == 0 and keep[row, :p].sum() == 0
            assert keep[row][ti >= k].eq(1).all()
    torch.testing.assert_close(out["tool_mask"].float(), cm * keep * (out["tool_mask"] > 0).float())


@pytest.mark.slow
def test_env_prefix_turns_get_exactly_zero_gradient(env_rollout):
    tr, retry, out = env_rollout
    src, start = retry.last["source"], retry.last["pivot_token"]
    inputs = dict(out)
    inputs["old_per_token_logps"] = torch.full(out["completion_ids"].shape, -2.0)
    base = _grad(tr, inputs)
    prefix = torch.zeros_like(inputs["old_per_token_logps"], dtype=torch.bool)
    for b in (src >= 0).nonzero().flatten().tolist():
        p = int(start[int(src[b])])
        prefix[b, :p] = prefix[int(src[b]), :p] = True
    assert prefix.any()
    moved = dict(inputs)
    moved["old_per_token_logps"] = torch.where(prefix, torch.tensor(-0.3), inputs["old_per_token_logps"])
    torch.testing.assert_close(_grad(tr, moved), base, rtol=0, atol=0)
