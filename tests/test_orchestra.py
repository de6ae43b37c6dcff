"""benchmark=orchestra + method=orch_credit (arXiv 2605.02801; spec methods-wave3.md §4.6 golden cases O1–O10).

Mutations these tests kill (planted, seen failing, reverted; docs/orch_credit.md):
- biased std (``unbiased=False``) in :func:`drmas_normalize` → O1, O10;
- singleton group → 0 instead of the raw score (GiGPO's rule) → O3;
- trajectory-wise without the per-trajectory average (every row its own sample) → O2;
- ``max`` → ``sum`` of the sub-agents' steps in a turn → O4;
- ``r_finish`` = collected / #sub-problems → O5;
- ``aux`` not applied to ``lam_finish`` → O5 at ρ = 0;
- the duplicate-id / edge-reference checks removed → O7; costs.tokens not required in the schema → O8;
- the trajectory level normalised over the whole batch instead of per prompt → O10.
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from helpers.env_policy import tiny_env_policy

from crs.benchmarks import build_benchmark
from crs.envs import default_bench_cfg
from crs.envs.orchestra import OrchestraConfig, OrchestraEnv, critical_steps, episode_metrics
from crs.envs.trace import (
    TraceError,
    artifact_errors,
    read_traces,
    schema_errors,
    validate,
)
from crs.envs.trace import (
    main as trace_main,
)
from crs.methods.orch_credit import drmas_normalize, event_types, orch_advantages, orch_reward

# ------------------------------------------------------------------------------------ Dr. MAS (O1–O3)

S, V = 0, 1
ROWS = [("t1", S, 1.0), ("t1", V, 0.9), ("t2", S, 0.0), ("t2", S, 0.0), ("t2", V, 0.0)]


def _rows():
    traj = torch.tensor([0 if t == "t1" else 1 for t, _, _ in ROWS])
    agent = torch.tensor([a for _, a, _ in ROWS])
    score = torch.tensor([s for _, _, s in ROWS])
    return score, torch.zeros(5, dtype=torch.long), agent, traj


def test_agentwise_golden_o1():
    score, prompt, agent, traj = _rows()
    a = drmas_normalize(score, prompt, agent, traj, by_agent=True)
    assert torch.allclose(a, torch.tensor([1.1547, 0.7071, -0.5774, -0.5774, -0.7071]), atol=1e-4)


def test_trajectorywise_golden_o2():
    score, prompt, agent, traj = _rows()
    a = drmas_normalize(score, prompt, agent, traj, by_agent=False)
    assert torch.allclose(a, torch.tensor([0.7071, 0.7071, -0.7071, -0.7071, -0.7071]), atol=1e-4)


def test_singleton_group_keeps_its_score_o3():
    a = drmas_normalize(
        torch.tensor([0.4]),
        torch.zeros(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.long),
    )
    assert torch.allclose(a, torch.tensor([0.4]))
    # two prompts never share statistics
    a = drmas_normalize(
        torch.tensor([1.0, 0.0, 5.0]),
        torch.tensor([0, 0, 1]),
        torch.zeros(3, dtype=torch.long),
        torch.arange(3),
    )
    assert a[2] == 5.0 and torch.allclose(a[:2], torch.tensor([0.7071, -0.7071]), atol=1e-4)


# ------------------------------------------------------------------------------------ costs, reward (O4, O5)


def test_critical_steps_golden_o4():
    crit, serial = critical_steps([1, 1], [[3, 5], [2]])
    assert (crit, serial) == (9, 12) and serial / crit == pytest.approx(12 / 9)


def _env(tasks, sub_error=0.0, solve_error=0.0):
    cfg = OrchestraConfig(sub_error=sub_error, solve_error=solve_error)
    env = OrchestraEnv(cfg, random.Random(0))
    env.reset(tasks=json.dumps(tasks), task_id="t0")
    return env


def _msgs(turn_calls):
    """A TRL-style conversational completion: one assistant message per turn, one tool message per call."""
    out = []
    for n in turn_calls:
        out.append({"role": "assistant"})
        out += [{"role": "tool"}] * n
    return out


def test_environment_costs_follow_the_turns_o4():
    # sub-problems of 3, 5 and 2 terms: spawn 1 and 2 in turn 0, spawn 3 in turn 1, collect all, answer
    tasks = [["1+1+1", 3], ["1+1+1+1+1", 5], ["1+1", 2]]
    env = _env(tasks)
    env.spawn(1), env.spawn(2)
    env.spawn(3)
    assert [env.collect(a) for a in (1, 2, 3)] == ["3", "5", "2"]
    assert env.answer(10) == "done" and env.success
    ep = env._finish(_msgs([2, 1, 3, 1]), orch_tokens=40)
    # turns: (1+5) + (1+2) + 1 + 1 = 11 critical; serial 4 + 10 = 14
    assert ep["critical_steps"] == 11 and ep["serial_steps"] == 14
    assert ep["spawns"] == 3 and ep["finish_rate"] == 1.0 and ep["useful_utilization"] == 1.0
    assert ep["stop_early"] == 0.0 and ep["protocol_overhead"] == pytest.approx(40 / (40 + 8 * 10))
    # the serial orchestrator pays its own steps; a spawn without collect is unfinished
    env = _env(tasks)
    env.solve(1), env.spawn(2)
    env.answer(8)
    ep = env._finish(_msgs([1, 1, 1]))
    assert (
        ep["critical_steps"] == (1 + 3) + (1 + 5) + 1 and ep["finish_rate"] == 0.0 and ep["stop_early"] == 1.0
    )
    assert not env.success


def test_reward_golden_and_annealing_o5():
    from crs.methods.chain import CreditChain

    one = torch.ones(1)
    # r_perf = 1; 2 agents spawned (on 2 of 3 sub-problems), 1 of them collected
    r, r_par, r_fin = orch_reward(one, 2 * one, 2 * one, one, 3 * one, 0.2, 0.2)
    assert r_par.item() == 1.0 and r_fin.item() == 0.5 and r.item() == pytest.approx(1.3)
    chain = CreditChain(
        {"orch_credit": {"lam_parallel": 0.2, "lam_finish": 0.2, "drive": {"knob": "aux", "neutral": 0.0}}}
    )
    for rho, want in ((1.0, 1.3), (0.0, 1.0), (0.5, 1.15)):
        ((_, args),) = chain.args_at(rho)
        lam1, lam2 = args["aux"] * args["lam_parallel"], args["aux"] * args["lam_finish"]
        assert orch_reward(one, 2 * one, 2 * one, one, 3 * one, lam1, lam2)[0].item() == pytest.approx(want)
    # no spawn: r_finish = 1, r_parallel = 0; the fraction reading counts distinct sub-problems
    r, r_par, r_fin = orch_reward(
        torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 3 * one, 0.2, 0.2
    )
    assert (r_par.item(), r_fin.item(), r.item()) == (0.0, 1.0, pytest.approx(0.2))
    _, r_par, _ = orch_reward(one, 3 * one, 2 * one, one, 4 * one, 0.2, 0.2, parallel="fraction")
    assert r_par.item() == 0.5


def test_turn_credit_reads_the_logs_and_anneals_both_lambdas():
    """The rollout-time path: StepRecord logs → counts → shaped reward at ρ → turn advantages."""
    from crs.envs.turns import build_turn_batch
    from crs.methods import METHODS
    from crs.methods.chain import CreditChain
    from crs.methods.orch_credit import orch_stats

    def episode(calls_per_turn, success):
        env = _env([["1+2", 3], ["4-1", 3]])
        turns_of = []
        for k, calls in enumerate(calls_per_turn):
            for name, arg in calls:
                getattr(env, name)(arg)
                turns_of.append(k)
        row = {"tasks": json.dumps(env.tasks), "task_id": "t"}
        n = len(calls_per_turn) + 1
        return {
            "n_turns": n,
            "steps": env.steps,
            "step_turns": turns_of,
            "final_anchor": "end",
            "outcome": success,
            "success": success > 0,
            "row": row,
        }

    rows = [
        episode(
            [[("spawn", 1), ("spawn", 2)], [("collect", 1)], [("answer", 6)]], 1.0
        ),  # 2 spawned, 1 collected
        episode([[("solve", 1)], [("solve", 2)], [("answer", 6)]], 1.0),  # serial
    ]
    turns = build_turn_batch(rows, group_size=2)
    turns.orch = orch_stats(rows)
    assert turns.orch["spawned"].tolist() == [2, 0] and turns.orch["collected"].tolist() == [1, 0]
    chain = CreditChain({"orch_credit": {"level": "trajectory", "drive": {"knob": "aux", "neutral": 0.0}}})
    m = METHODS["orch_credit"]
    ((_, full),) = chain.args_at(1.0)
    ((_, off),) = chain.args_at(0.0)
    c1 = m.turn_credit(turns, 2, **full)
    c0 = m.turn_credit(turns, 2, **off)
    # r = [1 + .2 + .1, 1 + 0 + .2] at ρ = 1; [1, 1] at ρ = 0
    assert c1.metrics["reward"] == pytest.approx((1.3 + 1.2) / 2) and c0.metrics["reward"] == 1.0
    assert c1.advantages[0, 0] > 0 > c1.advantages[1, 0] and (c0.advantages == 0).all()


def test_event_level_normalises_per_prompt_and_event_type():
    calls = [
        [[("spawn", {}), ("spawn", {})], [("collect", {})], [("answer", {})]],
        [[("solve", {})], [("answer", {})]],
        [[("spawn", {})], [("collect", {})], [("answer", {})]],
        [[("solve", {})], [("solve", {})], [("answer", {})]],
    ]
    ev, labels = event_types(calls, 3)
    assert labels[:4] == ["spawn", "collect", "answer", "solve"] and ev[1, 2] == -1
    mask = (ev >= 0).float()
    reward = torch.tensor([1.0, 0.0, 1.0, 0.0])
    group = torch.zeros(4, dtype=torch.long)
    A = orch_advantages(reward, group, ev, mask, level="event")
    # spawn group [1, 1] -> 0; answer group [1,0,1,0] -> ±0.866; solve group [0, 0, 0] -> 0
    assert A[0, 0] == 0 and A[2, 0] == 0 and A[3, 0] == 0 and A[3, 1] == 0
    ans = A[mask.bool() & (ev == labels.index("answer"))]
    assert torch.allclose(ans, torch.tensor([0.8660, -0.8660, 0.8660, -0.8660]), atol=1e-3)
    T = orch_advantages(reward, group, ev, mask, level="trajectory")
    assert torch.allclose(T[:, 0], torch.tensor([0.8660, -0.8660, 0.8660, -0.8660]), atol=1e-3)
    assert (T[mask == 0] == 0).all()
    both = orch_advantages(reward, group, ev, mask, level="event+perf", w_event=0.5)
    assert torch.allclose(both, T + 0.5 * A)


# ------------------------------------------------------------------------------------ traces (O6–O9)

EXAMPLE = {  # the shape of the artifact's example_trace.json (planner/executor browser research), written for crs
    "trace_id": "demo-1",
    "task_id": "demo-task",
    "system": "illustrative",
    "topology": "centralized",
    "events": [
        {
            "id": "e1",
            "t": 0,
            "type": "orchestrator_decision",
            "agent": "orchestrator",
            "role": "lead",
            "content_ref": "plan",
        },
        {"id": "e2", "t": 1, "type": "spawn", "agent": "orchestrator", "role": "planner", "to": "planner_1"},
        {
            "id": "e3",
            "t": 2,
            "type": "spawn",
            "agent": "orchestrator",
            "role": "executor",
            "to": "executor_1",
        },
        {
            "id": "e4",
            "t": 3,
            "type": "message",
            "agent": "planner_1",
            "from": "planner_1",
            "to": "executor_1",
            "trusted": True,
        },
        {
            "id": "e5",
            "t": 4,
            "type": "tool_call",
            "agent": "executor_1",
            "tool": "browser.search",
            "content_ref": "q",
        },
        {
            "id": "e6",
            "t": 5,
            "type": "tool_result",
            "agent": "browser.search",
            "tool": "browser.search",
            "trusted": False,
        },
        {
            "id": "e7",
            "t": 6,
            "type": "return",
            "agent": "executor_1",
            "from": "executor_1",
            "to": "orchestrator",
        },
        {
            "id": "e8",
            "t": 7,
            "type": "aggregate",
            "agent": "orchestrator",
            "role": "lead",
            "content_ref": "final",
        },
    ],
    "edges": [
        {"src": "e1", "dst": "e2", "type": "spawn"},
        {"src": "e1", "dst": "e3", "type": "spawn"},
        {"src": "e2", "dst": "e4", "type": "causal"},
        {"src": "e3", "dst": "e4", "type": "message"},
        {"src": "e4", "dst": "e5", "type": "tool_dependency"},
        {"src": "e5", "dst": "e6", "type": "return"},
        {"src": "e6", "dst": "e7", "type": "causal"},
        {"src": "e7", "dst": "e8", "type": "aggregate"},
    ],
    "rewards": {"team": 1.0, "orchestration": 0.3, "tool": 0.1},
    "costs": {"tokens": 12000, "wall_clock_s": 420, "tool_calls": 1, "messages": 1},
    "metrics": {"task_success": 1, "protocol_overhead": 0.18, "error_amplification": 0},
}


def test_example_trace_is_valid_o6():
    assert artifact_errors(EXAMPLE) == [] and schema_errors(EXAMPLE) == []
    validate(EXAMPLE)


def _broken(edit):
    t = copy.deepcopy(EXAMPLE)
    edit(t)
    return t


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t["events"][1].update(id="e1"), "duplicate event id: e1"),
        (
            lambda t: t["edges"].append({"src": "e1", "dst": "e99", "type": "causal"}),
            "edge dst not found: e99",
        ),
        (lambda t: t["edges"].append({"src": "e0", "dst": "e1", "type": "causal"}), "edge src not found: e0"),
        (lambda t: t["events"][7].update(type="stop"), "unknown event type: stop"),
        (lambda t: t["edges"][0].update(type="delegate"), "unknown edge type: delegate"),
        (lambda t: t["costs"].update(wall_clock_s=-1), "negative cost field: wall_clock_s"),
        (lambda t: t.pop("rewards"), "missing top-level fields: rewards"),
        (lambda t: t.update(events=[]), "events must be a non-empty list"),
    ],
)
def test_validator_rejects_each_with_its_message_o7(edit, message):
    t = _broken(edit)
    assert artifact_errors(t) == [message]
    with pytest.raises(TraceError, match=message):
        validate(t)


def test_costs_without_tokens_is_the_documented_gap_o8():
    t = _broken(lambda t: t["costs"].pop("tokens"))
    assert artifact_errors(t) == []  # the artifact's validator accepts it
    assert any("'tokens' is a required property" in e for e in schema_errors(t))  # the JSON Schema does not
    with pytest.raises(TraceError, match="tokens"):
        validate(t)
    validate(t, schema=False)
    extra = _broken(lambda t: t.update(split="train"))  # unknown top-level key: same gap
    assert artifact_errors(extra) == [] and schema_errors(extra)


def test_non_numeric_cost_is_a_message_not_a_type_error_o9():
    t = _broken(lambda t: t["costs"].update(tokens="12k"))
    with pytest.raises(TypeError):  # what the artifact's validator does: `value < 0` on a string
        assert not t["costs"]["tokens"] < 0
    assert artifact_errors(t) == ["cost field tokens must be a number, got '12k'"]


def test_trace_file_cli_gives_one_line_and_exit_2(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(EXAMPLE) + "\n\n" + json.dumps(EXAMPLE) + "\n")
    assert trace_main([str(good)]) == 0 and len(read_traces(good)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(EXAMPLE) + "\n{not json\n")
    assert trace_main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl:2: not JSON" in err[0]
    bad.write_text(json.dumps(_broken(lambda t: t["events"][0].update(type="stop"))) + "\n")
    assert trace_main([str(bad)]) == 2
    assert "unknown event type: stop" in capsys.readouterr().err


def test_environment_traces_validate_and_carry_the_stop_extension():
    env = _env([["1+2", 3], ["4-1", 3], ["2+2", 4]], sub_error=0.0)
    env.spawn(1), env.spawn(2), env.spawn(7)  # the last is invalid
    env.collect(1), env.collect(2)
    env.solve(3)
    env.answer(10)
    env.answer(10)  # after the stop: invalid
    ep = env._finish(_msgs([3, 2, 1, 2]), orch_tokens=50, trace_id="x-1")
    tr = ep["trace"]
    validate(tr)
    types = [e["type"] for e in tr["events"]]
    assert types.count("spawn") == 2 and types.count("return") == 2 and types.count("aggregate") == 1
    assert [e.get("decision") for e in tr["events"] if e["type"] == "orchestrator_decision"].count(
        "stop"
    ) == 1
    ids = {e["id"]: e for e in tr["events"]}
    kinds = {(ids[d["src"]]["type"], ids[d["dst"]]["type"], d["type"]) for d in tr["edges"]}
    assert {
        ("spawn", "return", "return"),
        ("return", "aggregate", "aggregate"),
        ("tool_result", "aggregate", "aggregate"),
    } <= kinds
    assert tr["costs"]["critical_steps"] == ep["critical_steps"] and tr["rewards"]["team"] == 1.0
    assert sum(e.get("decision") == "invalid" for e in tr["events"]) == 2
    m = episode_metrics([ep])
    assert set(m) == {
        "orch/critical_steps",
        "orch/parallel_efficiency",
        "orch/spawns",
        "orch/finish_rate",
        "orch/useful_utilization",
        "orch/protocol_overhead",
        "orch/stop_early_rate",
    }


def test_bad_benchmark_values_are_one_config_error():
    from crs.errors import ConfigError

    with pytest.raises(ConfigError, match="min_tasks"):
        build_benchmark({**default_bench_cfg("orchestra"), "min_tasks": 5, "max_tasks": 3}, 0)
    with pytest.raises(ConfigError, match="sub_agent"):
        OrchestraConfig.from_mapping({"sub_agent": "llm"})


def test_config_checks(compose_cfg):
    from crs.config import validate as validate_cfg
    from crs.errors import ConfigError

    with pytest.raises(ConfigError, match="benchmark=orchestra"):
        validate_cfg(compose_cfg("method=orch_credit", "benchmark=maze"))
    with pytest.raises(ConfigError, match="level"):
        validate_cfg(
            compose_cfg("method=orch_credit", "benchmark=orchestra", "method.credit.orch_credit.level=token")
        )
    validate_cfg(compose_cfg("method=orch_credit", "benchmark=orchestra"))


# ------------------------------------------------------------------------------------ trainer wiring (O10)


@pytest.fixture(scope="module")
def orch_policy(tmp_path_factory):
    """A tiny orchestra policy (40 SFT steps on clean delegating/serial traces) that emits real tool calls."""
    return tiny_env_policy("orchestra", tmp_path_factory, 160, max_tasks=3)


def _length_reward(completions, **kw):
    """A second, deterministic reward so a 40-step policy (success ≈ 0) still has groups with variance."""
    return [float(len(str(c)) % 3) for c in completions]


def _trainer(path, cfg, credit, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.envs.chat import ensure_response_template
    from crs.methods.chain import CreditChain
    from crs.testing import cpu_grpo_config
    from crs.trainers.grpo import CreditGRPOTrainer

    bench = build_benchmark(cfg, 0)
    tok = ensure_response_template(AutoTokenizer.from_pretrained(path))
    tok.padding_side = "left"
    args = cpu_grpo_config(
        tmp_path,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=96,
        max_tool_calling_iterations=5,
    )
    tr = CreditGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        reward_funcs=[*bench.reward_funcs, _length_reward],
        args=args,
        train_dataset=bench.train,
        processing_class=tok,
        credit=CreditChain(credit),
        schedule=lambda p: 1.0,
        environment_factory=bench.info["environment_factory"],
    )
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr, bench


def _grads(tr, inputs):
    tr.model.zero_grad()
    loss = tr.compute_loss(tr.model, dict(inputs))
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])


def test_trajectory_level_without_aux_equals_grpo_o10(orch_policy, tmp_path):
    """Same rollouts, old log-probs perturbed (ratios ≠ 1, some clipped): identical loss and gradients."""
    path, cfg = orch_policy
    credit = {"orch_credit": {"level": "trajectory", "aux": 0.0}}
    tr, bench = _trainer(path, cfg, credit, tmp_path)
    torch.manual_seed(0)
    inputs = tr._prepare_inputs(next(iter(tr.get_train_dataloader())))
    cm, tm = inputs["completion_mask"].float(), inputs["tool_mask"].float()
    assert (tm == 0).any(), "the policy should have called a tool"
    adv = inputs["crs_turn_adv"]
    assert (adv[(cm * tm) == 0] == 0).all()  # tool results (sub-agent answers) get no credit
    assert inputs["advantages"].abs().sum() > 0, "need a group with reward variance"
    g = torch.Generator().manual_seed(1)
    old = torch.randn(cm.shape, generator=g) * 0.3 - 2.0
    inputs["old_per_token_logps"] = old
    loss_o, grad_o = _grads(tr, inputs)
    base, _ = _trainer(path, cfg, {}, tmp_path)  # method=grpo on the very same batch
    base.model.load_state_dict(tr.model.state_dict())
    plain = {k: v for k, v in inputs.items() if not k.startswith("crs_turn")}
    loss_g, grad_g = _grads(base, plain)
    assert torch.allclose(loss_o, loss_g, rtol=1e-3, atol=1e-6)
    assert torch.allclose(grad_o, grad_g, rtol=1e-3, atol=1e-7)
    # metrics and traces of the real rollout
    m = tr._metrics["train"]
    for key in ("orch/critical_steps", "orch/spawns", "orch/finish_rate", "orch/stop_early_rate", "accuracy"):
        assert key in m, key
    assert "credit/orch_credit/r_finish" in m
    log = bench.info["traces"]
    assert log.traces and log.invalid == 0
    for t in log.traces:
        validate(t)


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_train_orchestra_to_finished_with_traces_artifact(compose_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    from crs.train import train

    pol = (
        "++benchmark.policy.hidden_size=32",
        "++benchmark.policy.num_layers=2",
        "++benchmark.policy.num_heads=2",
        "++benchmark.policy.intermediate_size=64",
        "++benchmark.policy.n_sft=320",
        "++benchmark.policy.sft_steps=40",
        "++benchmark.policy.error_rate=0.0",
        "++benchmark.policy.eval_tasks=0",
        "++benchmark.policy.vocab_size=160",
        "++benchmark.policy.max_position_embeddings=160",
        "++benchmark.policy.sft_batch_size=16",
    )
    cfg = compose_cfg(
        "benchmark=orchestra",
        "method=orch_credit",
        "benchmark.max_tasks=3",
        "benchmark.n_train=64",
        "benchmark.n_eval=8",
        "trainer.max_steps=2",
        "trainer.per_device_train_batch_size=8",
        "trainer.num_generations=4",
        "trainer.eval_prompts=4",
        "trainer.max_completion_length=96",
        *pol,
    )
    summary = train(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    keys = set(run.data.metrics)
    from crs.metric_layout import ui_key

    assert ui_key("orch/critical_steps") in keys and ui_key("orch/stop_early_rate") in keys, sorted(keys)
    local = client.download_artifacts(run.info.run_id, "samples/traces.jsonl", str(tmp_path))
    traces = read_traces(local)
    assert traces and all(t["events"] for t in traces)
