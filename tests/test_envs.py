"""Environments (maze, calc_tool), the chat format, and the trainer wiring on TRL's environment_factory."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.env_policy import tiny_env_policy

from crs.benchmarks import build_benchmark
from crs.envs.calc import CalcEnv, final_answer
from crs.envs.chat import CHAT_TEMPLATE, build_chat_tokenizer, render
from crs.envs.maze import MazeConfig, MazeEnv, make_task

# ---------------------------------------------------------------------------------------- environments


def test_maze_is_deterministic_and_observations_repeat():
    a, b = make_task(7), make_task(7)
    assert a == b and make_task(8) != a
    e1, e2 = MazeEnv(), MazeEnv()
    o1, o2 = e1.reset(task=7), e2.reset(task=7)
    assert o1 == o2  # the same task starts every rollout in the same observed state
    d = a.best_moves(a.start)[0]
    assert e1.move(d) == e2.move(d)
    assert e1.steps[0].anchor == e2.steps[0].anchor == o1.strip()  # anchor = state before the step


def test_maze_rewards_penalty_max_turns_and_validity():
    cfg = MazeConfig(max_turns=3, step_penalty=0.05)
    env = MazeEnv(cfg)
    env.reset(task=3)
    env.move("sideways")  # invalid direction: a wasted move
    assert env.steps[-1].valid is False and env.steps[-1].reward == pytest.approx(-0.05)
    # walk the shortest path from wherever we are; success gives +1 - penalty
    env2 = MazeEnv(MazeConfig(max_turns=20))
    env2.reset(task=3)
    while not env2.success:
        env2.move(env2.task.best_moves(env2.pos)[0])
    assert env2.steps[-1].reward == pytest.approx(0.95)
    assert sum(s.reward for s in env2.steps) == pytest.approx(1 - 0.05 * env2.moves)
    assert env2.move("up") == "over" and env2.steps[-1].valid is False
    env.move("up"), env.move("up")
    assert env.over and env.moves == 3


def test_calc_tools_log_calls_and_gold_trace():
    bench = build_benchmark({"name": "calc_tool", "n_train": 8, "n_eval": 4}, 0)
    row = bench.train[0]
    gold = json.loads(row["gold_calls"])
    env = CalcEnv()
    env.reset(**row)
    acc = None
    for call in gold:  # replaying the gold trace reproduces the answer
        acc = getattr(env, call["name"])(**call["arguments"])
    assert acc == row["answer"]
    assert [(s.name, s.args) for s in env.steps] == [(c["name"], c["arguments"]) for c in gold]
    assert env.add("x", 2) == "error" and env.steps[-1].valid is False
    assert final_answer([{"role": "assistant", "content": "Answer: 12"}]) == "12"
    assert bench.reward_funcs[0](
        [[{"role": "assistant", "content": f"Answer: {row['answer']}"}]], [row["answer"]]
    ) == [1.0]


def test_chat_format_supports_trl_tool_calling():
    from trl.chat_template_utils import (
        is_chat_template_prefix_preserving,
        parse_response,
        supports_tool_calling,
    )

    tok = build_chat_tokenizer(["maze\n#..G\nmove direction=up\nadd a=3 b=4"] * 4, 160)
    assert tok.chat_template == CHAT_TEMPLATE
    assert supports_tool_calling(tok) and is_chat_template_prefix_preserving(tok)
    msgs = [{"role": "user", "content": "hi"}]
    prefix = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = tok("<call>add a=3 b=4</call></s>", add_special_tokens=False)["input_ids"]

    def add(a: int, b: int) -> str:
        """Add.

        Args:
            a: first.
            b: second.
        """
        return str(a + b)

    parsed = parse_response(tok, ids, prefix=prefix, tools=[add])
    assert parsed["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 3, "b": 4}}
    conv = msgs + [
        {"role": "assistant", "content": "", "tool_calls": parsed["tool_calls"]},
        {"role": "tool", "name": "add", "content": "7"},
    ]
    assert tok.apply_chat_template(conv, tokenize=False) == render(conv)


# ------------------------------------------------------------------------------------ trainer wiring


@pytest.fixture(scope="module")
def calc_policy(tmp_path_factory):
    """A tiny calc_tool policy (40 SFT steps on clean gold traces, seconds on an idle CPU) that emits real tool calls."""
    return tiny_env_policy("calc_tool", tmp_path_factory, 128, max_terms=3)


def _trainer(path, cfg, credit, tmp_path, **overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.envs.chat import ensure_response_template
    from crs.methods.chain import CreditChain
    from crs.testing import cpu_grpo_config
    from crs.trainers.grpo import CreditGRPOTrainer

    bench = build_benchmark(cfg, 0)
    tok = ensure_response_template(AutoTokenizer.from_pretrained(path))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path)
    args = cpu_grpo_config(
        tmp_path,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=64,
        max_tool_calling_iterations=4,
        **overrides,
    )
    tr = CreditGRPOTrainer(
        model=model,
        reward_funcs=bench.reward_funcs,
        args=args,
        train_dataset=bench.train,
        processing_class=tok,
        credit=CreditChain(credit),
        schedule=lambda p: 1.0,
        environment_factory=bench.info["environment_factory"],
    )
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr


def _rollout(tr):
    torch.manual_seed(0)
    return tr._prepare_inputs(next(iter(tr.get_train_dataloader())))


def _capture_loss_inputs(monkeypatch):
    from trl import GRPOTrainer

    seen = {}
    orig = GRPOTrainer.compute_loss

    def spy(self, model, inputs, *a, **k):
        out = orig(self, model, inputs, *a, **k)
        seen.update(inputs)  # after TRL's loss: the advantages crs wrote inside it
        return out

    monkeypatch.setattr(GRPOTrainer, "compute_loss", spy)
    return seen


def test_turn_structure_in_batch_and_matchtir_advantages_reach_the_loss(calc_policy, tmp_path, monkeypatch):
    path, cfg = calc_policy
    tr = _trainer(path, cfg, {"matchtir": {}}, tmp_path)
    inputs = _rollout(tr)
    cm, tm = inputs["completion_mask"].float(), inputs["tool_mask"].float()
    assert (tm == 0).any(), "the policy should have called a tool at least once"
    ti = inputs["crs_turn_index"]
    assert ((ti >= 0) == (cm * tm > 0)).all()  # every trained token belongs to a turn; tool tokens to none
    adv = inputs["crs_turn_adv"]
    assert (adv[(cm * tm) == 0] == 0).all()
    m = tr._metrics["train"]
    for key in (
        "env/turns",
        "env/tool_calls",
        "env/valid_calls",
        "env/success",
        "credit/matchtir/call_reward",
    ):
        assert key in m, key
    assert m["env/turns"][-1] >= 1
    seen = _capture_loss_inputs(monkeypatch)
    tr.compute_loss(tr.model, inputs)
    used = seen["advantages"]
    used = (
        used if used.dim() == 2 else used.unsqueeze(1).expand_as(adv)
    )  # [B] if the turn advantages were dropped
    assert torch.allclose(used, adv * cm * tm)  # the turn advantages are what TRL's loss used


def test_tp_schedule_composes_with_tool_mask(calc_policy, tmp_path):
    """TP-Schedule writes tool_mask too: the two must multiply (tool tokens stay masked)."""
    from crs.credit import tp_suffix_mask

    path, cfg = calc_policy
    tr = _trainer(path, cfg, {"tp_schedule": {"withhold": 0.5}}, tmp_path)
    inputs = _rollout(tr)
    cm = inputs["completion_mask"].float()
    # TRL's own loss mask (completion·tool) before crs's mask phase: the turn tokens
    trl_mask = (inputs["crs_turn_index"] >= 0).float()
    assert (trl_mask < cm).any(), "the rollout should contain tool-result tokens"
    tp = tp_suffix_mask(inputs["crs_length"], cm.shape[1], 0.5)
    assert (tp * cm > trl_mask).any(), "some tool tokens fall inside the TP window"
    assert torch.equal(inputs["tool_mask"].float() * cm, trl_mask * tp)


def test_trl_contract_for_the_environment_path():
    """What crs/envs relies on inside TRL 1.16 (fails loudly on an upgrade that changes it)."""
    import inspect

    from trl import GRPOTrainer

    loss = inspect.getsource(GRPOTrainer._compute_loss)
    # A²TGPO's per-token clip ranges: crs sets epsilon_low/high to [B,T] tensors for one loss call
    assert "torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)" in loss
    gen = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "self.environments" in gen and 'output["tool_mask"]' in gen
    loop = inspect.getsource(GRPOTrainer._tool_call_loop)
    assert "tool_mask[idx_with_tool] += [0] * tool_length + [1] * post_tool_length" in loop


def test_segment_turns_golden():
    """Turns as OPRL steps: runs of the loss mask; tool-result tokens and padding belong to no step."""
    from crs.steps.segment import segment_turns

    cm = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
    tm = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    st = segment_turns(cm, cm * tm)
    assert st.step_id.tolist() == [[0, 0, -1, -1, 1, -1, 2, -1], [0, 0, 0, -1, -1, -1, -1, -1]]
    assert st.ends.tolist() == [[1, 4, 6], [2, -1, -1]]
    assert st.n_content.tolist() == [[1, 0, 0], [2, 0, 0]]
    assert st.valid.tolist() == [[True, True, True], [True, False, False]]
    assert st.sum_over_steps(torch.ones(2, 8)).tolist() == [[2, 1, 1], [3, 0, 0]]


def test_oprl_per_turn_steps_are_the_episode_turns(calc_policy, tmp_path):
    """OPRL on an environment: the step hook segments by turns (iStar's unit), so the steps per completion
    equal the turns per episode and the step advantage is 0 on tool-result tokens and constant within a turn.
    Mutation tried: segmenting by the separators instead of turns → steps/per_completion ≠ turns, fails."""
    from crs.cli import compose
    from crs.steps.hook import StepHook

    path, cfg = calc_policy
    scfg = compose(["method=oprl", "benchmark=calc_tool"]).method.steps
    tr = _trainer(path, cfg, {"oprl": {"w": 1.0}}, tmp_path)
    from transformers import AutoTokenizer

    hook = StepHook(tr.credit, scfg, build_benchmark(cfg, 0), AutoTokenizer.from_pretrained(path), path, None)
    tr.step_hook = hook
    inputs = _rollout(tr)
    cm, tm = inputs["completion_mask"].float(), inputs["tool_mask"].float()
    assert (tm == 0).any(), "the policy should have called a tool at least once"
    m = tr._metrics["train"]
    turns = (inputs["crs_turn_index"].max(-1).values + 1).float().mean()
    assert abs(m["steps/per_completion"][-1] - float(turns)) < 1e-6
    adv = inputs["crs_oprl_step_adv"]
    assert (adv[(cm * tm) == 0] == 0).all()
    ti = inputs["crs_turn_index"]
    for b in range(adv.shape[0]):
        for k in ti[b].unique().tolist():
            if k >= 0:
                assert torch.unique(adv[b][ti[b] == k]).numel() == 1
    assert "implicit/pairs" in m
