"""Execution plans: the model, three input formats (JSON, YAML, Markdown tables) and validation.

A plan is validated whole before anything runs: every error is an ``InvalidRequest`` whose
``field`` names the place (``nodes[3].claims[0]``, ``edges[2]``) and nothing half-built is ever
returned.

Limits: at most ``MAX_PLAN_NODES`` nodes and ``MAX_PLAN_EDGES`` edges, ``concurrency`` between 1
and ``MAX_CONCURRENCY``, ``|priority| <= MAX_PRIORITY``, at most ``MAX_CLAIMS_PER_NODE`` claims per
node, node ids of 1-128 characters from ``[A-Za-z0-9_.:-]`` (they appear in URLs), payloads of at
most ``MAX_PAYLOAD_VALUES`` JSON values nested at most ``MAX_PAYLOAD_DEPTH`` deep, and plan texts
of at most ``MAX_PLAN_TEXT_CHARS`` characters.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, TypeVar

import yaml

from stitchwork.domain.claims import normalize_claim
from stitchwork.domain.locks import LockMode
from stitchwork.domain.milestones import milestone_plan_data, tables
from stitchwork.errors import CycleError, InvalidClaim, InvalidRequest, NotFound

MAX_PLAN_NODES = 10_000
MAX_PLAN_EDGES = 100_000
MAX_CONCURRENCY = 1_000
DEFAULT_CONCURRENCY = 4
MAX_PRIORITY = 1_000_000
MAX_CLAIMS_PER_NODE = 256
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 1_000  # titles, names, job types, agent profiles, metadata values
MAX_PAYLOAD_VALUES = 10_000
MAX_PAYLOAD_DEPTH = 32
MAX_PLAN_TEXT_CHARS = 10_000_000

_E = TypeVar("_E", bound=StrEnum)
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_ID_RULE = "use 1-128 letters, digits, '_', '-', '.' or ':', not starting with '-', '.' or ':'"
# Issue trackers' levels: P0 is the most urgent. Labels sit on the same scale (high == P1) and
# every labelled node runs before an unlabelled one (priority 0).
_PRIORITY_LABELS = {"critical": 100, "urgent": 100, "highest": 100, "high": 90, "medium": 80}
_PRIORITY_LABELS |= {"normal": 80, "low": 70, "lowest": 60}
_P_LEVEL_RE = re.compile(r"[Pp]([0-9])")
_INT_RE = re.compile(r"[+-]?[0-9]+")
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAN_KEYS = frozenset({"name", "concurrency", "failure_policy", "repo", "nodes", "edges"})
_NODE_KEYS = frozenset(
    {"id", "title", "type", "job_type", "payload", "agent_profile", "mode", "claims"}
    | {"priority", "depends_on", "metadata"}
)


class FailurePolicy(StrEnum):
    FAIL_FAST = "fail_fast"
    CONTINUE = "continue"


@dataclass(frozen=True, slots=True)
class PlanNode:
    """One task of a plan; ``payload`` and ``metadata`` are read-only by convention."""

    id: str
    title: str = ""
    job_type: str = "noop"
    payload: dict[str, Any] = field(default_factory=dict, hash=False)
    agent_profile: str | None = None
    mode: LockMode = LockMode.WRITE
    claims: tuple[str, ...] = ()
    priority: int = 0  # higher starts first
    metadata: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A DAG of nodes; an edge ``(a, b)`` means ``b`` depends on ``a`` (``a`` runs first)."""

    name: str | None = None
    nodes: tuple[PlanNode, ...]
    edges: tuple[tuple[str, str], ...] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    failure_policy: FailurePolicy = FailurePolicy.FAIL_FAST
    repo: str | None = None

    @cached_property
    def _graph(self) -> _Graph:
        return _Graph(self.nodes, self.edges)

    def node(self, node_id: str) -> PlanNode:
        """The node with this id; raises ``NotFound``."""
        try:
            return self._graph.by_id[node_id]
        except KeyError:
            raise NotFound(f"the plan has no node {node_id!r}", node_id=node_id) from None

    def position(self, node_id: str) -> int:
        """The node's index in plan order; raises ``NotFound``."""
        self.node(node_id)
        return self._graph.position[node_id]

    def dependencies(self, node_id: str) -> tuple[str, ...]:
        """Ids the node waits for, in edge order; raises ``NotFound``."""
        self.node(node_id)
        return self._graph.dependencies[node_id]

    def dependents(self, node_id: str) -> tuple[str, ...]:
        """Ids that wait for the node, in edge order; raises ``NotFound``."""
        self.node(node_id)
        return self._graph.dependents[node_id]

    def topological_order(self) -> list[str]:
        """Every id after all its dependencies (Kahn, plan order among equals); may raise
        ``CycleError`` for a plan that was never validated."""
        return _topological_order(self._graph)


class _Graph:
    __slots__ = ("by_id", "dependencies", "dependents", "ids", "position")

    def __init__(self, nodes: Sequence[PlanNode], edges: Sequence[tuple[str, str]]) -> None:
        self.ids = [n.id for n in nodes]
        self.by_id = {n.id: n for n in nodes}
        self.position = {node_id: i for i, node_id in enumerate(self.ids)}
        deps: dict[str, list[str]] = {node_id: [] for node_id in self.ids}
        dependents: dict[str, list[str]] = {node_id: [] for node_id in self.ids}
        for frm, to in dict.fromkeys(edges):  # duplicates dropped, order kept
            deps.setdefault(to, []).append(frm)
            dependents.setdefault(frm, []).append(to)
        self.dependencies = {k: tuple(v) for k, v in deps.items()}
        self.dependents = {k: tuple(v) for k, v in dependents.items()}


def _topological_order(graph: _Graph) -> list[str]:
    indegree = {node_id: len(graph.dependencies[node_id]) for node_id in graph.ids}
    queue = deque(node_id for node_id in graph.ids if indegree[node_id] == 0)
    order: list[str] = []
    while queue:
        node_id = queue.popleft()
        order.append(node_id)
        for dependent in graph.dependents[node_id]:
            indegree[dependent] -= 1
            if indegree[dependent] == 0:
                queue.append(dependent)
    if len(order) < len(graph.ids):
        raise CycleError(_find_cycle(graph, {n for n, d in indegree.items() if d > 0}))
    return order


def _find_cycle(graph: _Graph, left: set[str]) -> list[str]:
    # Every node Kahn left behind waits for another node left behind, so walking dependencies
    # from one of them must come back to a node already on the walk: that closes a cycle.
    start = next(node_id for node_id in graph.ids if node_id in left)
    walk: dict[str, int] = {}
    node_id = start
    while node_id not in walk:
        walk[node_id] = len(walk)
        node_id = next(d for d in graph.dependencies[node_id] if d in left)
    loop = list(walk)[walk[node_id] :]
    loop.reverse()  # the walk went against the edges
    first = min(range(len(loop)), key=lambda i: graph.position[loop[i]])
    loop = loop[first:] + loop[:first]
    return [*loop, loop[0]]


def validate_plan(plan: Plan) -> Plan:
    """Check every rule and return the plan normalised (claims normalised and de-duplicated,
    titles defaulted to ids, enums converted, duplicate edges dropped).

    Raises:
        InvalidRequest: with ``field`` naming the first problem (``InvalidClaim`` for claims,
            ``CycleError`` naming the cycle, first node repeated last).
    """
    return _validate(plan, None)


def _err(where: str, message: str, **fields: Any) -> InvalidRequest:
    return InvalidRequest(message, field=where, **fields)


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a plan's values can be megabytes long."""
    text = repr(value[: limit + 1] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[:limit] + "..."


def _validate(plan: Plan, edge_fields: Sequence[str] | None) -> Plan:
    if not isinstance(plan.nodes, tuple | list) or not plan.nodes:
        raise _err("nodes", "the plan has no nodes; add at least one")
    if len(plan.nodes) > MAX_PLAN_NODES:
        raise _err("nodes", f"the plan has {len(plan.nodes)} nodes; the limit is {MAX_PLAN_NODES}")
    positions: dict[str, int] = {}
    repo = _text(plan.repo, "repo") or None
    nodes = tuple(_validate_node(node, i, positions, repo) for i, node in enumerate(plan.nodes))
    checked = Plan(
        name=_text(plan.name, "name") or None,
        nodes=nodes,
        edges=_validate_edges(plan.edges, positions, edge_fields),
        concurrency=_concurrency(plan.concurrency),
        failure_policy=_choice(FailurePolicy, plan.failure_policy, "failure_policy"),
        repo=repo,
    )
    checked.topological_order()  # raises CycleError
    return checked


def _validate_node(node: PlanNode, i: int, positions: dict[str, int], repo: str | None) -> PlanNode:
    at = f"nodes[{i}]"
    if not isinstance(node, PlanNode):
        raise _err(at, f"{at} is not a plan node")
    node_id = node.id
    if (
        not isinstance(node_id, str)
        or len(node_id) > MAX_ID_LENGTH
        or not _ID_RE.fullmatch(node_id)
    ):
        raise _err(f"{at}.id", f"node id {_shown(node_id)} is not valid: {_ID_RULE}")
    if node_id in positions:
        where = f"nodes[{positions[node_id]}] and {at}"
        raise _err(f"{at}.id", f"node id {node_id!r} is used twice ({where})", node_id=node_id)
    positions[node_id] = i
    job_type = _text(node.job_type, f"{at}.job_type")
    if not job_type:
        raise _err(f"{at}.job_type", f"node {node_id!r} needs a job type")
    _check_json(node.payload, f"{at}.payload", node_id)
    checked = PlanNode(
        id=node_id,
        title=_text(node.title, f"{at}.title") or node_id,
        job_type=job_type,
        payload=node.payload,
        agent_profile=_text(node.agent_profile, f"{at}.agent_profile") or None,
        mode=_choice(LockMode, node.mode, f"{at}.mode"),
        claims=_claims(node.claims, f"{at}.claims", node_id),
        priority=parse_priority(node.priority, field=f"{at}.priority"),
        metadata=_metadata(node.metadata, f"{at}.metadata"),
    )
    _check_payload_scope(checked, f"{at}.payload", repo)
    return checked


def _check_payload_scope(node: PlanNode, where: str, repo: str | None) -> None:
    """Refuse a payload whose ``claims``, ``mode`` or ``repo`` differ from the node's own
    (the plan's repo): the scheduler locks what the node says, so a job run with other values
    would work outside its locks. A payload that repeats the same values is accepted."""
    payload = node.payload
    if "claims" in payload:
        claims = _claims(payload["claims"], f"{where}.claims", node.id)
        if set(claims) != set(node.claims):
            raise _err(
                f"{where}.claims",
                f"node {node.id!r}: payload.claims differs from the node's claims, which are "
                "what the scheduler locks; put claims on the node itself, not in its payload",
                node_id=node.id,
            )
    if "mode" in payload and payload["mode"] != node.mode.value:
        raise _err(
            f"{where}.mode",
            f"node {node.id!r}: payload.mode differs from the node's mode "
            f"({node.mode.value}); set mode on the node itself, not in its payload",
            node_id=node.id,
        )
    if "repo" in payload and payload["repo"] != repo:
        raise _err(
            f"{where}.repo",
            f"node {node.id!r}: payload.repo differs from the plan's repo, the repository "
            "whose locks the node takes; set repo on the plan (or the execution), not in a "
            "node's payload",
            node_id=node.id,
        )


def _validate_edges(
    raw: Any, positions: Mapping[str, int], edge_fields: Sequence[str] | None
) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, tuple | list) or len(raw) > MAX_PLAN_EDGES:
        raise _err("edges", f"edges must be a list of at most {MAX_PLAN_EDGES} (from, to) pairs")
    for k, edge in enumerate(raw):
        where = edge_fields[k] if edge_fields else f"edges[{k}]"
        if not (isinstance(edge, tuple | list) and len(edge) == 2):
            raise _err(where, f"{where} must be a (from, to) pair")
        frm, to = edge
        for end in (frm, to):
            if not isinstance(end, str) or end not in positions:
                raise _err(
                    where,
                    f"{_shown(to)} depends on {_shown(frm)}, but {_shown(end)} is not in the plan",
                )
        if frm == to:
            raise _err(where, f"node {frm!r} depends on itself", node_id=frm)
    return tuple(dict.fromkeys((frm, to) for frm, to in raw))


def _text(value: Any, where: str) -> str:
    """'' for None; otherwise a string of at most ``MAX_TEXT_LENGTH`` characters."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _err(where, f"{where} must be a string, not {type(value).__name__}")
    if len(value) > MAX_TEXT_LENGTH:
        raise _err(where, f"{where} is longer than {MAX_TEXT_LENGTH} characters")
    return value


def _concurrency(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise _err(
            "concurrency", f"concurrency must be from 1 to {MAX_CONCURRENCY}, not {_shown(value)}"
        )
    return value


def _choice(enum: type[_E], value: Any, where: str) -> _E:
    if isinstance(value, str) and value in enum._value2member_map_:
        return enum(value)
    allowed = ", ".join(member.value for member in enum)
    raise _err(where, f"{where} must be one of {allowed}, not {_shown(value)}")


def parse_priority(value: Any, *, field: str = "priority") -> int:
    """A priority as a number, higher first: an integer, ``P0``-``P9`` (P0 = 100, P1 = 90, ...)
    or a label (critical 100, high 90, medium/normal 80, low 70, lowest 60); None or '' is 0."""
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        text = value.strip()
        if _INT_RE.fullmatch(text):
            value = int(text)
        elif level := _P_LEVEL_RE.fullmatch(text):
            return 100 - 10 * int(level.group(1))
        elif text.lower() in _PRIORITY_LABELS:
            return _PRIORITY_LABELS[text.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_PRIORITY:
        return value
    labels = ", ".join(_PRIORITY_LABELS)
    raise _err(
        field,
        f"priority {_shown(value)}: use a whole number up to ±{MAX_PRIORITY}, P0-P9 or {labels}",
    )


def _claims(raw: Any, where: str, node_id: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, tuple | list) or len(raw) > MAX_CLAIMS_PER_NODE:
        limit = MAX_CLAIMS_PER_NODE
        raise _err(where, f"node {node_id!r}: claims must be a list of at most {limit} paths")
    claims: list[str] = []
    for j, claim in enumerate(raw):
        if not isinstance(claim, str):
            raise _err(f"{where}[{j}]", f"node {node_id!r}: claim {_shown(claim)} is not a string")
        try:
            claims.append(normalize_claim(claim))
        except InvalidClaim as exc:  # the same error, located
            located = InvalidClaim(exc.claim, f"{exc.reason} (node {node_id!r})")
            located.field = located.fields["field"] = f"{where}[{j}]"
            located.fields["node_id"] = node_id
            raise located from exc
    return tuple(dict.fromkeys(claims))


def _metadata(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _err(where, f"{where} must be an object of strings")
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _err(f"{where}.{key}", f"{where}.{key} must be a string, not {_shown(value)}")
        _text(value, f"{where}.{key}")
    return dict(raw)


def _check_json(payload: Any, where: str, node_id: str) -> None:
    # Iterative with a budget: YAML aliases can make a small text a huge (shared) tree.
    if not isinstance(payload, dict):
        raise _err(where, f"node {node_id!r}: payload must be an object")
    if not payload:
        return
    stack: list[tuple[Any, int]] = [(payload, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_PAYLOAD_VALUES or depth > MAX_PAYLOAD_DEPTH:
            limits = f"{MAX_PAYLOAD_VALUES} values, {MAX_PAYLOAD_DEPTH} levels"
            raise _err(where, f"node {node_id!r}: payload is over the limit ({limits})")
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif not (
            value is None
            or isinstance(value, str | int)
            or (isinstance(value, float) and math.isfinite(value))
        ):
            raise _err(where, f"node {node_id!r}: payload holds {_shown(value)}, which is not JSON")


def parse_plan(text: str, *, format: str | None = None) -> Plan:
    """Parse and validate a plan written as JSON, YAML or a Markdown milestone table.

    Args:
        text: the plan document.
        format: ``json``, ``yaml`` or ``markdown``; None detects it: a JSON object, else a YAML
            mapping with ``nodes``, else a document with a Markdown table, else YAML.

    Raises:
        InvalidRequest: the text does not parse or the plan breaks a rule (see ``validate_plan``).
    """
    if not isinstance(text, str) or len(text) > MAX_PLAN_TEXT_CHARS:
        raise _err("body", f"a plan must be text of at most {MAX_PLAN_TEXT_CHARS} characters")
    fmt = (format or "").lower()
    fmt = {"yml": "yaml", "md": "markdown"}.get(fmt, fmt)
    if fmt == "markdown":
        return _plan_from_data(milestone_plan_data(text))
    if fmt == "json" or (not fmt and text.lstrip().startswith("{")):
        return _plan_from_data(_load(text, "json"))
    if fmt == "yaml":
        return _plan_from_data(_load(text, "yaml"))
    if fmt:
        raise _err("format", f"unknown plan format {_shown(format)}; use json, yaml or markdown")
    if next(tables(text.splitlines()), None) is not None:
        # A YAML plan may quote a Markdown table in a payload, so YAML with nodes wins.
        try:
            data = _load(text, "yaml")
        except InvalidRequest:
            data = None
        if not (isinstance(data, dict) and "nodes" in data):
            return _plan_from_data(milestone_plan_data(text))
        return _plan_from_data(data)
    return _plan_from_data(_load(text, "yaml"))


def _load(text: str, fmt: str) -> Any:
    try:
        if fmt == "json":
            return json.loads(text)
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise _err("body", f"the plan is not valid JSON: {exc.msg} ({where})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise _err("body", f"the plan is not valid YAML: {exc.problem}{where}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise _err("body", f"the plan is not valid {fmt.upper()}: {exc}") from None


def _plan_from_data(data: Any) -> Plan:
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise _err("nodes", "a plan must be an object with a 'nodes' list")
    _reject_unknown(data, _PLAN_KEYS, "")
    if len(data["nodes"]) > MAX_PLAN_NODES:
        raise _err("nodes", f"the plan has over {MAX_PLAN_NODES} nodes")
    nodes: list[PlanNode] = []
    edges: list[tuple[str, str]] = []
    edge_fields: list[str] = []
    for i, raw in enumerate(data["nodes"]):
        at = f"nodes[{i}]"
        if not isinstance(raw, dict):
            raise _err(at, f"{at} must be an object with an id")
        _reject_unknown(raw, _NODE_KEYS, f"{at}.")
        if "job_type" in raw and "type" in raw and raw["type"] != raw["job_type"]:
            raise _err(f"{at}.type", f"{at} has a type and a different job_type")
        kind = raw.get("job_type", raw.get("type"))
        node_id = _ref(raw.get("id"), f"{at}.id")
        nodes.append(
            PlanNode(
                id=node_id,
                title=raw.get("title") or "",
                job_type="noop" if kind is None else kind,
                payload={} if raw.get("payload") is None else raw["payload"],
                agent_profile=raw.get("agent_profile"),
                mode=raw.get("mode") or LockMode.WRITE,
                claims=raw.get("claims") or (),
                priority=raw.get("priority", 0),
                metadata=raw.get("metadata") or {},
            )
        )
        deps = raw.get("depends_on") or []
        if not isinstance(deps, list):
            raise _err(f"{at}.depends_on", f"{at}.depends_on must be a list of node ids")
        for j, dep in enumerate(deps):
            edges.append((_ref(dep, f"{at}.depends_on[{j}]"), node_id))
            edge_fields.append(f"{at}.depends_on[{j}]")
    raw_edges = data.get("edges") or []
    if not isinstance(raw_edges, list):
        raise _err("edges", "edges must be a list of {from: a, to: b} or [a, b]")
    for k, edge in enumerate(raw_edges):
        if isinstance(edge, dict) and set(edge) == {"from", "to"}:
            edge = [edge["from"], edge["to"]]
        if not (isinstance(edge, list) and len(edge) == 2):
            raise _err(f"edges[{k}]", "each edge must be {from: a, to: b} or [a, b]")
        edges.append((_ref(edge[0], f"edges[{k}]"), _ref(edge[1], f"edges[{k}]")))
        edge_fields.append(f"edges[{k}]")
    concurrency = data.get("concurrency")
    plan = Plan(
        name=data.get("name"),
        nodes=tuple(nodes),
        edges=tuple(edges),
        concurrency=DEFAULT_CONCURRENCY if concurrency is None else concurrency,
        failure_policy=data.get("failure_policy") or FailurePolicy.FAIL_FAST,
        repo=data.get("repo"),
    )
    return _validate(plan, edge_fields)


def _reject_unknown(data: dict[Any, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise _err(f"{prefix}{key}", f"unknown key {_shown(key)}; expected {expected}")


def _ref(value: Any, where: str) -> str:
    """A node id as written in a plan: a string, or an integer (YAML reads ``id: 163`` so)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise _err(where, f"{where} must be a node id, not {_shown(value)}")


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-able data that ``parse_plan`` reads back into an equal plan."""
    return {
        "name": plan.name,
        "concurrency": plan.concurrency,
        "failure_policy": plan.failure_policy.value,
        "repo": plan.repo,
        "nodes": [
            {
                "id": node.id,
                "title": node.title,
                "job_type": node.job_type,
                "payload": copy.deepcopy(node.payload) if node.payload else {},
                "agent_profile": node.agent_profile,
                "mode": node.mode.value,
                "claims": list(node.claims),
                "priority": node.priority,
                "metadata": dict(node.metadata),
            }
            for node in plan.nodes
        ],
        "edges": [{"from": frm, "to": to} for frm, to in plan.edges],
    }
