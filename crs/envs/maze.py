"""``benchmark=maze``: a small grid maze on TRL's environment API, with states that repeat across rollouts.

Each task (an integer seed) fixes an ``n × n`` grid with a few walls ``#``, a start and a goal ``G``.
The agent ``A`` moves with one tool, ``move(direction)``; every tool result is the re-rendered map,
so the *observation is the state* and identical states give identical observations — the anchor
states GiGPO groups by (all ``G`` rollouts of a task start from the same map and keep meeting the
same cells). Deterministic, offline, microseconds per step::

    <|user|>maze
    ....
    .#G.
    A...
    ..#.<|assistant|><call>move direction=up</call></s><|tool|>....
    A#G.
    ...
    ...

Reward: ``+1`` when a move reaches the goal, ``−step_penalty`` per move (also for bumps into walls and
invalid directions), so an episode's return is ``success − step_penalty·moves``; after ``max_turns``
moves the episode is over. Reward functions: ``maze_success`` (the verifier, 1/0, logged as
``accuracy``) and ``maze_steps`` (``−step_penalty·moves``); their sum is the return.

    crs train benchmark=maze method=gigpo
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crs.benchmarks import register_benchmark
from crs.envs.base import StepRecord, TurnEnv

DIRS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


@dataclass(frozen=True)
class MazeTask:
    n: int
    walls: frozenset[tuple[int, int]]
    start: tuple[int, int]
    goal: tuple[int, int]

    def render(self, pos: tuple[int, int]) -> str:
        rows = []
        for r in range(self.n):
            row = ""
            for c in range(self.n):
                cell = (r, c)
                row += (
                    "A" if cell == pos else "G" if cell == self.goal else "#" if cell in self.walls else "."
                )
            rows.append(row)
        return "\n".join(rows)

    def step(self, pos: tuple[int, int], direction: str) -> tuple[int, int]:
        dr, dc = DIRS[direction]
        nxt = (pos[0] + dr, pos[1] + dc)
        if not (0 <= nxt[0] < self.n and 0 <= nxt[1] < self.n) or nxt in self.walls:
            return pos
        return nxt

    def distances(self) -> dict[tuple[int, int], int]:
        """BFS distance to the goal from every reachable cell."""
        dist = {self.goal: 0}
        q = deque([self.goal])
        while q:
            cur = q.popleft()
            for d in DIRS.values():
                nxt = (cur[0] + d[0], cur[1] + d[1])
                if (
                    0 <= nxt[0] < self.n
                    and 0 <= nxt[1] < self.n
                    and nxt not in self.walls
                    and nxt not in dist
                ):
                    dist[nxt] = dist[cur] + 1
                    q.append(nxt)
        return dist

    def best_moves(self, pos: tuple[int, int]) -> list[str]:
        dist = self.distances()
        here = dist.get(pos)
        if here is None or here == 0:
            return []
        return [d for d in DIRS if dist.get(self.step(pos, d), 10**9) == here - 1]


def make_task(task: int, n: int = 4, min_walls: int = 2, max_walls: int = 4, min_dist: int = 2) -> MazeTask:
    """The maze of task ``task`` (string-seeded, so the same id always gives the same maze)."""
    rng = random.Random(f"maze-{n}-{min_walls}-{max_walls}-{min_dist}-{task}")
    cells = [(r, c) for r in range(n) for c in range(n)]
    while True:
        k = rng.randint(min_walls, max_walls)
        picked = rng.sample(cells, k + 2)
        walls, start, goal = frozenset(picked[:k]), picked[k], picked[k + 1]
        t = MazeTask(n, walls, start, goal)
        d = t.distances().get(start)
        if d is not None and d >= min_dist:
            return t


@dataclass
class MazeConfig:
    name: str = "maze"
    size: int = 4
    min_walls: int = 2
    max_walls: int = 4
    min_dist: int = 2
    max_turns: int = 8
    step_penalty: float = 0.05
    n_train: int = 4000
    n_eval: int = 64
    eval_seed: int = 1234
    policy: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> MazeConfig:
        cfg = dict(cfg or {})
        known = {f for f in cls.__dataclass_fields__}
        out = cls(**{k: v for k, v in cfg.items() if k in known and v is not None})
        if out.size < 2 or out.max_turns < 1 or out.step_penalty < 0:
            raise ValueError("benchmark.size must be >= 2, max_turns >= 1, step_penalty >= 0")
        return out


class MazeEnv(TurnEnv):
    """One maze episode per rollout. ``reset(task=...)`` returns the map; ``move`` is the only tool."""

    def __init__(self, cfg: MazeConfig | None = None):
        super().__init__()
        self.cfg = cfg or MazeConfig()

    def reset(self, **row: Any) -> str:
        super().reset(**row)
        c = self.cfg
        self.task = make_task(int(row["task"]), c.size, c.min_walls, c.max_walls, c.min_dist)
        self.pos = self.task.start
        self.success = False
        return "\n" + self.task.render(self.pos)

    def _state(self) -> str:
        return self.task.render(self.pos)

    def _observation(self) -> str:
        return self._state()

    def _ig_target(self) -> str:
        """A²TGPO's ground truth [INF]: the maze has no answer text; the episode-ending reply ``done``."""
        return "done"

    @property
    def over(self) -> bool:
        return self.success or self.moves >= self.cfg.max_turns

    def move(self, direction: str) -> str:
        """Move the agent one cell.

        Args:
            direction: one of up, down, left, right.
        """
        anchor = self._state()
        if self.over:
            self._log(StepRecord(anchor, "move", {"direction": direction}, valid=False, reward=0.0))
            return "over"
        self.moves += 1
        valid = direction in DIRS
        if valid:
            self.pos = self.task.step(self.pos, direction)
        reward = -self.cfg.step_penalty
        if self.pos == self.task.goal:
            self.success = True
            reward += 1.0
        self._log(StepRecord(anchor, "move", {"direction": direction}, valid=valid, reward=reward))
        obs = self._state()
        if self.success:
            return obs + "\nsolved"
        if self.moves >= self.cfg.max_turns:
            return obs + "\nout of moves"
        return obs


# ----------------------------------------------------------------------------------------------
# expert traces (SFT warm start) and the benchmark


def expert_messages(task: MazeTask, cfg: MazeConfig, rng: random.Random, error_rate: float) -> list[dict]:
    """A shortest-path conversation with random slips (each move is random with prob. ``error_rate``)."""
    env = MazeEnv(cfg)
    env.task, env.pos, env.success, env.moves, env.steps = task, task.start, False, 0, []
    msgs = [{"role": "user", "content": "maze\n" + task.render(task.start)}]
    while not env.over:
        best = task.best_moves(env.pos)
        d = rng.choice(list(DIRS)) if (rng.random() < error_rate or not best) else rng.choice(best)
        obs = env.move(d)
        msgs.append({"role": "assistant", "content": "", "tool_calls": [_call("move", {"direction": d})]})
        msgs.append({"role": "tool", "name": "move", "content": obs})
    msgs.append({"role": "assistant", "content": "done"})
    return msgs


def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": args}}


def sft_conversations(cfg: MazeConfig, n: int, seed: int, error_rate: float) -> list[list[dict]]:
    rng = random.Random(f"maze-sft-{seed}")
    eval_ids = set(eval_tasks(cfg))
    out = []
    while len(out) < n:
        t = rng.randrange(10**9)
        if t in eval_ids:
            continue
        out.append(
            expert_messages(
                make_task(t, cfg.size, cfg.min_walls, cfg.max_walls, cfg.min_dist), cfg, rng, error_rate
            )
        )
    return out


def eval_tasks(cfg: MazeConfig) -> list[int]:
    rng = random.Random(f"maze-eval-{cfg.eval_seed}")
    return [rng.randrange(10**9) for _ in range(cfg.n_eval)]


def success_reward(
    environments: list[MazeEnv] | None = None, log_metric: Callable | None = None, **kw
) -> list[float]:
    """Verifier: 1.0 iff the episode reached the goal."""
    scores = [1.0 if e.success else 0.0 for e in environments or []]
    if log_metric is not None and scores:
        log_metric("accuracy", sum(scores) / len(scores))
    return scores


success_reward.__name__ = "maze_success"


def step_cost(environments: list[MazeEnv] | None = None, **kw) -> list[float]:
    """``−step_penalty × moves``."""
    return [-e.cfg.step_penalty * e.moves for e in environments or []]


step_cost.__name__ = "maze_steps"


@register_benchmark("maze")
def build(cfg_map: Mapping[str, Any], seed: int):
    from datasets import Dataset

    from crs.benchmarks import Benchmark

    cfg = MazeConfig.from_mapping(cfg_map)
    ev = eval_tasks(cfg)
    evs = set(ev)
    rng = random.Random(f"maze-train-{seed}")
    train = []
    while len(train) < cfg.n_train:
        t = rng.randrange(10**9)
        if t not in evs:
            train.append(t)
    prompt = [{"role": "user", "content": "maze"}]
    ds = lambda ids: Dataset.from_dict({"prompt": [prompt] * len(ids), "task": ids})  # noqa: E731
    return Benchmark(
        name="maze",
        train=ds(train),
        eval=ds(ev),
        reward_funcs=[success_reward, step_cost],
        verify=lambda text, answer: False,  # success is the environment's verdict, not the text's
        info={
            "environment_factory": lambda: MazeEnv(cfg),
            "max_turns": cfg.max_turns,
            "success": lambda env: env.success,
            "sft_conversations": lambda n, s, err: sft_conversations(cfg, n, s, err),
        },
    )
