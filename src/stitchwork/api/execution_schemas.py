"""Wire models of executions: ``*Create`` come in, ``*Public`` go out."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from stitchwork.domain.dag import Waves
from stitchwork.domain.executions import Dispatch, Execution, ExecutionStatus
from stitchwork.services.stitcher import Grant


class ExecutionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: dict[str, Any] = Field(
        description="nodes, edges, concurrency, failure_policy, name, repo (see docs)"
    )
    dispatch: Dispatch = Field(
        default=Dispatch.JOBS,
        description="jobs: the scheduler runs each node as a job; pull: take nodes with /next",
    )
    repo: str | None = Field(default=None, min_length=1, max_length=500)
    start: bool = Field(default=False, description="start at once instead of staying planned")


class NodePublic(BaseModel):
    id: str
    title: str
    status: str
    job_type: str
    job_id: UUID | None
    attempt: int
    error: str | None
    claims: list[str]
    mode: str
    priority: int
    depends_on: list[str]
    metadata: dict[str, str]
    ready_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    lease_expires_at: datetime | None
    blocked_since: datetime | None


class ExecutionPublic(BaseModel):
    id: UUID
    workspace_id: UUID
    name: str | None
    status: ExecutionStatus
    dispatch: Dispatch
    repo: str
    concurrency: int
    failure_policy: str
    peak_concurrency: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    last_event_seq: int
    counts: dict[str, int] = Field(description="nodes by status")
    nodes: list[NodePublic]

    @classmethod
    def of(cls, ex: Execution, *, with_nodes: bool = True) -> ExecutionPublic:
        plan = ex.plan
        nodes: list[NodePublic] = []
        for n in ex.nodes if with_nodes else ():
            node = plan.node(n.node_id)
            nodes.append(
                NodePublic(
                    id=n.node_id,
                    title=node.title,
                    status=n.status,
                    job_type=node.job_type,
                    job_id=n.job_id,
                    attempt=n.attempt,
                    error=n.error,
                    claims=list(node.claims),
                    mode=node.mode.value,
                    priority=node.priority,
                    depends_on=list(plan.dependencies(n.node_id)),
                    metadata=dict(node.metadata),
                    ready_at=n.ready_at,
                    started_at=n.started_at,
                    completed_at=n.completed_at,
                    lease_expires_at=n.lease_expires_at,
                    blocked_since=n.blocked_since,
                )
            )
        return cls(
            id=ex.id,
            workspace_id=ex.workspace_id,
            name=ex.name,
            status=ex.status,
            dispatch=ex.dispatch,
            repo=ex.repo,
            concurrency=ex.concurrency,
            failure_policy=plan.failure_policy.value,
            peak_concurrency=ex.peak_concurrency,
            created_at=ex.created_at,
            started_at=ex.started_at,
            completed_at=ex.completed_at,
            updated_at=ex.updated_at,
            last_event_seq=ex.last_event_seq,
            counts={status: n for status, n in ex.counts.items() if n},
            nodes=nodes,
        )


class ExecutionPage(BaseModel):
    items: list[ExecutionPublic]


class WavesPublic(BaseModel):
    agents: int
    waves: list[list[str]]
    critical_path: list[str]
    critical_path_length: int

    @classmethod
    def of(cls, waves: Waves, agents: int) -> WavesPublic:
        return cls(
            agents=agents,
            waves=waves.waves,
            critical_path=waves.critical_path,
            critical_path_length=waves.critical_path_length,
        )


class NextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_owner: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="who takes the node (default: the API key); complete/fail must match",
    )
    limit: int = Field(default=1, ge=1, le=1000, description="take up to this many nodes")


class GrantPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    execution_id: UUID
    node_id: str
    title: str
    job_type: str
    payload: dict[str, Any]
    claims: list[str]
    mode: str
    lease_owner: str
    lease_expires_at: datetime

    @classmethod
    def of(cls, grant: Grant) -> GrantPublic:
        return cls.model_validate(grant)


class NextPublic(BaseModel):
    node: GrantPublic | None = Field(description="the first node taken; null when none may start")
    nodes: list[GrantPublic] = Field(description="every node taken (up to limit)")


class NodeFailure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(min_length=1, max_length=200)
    error: str | None = Field(default=None, max_length=10_000)


class NodeReport(BaseModel):
    """Several nodes' outcomes at once, recorded in one transaction (all or nothing)."""

    model_config = ConfigDict(extra="forbid")

    completed: list[str] = Field(default_factory=list, max_length=1000)
    failed: list[NodeFailure] = Field(default_factory=list, max_length=1000)
    lease_owner: str | None = Field(default=None, min_length=1, max_length=200)


class NodeComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    result: dict[str, Any] | None = None
    lease_owner: str | None = Field(default=None, min_length=1, max_length=200)


class NodeFail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str | None = Field(default=None, max_length=10_000)
    lease_owner: str | None = Field(default=None, min_length=1, max_length=200)
