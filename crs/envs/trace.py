"""Orchestration traces in the MAS-RL survey's schema (arXiv 2605.02801), built, validated and saved.

The survey ("Reinforcement Learning for LLM-based Multi-Agent Systems through Orchestration Traces")
models a multi-agent rollout as a temporal event graph: **events** (orchestrator decisions, spawns,
messages, tool calls and results, returns, aggregations, ...) joined by typed **edges** (spawn, return,
aggregate, temporal, ...), with named reward channels and costs. Its artifact
(``xxzcc/awesome-llm-mas-rl@a14d8de``, ``trace-schema/``) ships a JSON Schema and a dependency-free
validator; crs re-implements both (its own code, the same rules):

- :func:`artifact_errors` — the artifact validator's rules: required top-level keys
  (``trace_id, task_id, events, edges, rewards, costs``), a non-empty event list, required event/edge
  fields, allowed event/edge types, duplicate event ids, negative timestamps, edges to unknown events,
  negative costs. Like the artifact it does **not** require ``costs.tokens``/``wall_clock_s`` nor forbid
  extra top-level keys (golden case O8). Where the artifact crashes on a non-number cost (``"12" < 0``
  raises ``TypeError``, O9) crs reports a validation message instead;
- :data:`TRACE_SCHEMA` + :func:`schema_errors` — the JSON Schema (draft 2020-12) checked with the
  ``jsonschema`` package: also requires ``costs.tokens`` and ``costs.wall_clock_s`` and forbids
  unknown top-level keys;
- the **crs extension**: the schema has no ``stop`` (nor ``delegate``) event type, so stopping is an
  ``orchestrator_decision`` with ``decision: "stop"`` (events allow extra keys); :data:`DECISIONS`.

:func:`validate` runs both and raises :class:`TraceError` (one line); :func:`read_traces` checks a
``.jsonl`` file line by line. A malformed trace is a clear message, never a traceback::

    python -m crs.envs.trace samples/traces.jsonl     # "ok: 64 traces" or one line on stderr, exit 2
"""

from __future__ import annotations

import json
import numbers
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from crs.errors import ConfigError

EVENT_TYPES = (
    "orchestrator_decision",
    "spawn",
    "despawn",
    "message",
    "tool_call",
    "tool_result",
    "return",
    "aggregate",
    "human_intervention",
    "safety_event",
)
EDGE_TYPES = (
    "temporal",
    "causal",
    "spawn",
    "message",
    "tool_dependency",
    "return",
    "aggregate",
    "safety_flow",
)
TOPOLOGIES = (
    "centralized",
    "planner_executor_critic",
    "debate",
    "swarm",
    "hierarchical",
    "harness",
    "mixed",
    "unknown",
)
REQUIRED_TOP = ("trace_id", "task_id", "events", "edges", "rewards", "costs")
REQUIRED_EVENT = ("id", "t", "type", "agent")
REQUIRED_EDGE = ("src", "dst", "type")
#: crs extension: the ``decision`` of an ``orchestrator_decision`` event (``stop`` is the survey's
#: missing stop event; ``turn`` marks the start of an orchestrator turn).
DECISIONS = ("turn", "stop", "invalid")


class TraceError(ConfigError):
    """A trace that breaks the schema or the validator's rules (one line: what and where)."""


def _num(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _number_map() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "number"}}


def _schema() -> dict[str, Any]:
    """The trace JSON Schema (the artifact's constraints, plus crs's ``decision`` on decisions)."""
    nonneg = {"type": "number", "minimum": 0}
    event = {
        "type": "object",
        "required": list(REQUIRED_EVENT),
        "additionalProperties": True,
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "t": nonneg,
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "agent": {"type": "string", "minLength": 1},
            "role": {"type": "string"},
            "from": {"type": "string"},
            "to": {"type": "string"},
            "tool": {"type": "string"},
            "content_ref": {"type": "string"},
            "trusted": {"type": "boolean"},
            "decision": {"type": "string", "enum": list(DECISIONS)},  # crs extension
        },
    }
    edge = {
        "type": "object",
        "required": list(REQUIRED_EDGE),
        "additionalProperties": False,
        "properties": {
            "src": {"type": "string", "minLength": 1},
            "dst": {"type": "string", "minLength": 1},
            "type": {"type": "string", "enum": list(EDGE_TYPES)},
        },
    }
    costs = _number_map() | {
        "required": ["tokens", "wall_clock_s"],
        "properties": {k: nonneg for k in ("tokens", "wall_clock_s", "tool_calls", "messages")},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "LLM-MAS orchestration trace (survey arXiv 2605.02801 schema + crs stop decision)",
        "type": "object",
        "required": list(REQUIRED_TOP),
        "additionalProperties": False,
        "properties": {
            "trace_id": {"type": "string", "minLength": 1},
            "task_id": {"type": "string", "minLength": 1},
            "system": {"type": "string"},
            "topology": {"type": "string", "enum": list(TOPOLOGIES)},
            "events": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/event"}},
            "edges": {"type": "array", "items": {"$ref": "#/$defs/edge"}},
            "rewards": _number_map(),
            "costs": costs,
            "metrics": _number_map(),
        },
        "$defs": {"event": event, "edge": edge},
    }


TRACE_SCHEMA: dict[str, Any] = _schema()


def artifact_errors(trace: Any) -> list[str]:
    """The artifact validator's rules, in its order; ``[]`` = valid. Stops at the first failure, like it."""
    if not isinstance(trace, Mapping):
        return [f"a trace must be a JSON object, got {type(trace).__name__}"]
    missing = sorted(set(REQUIRED_TOP) - set(trace))
    if missing:
        return ["missing top-level fields: " + ", ".join(missing)]
    events, edges = trace["events"], trace["edges"]
    if not isinstance(events, list) or not events:
        return ["events must be a non-empty list"]
    if not isinstance(edges, list):
        return ["edges must be a list"]
    ids: set[str] = set()
    for i, ev in enumerate(events):
        if not isinstance(ev, Mapping):
            return [f"event {i} is not an object"]
        miss = sorted(set(REQUIRED_EVENT) - set(ev))
        if miss:
            return ["event missing fields: " + ", ".join(miss)]
        if ev["type"] not in EVENT_TYPES:
            return [f"unknown event type: {ev['type']}"]
        if ev["id"] in ids:
            return [f"duplicate event id: {ev['id']}"]
        if not _num(ev["t"]):
            return [f"event {ev['id']}: timestamp t must be a number, got {ev['t']!r}"]
        if ev["t"] < 0:
            return [f"negative event timestamp: {ev['id']}"]
        ids.add(ev["id"])
    for i, ed in enumerate(edges):
        if not isinstance(ed, Mapping):
            return [f"edge {i} is not an object"]
        miss = sorted(set(REQUIRED_EDGE) - set(ed))
        if miss:
            return ["edge missing fields: " + ", ".join(miss)]
        if ed["type"] not in EDGE_TYPES:
            return [f"unknown edge type: {ed['type']}"]
        if ed["src"] not in ids:
            return [f"edge src not found: {ed['src']}"]
        if ed["dst"] not in ids:
            return [f"edge dst not found: {ed['dst']}"]
    costs = trace["costs"]
    if not isinstance(costs, Mapping):
        return ["costs must be an object"]
    for key, value in costs.items():
        if not _num(value):  # the artifact raises TypeError here (O9); crs says what is wrong
            return [f"cost field {key} must be a number, got {value!r}"]
        if value < 0:
            return [f"negative cost field: {key}"]
    return []


def schema_errors(trace: Any) -> list[str]:
    """JSON-Schema violations (``jsonschema`` Draft 2020-12), each as ``path: message``; ``[]`` = valid."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(TRACE_SCHEMA)
    out = []
    for err in sorted(validator.iter_errors(trace), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top)"
        out.append(f"{where}: {err.message}")
    return out


def validate(trace: Any, schema: bool = True, where: str = "trace") -> None:
    """Raise :class:`TraceError` (one line) if ``trace`` breaks the validator's rules or the JSON Schema."""
    errs = artifact_errors(trace)
    if not errs and schema:
        errs = schema_errors(trace)
    if errs:
        extra = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        tid = trace.get("trace_id") if isinstance(trace, Mapping) else None
        raise TraceError(f"{where}{f' {tid}' if tid else ''}: invalid trace: {errs[0]}{extra}")


def read_traces(path: str | Path, schema: bool = True) -> list[dict[str, Any]]:
    """Parse and validate a ``.jsonl`` file of traces (one per line); a bad line is one :class:`TraceError`."""
    out = []
    p = Path(path)
    if not p.exists():
        raise TraceError(f"{p}: no such trace file")
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            trace = json.loads(line)
        except json.JSONDecodeError as err:
            raise TraceError(f"{p}:{n}: not JSON ({err.msg} at column {err.colno})") from None
        validate(trace, schema=schema, where=f"{p}:{n}")
        out.append(trace)
    return out


def to_jsonl(traces: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(t, sort_keys=True) + "\n" for t in traces)


class TraceBuilder:
    """Append events and edges in order; ids ``e1, e2, ...``; :meth:`trace` gives the schema's dict."""

    def __init__(self, trace_id: str, task_id: str, topology: str = "centralized") -> None:
        self.trace_id, self.task_id, self.topology = trace_id, task_id, topology
        self.events: list[dict[str, Any]] = []
        self.edges: list[dict[str, str]] = []

    def event(self, type_: str, t: float, agent: str, **extra: Any) -> str:
        eid = f"e{len(self.events) + 1}"
        self.events.append({"id": eid, "t": t, "type": type_, "agent": agent, **extra})
        return eid

    def edge(self, src: str | None, dst: str | None, type_: str) -> None:
        if src is not None and dst is not None:
            self.edges.append({"src": src, "dst": dst, "type": type_})

    def trace(
        self,
        rewards: Mapping[str, float],
        costs: Mapping[str, float],
        metrics: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        out = {
            "trace_id": self.trace_id,
            "task_id": self.task_id,
            "system": "crs-orchestra",
            "topology": self.topology,
            "events": list(self.events),
            "edges": list(self.edges),
            "rewards": {k: float(v) for k, v in rewards.items()},
            "costs": {k: float(v) for k, v in costs.items()},
        }
        if metrics:
            out["metrics"] = {k: float(v) for k, v in metrics.items()}
        return out


def main(argv: list[str] | None = None) -> int:
    """``python -m crs.envs.trace FILE.jsonl [--no-schema]``: 0 and a count, or one line on stderr and 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    schema = "--no-schema" not in args
    files = [a for a in args if not a.startswith("--")]
    if not files:
        print("usage: python -m crs.envs.trace TRACES.jsonl [--no-schema]", file=sys.stderr)
        return 2
    try:
        n = sum(len(read_traces(f, schema=schema)) for f in files)
    except TraceError as err:
        print(f"crs: {err}", file=sys.stderr)
        return 2
    print(f"ok: {n} traces")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
