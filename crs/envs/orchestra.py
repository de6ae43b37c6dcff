"""``benchmark=orchestra``: an orchestrator that spawns frozen sub-agents, on TRL's environment API.

The toy of the orchestration-trace survey (arXiv 2605.02801; spec ``methods-wave3.md`` §4.4). A task
is 2–4 independent arithmetic sub-problems whose answers must be **summed**::

    <|user|>orch 3+4|5-1|2+2<|assistant|><call>spawn task=1</call><call>spawn task=2</call>
    <call>spawn task=3</call></s><|tool|>1<|tool|>2<|tool|>3<|assistant|><call>collect agent=1</call>
    <call>collect agent=2</call><call>collect agent=3</call></s><|tool|>7<|tool|>4<|tool|>4
    <|assistant|><call>answer n=15</call></s><|tool|>done<|assistant|>done</s>

Tools of the orchestrator (the trained policy):

- ``spawn(task)`` — a **frozen** sub-agent starts on sub-problem ``task`` and returns its agent id. The
  sub-agent is a rule solver that is wrong by ±1 with probability ``sub_error`` (regime A of the
  survey: only the orchestrator learns; sub-agents emit no tokens, so nothing of theirs gets gradient);
- ``collect(agent)`` — the sub-agent's answer (the survey's ``return`` event);
- ``solve(task)`` — the orchestrator works the sub-problem itself, serially (wrong with probability
  ``solve_error``; it costs its own steps on the critical path);
- ``answer(n)`` — aggregate and stop; the episode is correct iff ``n`` is the sum of the true answers.

**Costs** (§4.4, golden O4): a sub-problem with ``m`` terms takes ``m`` steps. Spawns issued in the same
orchestrator turn run in parallel, so ``CriticalSteps = Σ_turns (S_main + max S_sub)`` with ``S_main = 1``
plus the steps of the turn's ``solve`` calls; serial cost = ``Σ S_main + Σ S_sub``; parallel efficiency =
serial / critical. Turn boundaries come from the completion's messages (the environment only sees calls),
so the episode is closed by the reward function (:meth:`OrchestraEnv._finish`).

**Traces**: every call is an event in the survey's schema (:mod:`crs.envs.trace`): each turn opens with an
``orchestrator_decision`` (``decision: turn``), spawn → ``spawn``, collect → ``return``, solve →
``tool_call`` + ``tool_result``, answer → ``aggregate`` + ``orchestrator_decision`` with ``decision: stop``
(crs's extension); edges decision→spawn (``spawn``), spawn→return (``return``), return→aggregate
(``aggregate``), decision→decision (``temporal``). Each trace is validated and a sample of them is saved as
the MLflow artifact ``samples/traces.jsonl``.

Reward function ``orch_correct`` (1/0, logged as ``accuracy``) also logs ``orch/critical_steps``,
``orch/parallel_efficiency``, ``orch/spawns``, ``orch/finish_rate``, ``orch/useful_utilization``,
``orch/protocol_overhead`` and ``orch/stop_early_rate``. The auxiliary rewards (r_parallel, r_finish) are
the credit method's (``method=orch_credit``), so ``method=grpo`` here trains on the outcome only.

    crs train benchmark=orchestra method=orch_credit
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crs.benchmarks import register_benchmark
from crs.envs.base import StepRecord, TurnEnv
from crs.envs.trace import TraceBuilder, artifact_errors, schema_errors, to_jsonl
from crs.errors import ConfigError

TOOLS = ("spawn", "collect", "solve", "answer")


@dataclass
class OrchestraConfig:
    """``benchmark.*`` of ``benchmark=orchestra`` (conf/benchmark/orchestra.yaml has the help texts)."""

    name: str = "orchestra"
    min_tasks: int = 2
    max_tasks: int = 4
    min_terms: int = 2
    max_terms: int = 3
    sub_error: float = 0.05
    solve_error: float = 0.2
    sub_agent: str = "rule"
    max_turns: int = 6
    tokens_per_step: int = 8
    parallel_frac: float = 0.5
    n_train: int = 4000
    n_eval: int = 64
    eval_seed: int = 1234
    keep_traces: int = 512
    traces_per_call: int = 8
    policy: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> OrchestraConfig:
        cfg = dict(cfg or {})
        out = cls(**{k: v for k, v in cfg.items() if k in cls.__dataclass_fields__ and v is not None})
        if not 1 <= out.min_tasks <= out.max_tasks <= 9:
            raise ConfigError(
                f"benchmark: need 1 <= min_tasks <= max_tasks <= 9 (got {out.min_tasks}, {out.max_tasks})"
            )
        if not 1 <= out.min_terms <= out.max_terms:
            raise ConfigError(
                f"benchmark: need 1 <= min_terms <= max_terms (got {out.min_terms}, {out.max_terms})"
            )
        for k in ("sub_error", "solve_error", "parallel_frac"):
            if not 0.0 <= float(getattr(out, k)) <= 1.0:
                raise ConfigError(f"benchmark.{k} must be in [0, 1] (got {getattr(out, k)})")
        if out.sub_agent != "rule":
            raise ConfigError(
                f"benchmark.sub_agent must be 'rule' (got {out.sub_agent!r}); a policy sub-agent is not built yet"
            )
        if out.max_turns < 1 or out.tokens_per_step < 0:
            raise ConfigError("benchmark.max_turns must be >= 1 and tokens_per_step >= 0")
        return out


def make_subproblem(rng: random.Random, cfg: OrchestraConfig) -> tuple[str, int]:
    """A single-digit ``+``/``−`` chain whose running value stays in 0..9: ``("5-1+3", 7)``."""
    n = rng.randint(cfg.min_terms, cfg.max_terms)
    acc = rng.randint(0, 9)
    expr = str(acc)
    for _ in range(n - 1):
        while True:
            op, b = rng.choice("+-"), rng.randint(0, 9)
            val = acc + b if op == "+" else acc - b
            if 0 <= val <= 9:
                break
        expr += f"{op}{b}"
        acc = val
    return expr, acc


def make_task(rng: random.Random, cfg: OrchestraConfig) -> list[tuple[str, int]]:
    return [make_subproblem(rng, cfg) for _ in range(rng.randint(cfg.min_tasks, cfg.max_tasks))]


def n_steps(expr: str) -> int:
    """Steps a solver spends on a sub-problem: its number of terms."""
    return 1 + sum(c in "+-" for c in expr)


def critical_steps(main: list[float], sub: list[list[float]]) -> tuple[float, float]:
    """``(CriticalSteps, serial steps)`` of per-turn main steps and the steps of each turn's sub-agents.

    >>> critical_steps([1, 1], [[3, 5], [2]])          # golden O4
    (9, 12)
    """
    crit = sum(m + (max(s) if s else 0) for m, s in zip(main, sub, strict=True))
    serial = sum(main) + sum(sum(s) for s in sub)
    return crit, serial


def _turn_of_calls(messages: Any, n_calls: int) -> list[int]:
    """Turn index of each tool call from a TRL conversational completion (all in one turn if unknown)."""
    from crs.envs.turns import steps_to_turns

    turns = steps_to_turns(messages) if isinstance(messages, list) else []
    return (turns + [max(turns, default=0)] * n_calls)[:n_calls]


class OrchestraEnv(TurnEnv):
    """One orchestration episode per rollout; tools ``spawn``, ``collect``, ``solve``, ``answer``."""

    def __init__(self, cfg: OrchestraConfig | None = None, rng: random.Random | None = None):
        super().__init__()
        self.cfg = cfg or OrchestraConfig()
        self.rng = rng or random.Random(0)

    def reset(self, **row: Any) -> None:
        super().reset(**row)
        self.tasks = [tuple(t) for t in json.loads(row["tasks"])]
        self.task_id = str(row.get("task_id", "task"))
        self.agents: list[dict[str, Any]] = []  # agent j+1: {task, value, steps, collected}
        self.solved: dict[int, int] = {}
        self.done = False
        self.final: int | None = None
        self.t0 = time.perf_counter()
        self.episode: dict[str, Any] | None = None
        return None

    @property
    def total(self) -> int:
        return sum(int(a) for _, a in self.tasks)

    def _noisy(self, value: int, p: float) -> int:
        return value + self.rng.choice([-1, 1]) if self.rng.random() < p else value

    def _bad(self, name: str, args: dict[str, Any], why: str) -> str:
        self.moves += 1
        self._log(
            StepRecord(f"call{len(self.steps)}", name, args, valid=False, reward=0.0, info={"why": why})
        )
        return "error"

    def _task_ok(self, task: Any) -> bool:
        return isinstance(task, int) and not isinstance(task, bool) and 1 <= task <= len(self.tasks)

    def _ok(self, name: str, args: dict[str, Any], **info: Any) -> None:
        self.moves += 1
        self._log(StepRecord(f"call{len(self.steps)}", name, args, valid=True, reward=0.0, info=info))

    def spawn(self, task: int) -> str:
        """Start a frozen sub-agent on one sub-problem; returns its agent id.

        Args:
            task: the sub-problem's number (1 = first).
        """
        if self.done or not self._task_ok(task):
            return self._bad("spawn", {"task": task}, "over" if self.done else "no such task")
        expr, ans = self.tasks[task - 1]
        agent = {"task": task, "value": self._noisy(int(ans), self.cfg.sub_error), "steps": n_steps(expr)}
        agent["collected"] = False
        self.agents.append(agent)
        self._ok("spawn", {"task": task}, agent=len(self.agents), steps=agent["steps"])
        return str(len(self.agents))

    def collect(self, agent: int) -> str:
        """The answer of a spawned sub-agent.

        Args:
            agent: the id spawn returned.
        """
        ok = isinstance(agent, int) and not isinstance(agent, bool) and 1 <= agent <= len(self.agents)
        if self.done or not ok:
            return self._bad("collect", {"agent": agent}, "over" if self.done else "no such agent")
        a = self.agents[agent - 1]
        first = not a["collected"]
        a["collected"] = True
        self._ok("collect", {"agent": agent}, agent=agent, task=a["task"], first=first, value=a["value"])
        return str(a["value"])

    def solve(self, task: int) -> str:
        """Work one sub-problem yourself (serial: costs your own steps).

        Args:
            task: the sub-problem's number (1 = first).
        """
        if self.done or not self._task_ok(task):
            return self._bad("solve", {"task": task}, "over" if self.done else "no such task")
        expr, ans = self.tasks[task - 1]
        value = self._noisy(int(ans), self.cfg.solve_error)
        self.solved[task] = value
        self._ok("solve", {"task": task}, task=task, steps=n_steps(expr), value=value)
        return str(value)

    def answer(self, n: int) -> str:
        """Aggregate: give the final sum and stop.

        Args:
            n: the sum of the sub-problems' answers.
        """
        if self.done or not isinstance(n, int) or isinstance(n, bool):
            return self._bad("answer", {"n": n}, "over" if self.done else "not an integer")
        self.done, self.final = True, n
        self.success = n == self.total
        self._ok("answer", {"n": n})
        return "done"

    # ------------------------------------------------------------------------------------ episode end
    def _finish(self, messages: Any = None, orch_tokens: int = 0, trace_id: str = "") -> dict[str, Any]:
        """Costs, metrics and the trace of the finished episode (the turns come from ``messages``)."""
        if messages is None:
            messages = getattr(self, "conversation", None)
        steps = list(self.steps)
        turn_of = _turn_of_calls(messages, len(steps))
        turns = sorted(set(turn_of))
        main = {t: 1.0 for t in turns}
        sub: dict[int, list[float]] = {t: [] for t in turns}
        for s, t in zip(steps, turn_of):
            if s.valid and s.name == "solve":
                main[t] += s.info["steps"]
            if s.valid and s.name == "spawn":
                sub[t].append(float(s.info["steps"]))
        crit, serial = critical_steps([main[t] for t in turns], [sub[t] for t in turns])
        spawned = sum(1 for s in steps if s.valid and s.name == "spawn")
        collected = sum(1 for a in self.agents if a["collected"])
        covered: set[int] = set(self.solved)
        useful = 0
        for s in steps:  # an agent is useful when its collected answer covered a new sub-problem
            if s.valid and s.name == "collect" and s.info["first"] and s.info["task"] not in covered:
                covered.add(s.info["task"])
                useful += 1
        sub_tokens = self.cfg.tokens_per_step * sum(a["steps"] for a in self.agents)
        ep = {
            "success": float(self.success),
            "critical_steps": float(crit),
            "serial_steps": float(serial),
            "parallel_efficiency": float(serial / crit) if crit > 0 else 1.0,
            "spawns": float(spawned),
            "collected": float(collected),
            "finish_rate": collected / spawned if spawned else 1.0,
            "useful_utilization": useful / spawned if spawned else None,
            "protocol_overhead": orch_tokens / (orch_tokens + sub_tokens)
            if orch_tokens + sub_tokens
            else 0.0,
            "stop_early": float(self.done and len(covered) < len(self.tasks)),
            "finished": float(self.done),
            "n_tasks": float(len(self.tasks)),
        }
        ep["trace"] = self._trace(steps, turn_of, main, sub, ep, orch_tokens, sub_tokens, trace_id)
        self.episode = ep
        return ep

    def _trace(self, steps, turn_of, main, sub, ep, orch_tokens, sub_tokens, trace_id) -> dict[str, Any]:
        tb = TraceBuilder(trace_id or self.task_id, self.task_id)
        clock, prev_turn, decision = 0.0, None, None
        spawn_ev: dict[int, str] = {}
        inputs: list[str] = []
        for s, t in zip(steps, turn_of):
            if t != prev_turn:  # a new orchestrator turn: its decision event, on the critical-path clock
                if prev_turn is not None:
                    clock += main[prev_turn] + max(sub[prev_turn], default=0.0)
                names = [x.name for x, u in zip(steps, turn_of) if u == t]
                d = tb.event(
                    "orchestrator_decision",
                    clock,
                    "orchestrator",
                    role="lead",
                    decision="turn",
                    content_ref=f"turn{t}:" + ",".join(names),
                )
                tb.edge(decision, d, "temporal")
                decision, prev_turn = d, t
            if not s.valid:
                bad = tb.event(
                    "orchestrator_decision",
                    clock,
                    "orchestrator",
                    decision="invalid",
                    content_ref=f"{s.name}:{s.info.get('why', '')}",
                )
                tb.edge(decision, bad, "causal")
            elif s.name == "spawn":
                aid = s.info["agent"]
                e = tb.event(
                    "spawn",
                    clock,
                    "orchestrator",
                    role="solver",
                    to=f"sub{aid}",
                    content_ref=f"task{s.args['task']}",
                )
                tb.edge(decision, e, "spawn")
                spawn_ev[aid] = e
            elif s.name == "collect":
                aid = s.info["agent"]
                e = tb.event(
                    "return",
                    clock,
                    f"sub{aid}",
                    role="solver",
                    to="orchestrator",
                    content_ref=f"value{s.info['value']}",
                    trusted=True,
                    **{"from": f"sub{aid}"},
                )
                tb.edge(spawn_ev.get(aid), e, "return")
                tb.edge(decision, e, "causal")
                inputs.append(e)
            elif s.name == "solve":
                call = tb.event(
                    "tool_call", clock, "orchestrator", tool="solve", content_ref=f"task{s.info['task']}"
                )
                res = tb.event(
                    "tool_result", clock, "solve", tool="solve", content_ref=f"value{s.info['value']}"
                )
                tb.edge(decision, call, "causal")
                tb.edge(call, res, "return")
                inputs.append(res)
            elif s.name == "answer":
                agg = tb.event(
                    "aggregate", clock, "orchestrator", role="lead", content_ref=f"answer{s.args['n']}"
                )
                for src in inputs:
                    tb.edge(src, agg, "aggregate")
                tb.edge(decision, agg, "causal")
                stop = tb.event("orchestrator_decision", clock, "orchestrator", role="lead", decision="stop")
                tb.edge(agg, stop, "temporal")
        if not tb.events:  # no call at all: the orchestrator stopped without acting (a text-only episode)
            tb.event("orchestrator_decision", 0.0, "orchestrator", role="lead", decision="stop")
        return tb.trace(
            rewards={"team": ep["success"], "parallel": float(ep["spawns"] > 0), "finish": ep["finish_rate"]},
            costs={
                "tokens": orch_tokens + sub_tokens,
                "wall_clock_s": max(0.0, time.perf_counter() - self.t0),
                "tool_calls": len(steps),
                "messages": ep["spawns"] + ep["collected"],
                "critical_steps": ep["critical_steps"],
                "serial_steps": ep["serial_steps"],
                "orchestrator_tokens": orch_tokens,
                "subagent_tokens": sub_tokens,
            },
            metrics={
                "task_success": ep["success"],
                "parallelism_efficiency": ep["parallel_efficiency"],
                "protocol_overhead": ep["protocol_overhead"],
                "finish_rate": ep["finish_rate"],
            },
        )


# ---------------------------------------------------------------------------------------------------
# traces kept for the run's artifact, metrics, the reward function


class TraceLog:
    """The traces a run keeps (``traces_per_call`` per scoring call, ``keep_traces`` in all), each validated."""

    def __init__(self, keep: int, per_call: int) -> None:
        self.keep, self.per_call = keep, per_call
        self.traces: list[dict[str, Any]] = []
        self.invalid = 0

    def add(self, traces: list[dict[str, Any]]) -> None:
        for tr in traces[: self.per_call]:
            if len(self.traces) >= self.keep:
                return
            errs = artifact_errors(tr) or schema_errors(tr)
            if errs:  # an environment bug: one line, the run goes on, the trace is not saved
                self.invalid += 1
                if self.invalid == 1:
                    print(f"crs: orchestra trace {tr.get('trace_id')} is invalid: {errs[0]}", file=sys.stderr)
                continue
            self.traces.append(tr)

    def log_artifacts(self, tracker, output_dir: str | Path | None = None) -> None:
        """Save the kept traces as ``samples/traces.jsonl`` (MLflow artifact, and in the job folder)."""
        if not self.traces:
            return
        text = to_jsonl(self.traces)
        if output_dir is not None and Path(output_dir).is_dir():
            (Path(output_dir) / "traces.jsonl").write_text(text)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "traces.jsonl").write_text(text)
            tracker.log_artifacts(tmp, "samples")


def episode_metrics(eps: list[dict[str, Any]]) -> dict[str, float]:
    """Batch means of the ``orch/*`` metrics (useful utilisation over the episodes that spawned)."""
    if not eps:
        return {}
    mean = lambda k: sum(float(e[k]) for e in eps) / len(eps)  # noqa: E731
    used = [e["useful_utilization"] for e in eps if e["useful_utilization"] is not None]
    return {
        "orch/critical_steps": mean("critical_steps"),
        "orch/parallel_efficiency": mean("parallel_efficiency"),
        "orch/spawns": mean("spawns"),
        "orch/finish_rate": mean("finish_rate"),
        "orch/useful_utilization": sum(used) / len(used) if used else 0.0,
        "orch/protocol_overhead": mean("protocol_overhead"),
        "orch/stop_early_rate": mean("stop_early"),
    }


def make_reward(log: TraceLog) -> Callable[..., list[float]]:
    def orch_correct(
        completions: list[Any] | None = None,
        completion_ids: list[Any] | None = None,
        environments: list[OrchestraEnv] | None = None,
        trainer_state: Any = None,
        log_metric: Callable | None = None,
        **kw: Any,
    ) -> list[float]:
        """Verifier: 1.0 iff the orchestrator answered the true sum; closes each episode (costs, trace)."""
        envs = environments or []
        comps = completions or [None] * len(envs)
        ids = completion_ids or [[]] * len(envs)
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        base = len(log.traces) + log.invalid
        eps = [
            e._finish(c, len(i), trace_id=f"{e.task_id}-s{step}-{base + j}")
            for j, (e, c, i) in enumerate(zip(envs, comps, ids))
        ]
        log.add([e["trace"] for e in eps])
        scores = [e["success"] for e in eps]
        if log_metric is not None and scores:
            log_metric("accuracy", sum(scores) / len(scores))
            for k, v in episode_metrics(eps).items():
                log_metric(k, v)
        return scores

    return orch_correct


# ---------------------------------------------------------------------------------------------------
# expert conversations (SFT warm start) and the benchmark


def prompt_text(tasks: list[tuple[str, int]]) -> str:
    return "orch " + "|".join(e for e, _ in tasks)


def _tc(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": args}}


def expert_messages(
    tasks: list[tuple[str, int]], cfg: OrchestraConfig, rng: random.Random, error_rate: float
) -> list[dict[str, Any]]:
    """A delegating (spawn all, collect all, answer: 3 turns) or serial (one ``solve`` per turn) expert,
    chosen with prob. ``parallel_frac``; with prob. ``error_rate`` per action it slips (skips a collect or
    a solve — pseudo-parallelism / early stop — or adds wrong by one)."""
    env = OrchestraEnv(cfg, rng)
    env.reset(tasks=json.dumps(tasks), task_id="sft")
    msgs: list[dict[str, Any]] = [{"role": "user", "content": prompt_text(tasks)}]
    k = len(tasks)

    def turn(calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
        msgs.append({"role": "assistant", "content": "", "tool_calls": [_tc(n, a) for n, a in calls]})
        outs = []
        for n, a in calls:
            out = getattr(env, n)(**a)
            msgs.append({"role": "tool", "name": n, "content": out})
            outs.append(out)
        return outs

    values: list[int] = []
    if rng.random() < cfg.parallel_frac:
        ids = turn([("spawn", {"task": i + 1}) for i in range(k)])
        keep = [a for a in ids if rng.random() >= error_rate] or ids[:1]
        values = [int(v) for v in turn([("collect", {"agent": int(a)}) for a in keep])]
    else:
        for i in range(k):
            if i > 0 and rng.random() < error_rate:
                continue
            values += [int(v) for v in turn([("solve", {"task": i + 1})])]
    total = sum(values) + (rng.choice([-1, 1]) if rng.random() < error_rate else 0)
    turn([("answer", {"n": total})])
    msgs.append({"role": "assistant", "content": "done"})
    return msgs


def _tasks(cfg: OrchestraConfig, n: int, tag: str, exclude: set[str] | None = None, unique: bool = False):
    rng = random.Random(tag)
    out, seen = [], set()
    while len(out) < n:
        t = make_task(rng, cfg)
        p = prompt_text(t)
        if (exclude and p in exclude) or (unique and p in seen):
            continue
        seen.add(p)
        out.append(t)
    return out


@register_benchmark("orchestra")
def build(cfg_map: Mapping[str, Any], seed: int):
    from datasets import Dataset

    from crs.benchmarks import Benchmark

    cfg = OrchestraConfig.from_mapping(cfg_map)
    ev = _tasks(cfg, cfg.n_eval, f"orch-eval-{cfg.eval_seed}", unique=True)
    ev_prompts = {prompt_text(t) for t in ev}
    tr = _tasks(cfg, cfg.n_train, f"orch-train-{seed}", exclude=ev_prompts)
    log = TraceLog(cfg.keep_traces, cfg.traces_per_call)
    rng = random.Random(f"orch-agents-{seed}")

    def ds(items, split):
        return Dataset.from_dict(
            {
                "prompt": [[{"role": "user", "content": prompt_text(t)}] for t in items],
                "tasks": [json.dumps(t) for t in items],
                "task_id": [f"{split}{i}" for i in range(len(items))],
                "answer": [str(sum(a for _, a in t)) for t in items],
            }
        )

    def sft(n: int, s: int, err: float):
        r = random.Random(f"orch-sft-{s}")
        return [expert_messages(t, cfg, r, err) for t in _tasks(cfg, n, f"orch-sftp-{s}", exclude=ev_prompts)]

    return Benchmark(
        name="orchestra",
        train=ds(tr, "train"),
        eval=ds(ev, "eval"),
        reward_funcs=[make_reward(log)],
        verify=lambda text, answer: False,  # success is the environment's verdict (answer(n)), not the text's
        info={
            "environment_factory": lambda: OrchestraEnv(cfg, rng),
            "max_turns": cfg.max_turns,
            "success": lambda env: env.success,
            "sft_conversations": sft,
            "traces": log,
            "log_artifacts": log.log_artifacts,
        },
    )


build.validate = OrchestraConfig.from_mapping
