"""``stitchwork plan watch``: an execution's nodes live, fed by its SSE stream.

On a terminal a Rich Live table redraws as events arrive; anywhere else (a pipe, a CI log)
every event is one line, and the final table is printed once at the end. Events are applied to
the view as they come; the execution is read whole only at the start, after a lost connection
and at the end, so a plan of thousands of nodes costs one read per event, not one per node.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import typer
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stitchwork.cli.client import Api
from stitchwork.cli.follow import StreamEvent, follow
from stitchwork.cli.output import STATUS_STYLE, console, duration, err_console

RESTART_WAIT_S = 10.0  # how long watch waits for an API that is restarting
TERMINAL_STATUSES = frozenset({"completed", "failed", "aborted"})
NODE_STATUS_BY_EVENT = {
    "task.ready": "ready",
    "task.started": "running",
    "task.completed": "completed",
    "task.failed": "failed",
    "task.skipped": "skipped",
    "task.cancelled": "cancelled",
}
STYLE = {
    **STATUS_STYLE,
    "ready": "cyan",
    "skipped": "magenta",
    "planned": "dim",
    "paused": "yellow",
    "aborted": "red",
}
# Rows a terminal shows first when the plan does not fit: what is happening or went wrong.
ROW_RANK = {"running": 0, "failed": 1, "ready": 2}
HEAD_LINES = 5  # header, progress, table header, footer, a spare line


class _Ended(Exception):
    """The execution ended while the stream was down: there is nothing left to follow."""


def styled(status: str) -> Text:
    return Text(status, style=STYLE.get(status, ""))


def short(value: str | None) -> str:
    """An id cut to its last 8 characters: ids are UUIDv7, whose first ones are a timestamp
    shared by everything created in the same minute."""
    return value[-8:] if value else ""


@dataclass
class ExecutionView:
    """What the watch shows: the execution as last read, with the stream's events applied."""

    execution: dict[str, Any]
    note: str = ""  # about the connection; cleared by the next event
    alert: str = ""  # about the execution (a deadlock); cleared when it runs again
    nodes: dict[str, dict[str, Any]] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.nodes = {node["id"]: dict(node) for node in self.execution.get("nodes", [])}

    @property
    def id(self) -> str:
        return str(self.execution["id"])

    @property
    def status(self) -> str:
        return str(self.execution["status"])

    def refresh(self, execution: dict[str, Any]) -> None:
        """Replace the view's state with a fresh read of the execution."""
        nodes = {node["id"]: dict(node) for node in execution.get("nodes", [])}
        with self._lock:
            self.execution, self.nodes = execution, nodes

    def apply(self, event: StreamEvent) -> None:
        payload: dict[str, Any] = event.data.get("payload") or {}
        at = event.data.get("created_at")
        with self._lock:
            self.note = ""
            # The stream replays the history first; what the last read already shows must
            # not move nodes back (nor count their attempts twice).
            if event.id.isdigit() and int(event.id) <= int(
                self.execution.get("last_event_seq") or 0
            ):
                return
            if event.type.startswith("execution."):
                if "status" in payload:
                    self.execution["status"] = payload["status"]
                if event.type == "execution.started":
                    self.execution["started_at"] = at
                elif payload.get("status") in TERMINAL_STATUSES:
                    self.execution["completed_at"] = at
                if event.type == "execution.deadlock":
                    self.alert = self.deadlock(payload)
                elif payload.get("status") == "running":
                    self.alert = ""
                return
            node = self.nodes.get(str(payload.get("node")))
            if node is None:
                return
            if event.type == "lock.contended":
                node["waiting"] = self.holders(payload.get("holders", []))
                return
            status = NODE_STATUS_BY_EVENT.get(event.type)
            if status is None:
                return
            node["status"] = status
            node.pop("waiting", None)
            if status == "running":
                node["job_id"] = payload.get("job_id") or node.get("job_id")
                node["attempt"] = int(node.get("attempt") or 0) + 1
                node["started_at"], node["completed_at"], node["error"] = at, None, None
            elif status in {"completed", "failed", "skipped", "cancelled"}:
                node["completed_at"] = at
                node["error"] = payload.get("error") or payload.get("reason") or node.get("error")

    def deadlock(self, payload: dict[str, Any]) -> str:
        blocked = ", ".join(map(str, payload.get("blocked") or ()))
        note = f"deadlock, paused: {blocked or 'ready nodes'} can never lock their claims"
        if payload.get("holders"):
            note += f" (held by {', '.join(map(str, payload['holders']))})"
        if payload.get("cycle"):
            note += f"; cycle {' -> '.join(map(str, payload['cycle']))}"
        return note

    def after(self, node: dict[str, Any]) -> str:
        """What a node that has not started waits for: its unfinished dependencies."""
        if node["status"] != "pending":
            return ""
        deps = node.get("depends_on") or ()
        waiting = [d for d in deps if (self.nodes.get(d) or {}).get("status") != "completed"]
        return "after " + ", ".join(waiting) if waiting else ""

    def holders(self, owners: list[str]) -> str:
        """Lock owners as a reader knows them: a node id for this execution's own nodes."""
        mine = f"{self.id}/"
        names = [o.removeprefix(mine) if o.startswith(mine) else o for o in map(str, owners)]
        return "waits for " + ", ".join(names) if names else "waits for locks"

    # -- rendering ---------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        return Counter(str(node["status"]) for node in self.nodes.values())

    def progress(self) -> Text:
        counts = self.counts()
        parts = [f"completed {counts['completed']}/{len(self.nodes)}"]
        parts += [f"{s} {counts[s]}" for s in ("running", "ready", "failed") if counts[s]]
        parts += [f"{s} {counts[s]}" for s in ("skipped", "cancelled") if counts[s]]
        return Text(" · ".join(parts))

    def header(self) -> Text:
        name = self.execution.get("name") or ""
        return Text.assemble(
            ("execution ", "bold"),
            (f"{self.id} ", "bold"),
            (f"{name}  " if name else "", ""),
            styled(self.status),
            f"  {duration(self.execution)}",
        )

    def table(self, max_rows: int | None = None, *, dependencies: bool = False) -> Table:
        """The nodes in plan order; with ``max_rows``, the running, failed and ready ones
        first, then the rest, and a last row counting what did not fit."""
        table = Table(show_edge=False, header_style="bold")
        table.add_column("node", no_wrap=True)
        table.add_column("title", no_wrap=True, overflow="ellipsis", max_width=48)
        table.add_column("status", no_wrap=True)
        table.add_column("job", no_wrap=True)
        table.add_column("duration", no_wrap=True, justify="right")
        table.add_column("detail", no_wrap=True, overflow="ellipsis", max_width=48)
        if dependencies:
            table.add_column("depends on")
        nodes = list(self.nodes.values())
        hidden = 0
        if max_rows is not None and len(nodes) > max_rows:
            order = {node["id"]: i for i, node in enumerate(nodes)}
            keep = sorted(nodes, key=lambda n: (ROW_RANK.get(n["status"], 3), order[n["id"]]))
            kept = keep[: max(1, max_rows - 1)]
            hidden = len(nodes) - len(kept)
            nodes = sorted(kept, key=lambda n: order[n["id"]])
        for node in nodes:
            detail = node.get("waiting") or node.get("error") or self.after(node)
            cells: list[Any] = [
                node["id"],
                node.get("title") or "",
                styled(node["status"]),
                short(node.get("job_id")),
                duration(node),
                Text(str(detail), style="dim"),
            ]
            if dependencies:
                cells.append(", ".join(node.get("depends_on") or ()))
            table.add_row(*cells)
        if hidden:
            table.add_row("…", Text(f"{hidden} more nodes", style="dim"))
        return table

    def __rich_console__(self, rich: Console, options: ConsoleOptions) -> RenderResult:
        # Live redraws this several times a second, so durations tick between events.
        with self._lock:
            parts: list[Any] = [self.header(), self.progress()]
            parts.append(self.table(max(3, options.size.height - HEAD_LINES)))
            parts += [Text(note, style="yellow") for note in (self.alert, self.note) if note]
            group = Group(*parts)
        yield group

    def line(self, event: StreamEvent) -> Text:
        """One event as one line, for output that is not a terminal."""
        payload: dict[str, Any] = event.data.get("payload") or {}
        at = str(event.data.get("created_at") or "")[11:23]
        text = Text.assemble((f"{at} ", "dim"), (f"{event.type:<20}", _family_style(event.type)))
        node_id = payload.get("node")
        if node_id is not None:
            title = (self.nodes.get(str(node_id)) or {}).get("title") or ""
            text.append(f" {node_id}", style="bold")
            text.append(f"  {title[:60]}" if title and title != str(node_id) else "")
        details = []
        if event.type.startswith("execution.") and "status" in payload:
            details.append(str(payload["status"]))
        if payload.get("job_id"):  # whole: a log line is where one copies it from
            details.append(f"job {payload['job_id']}")
        if event.type == "lock.contended":
            details.append(self.holders(payload.get("holders", [])))
        details += [str(payload[k]) for k in ("reason", "error") if payload.get(k)]
        if event.type == "execution.deadlock":
            details.append(self.deadlock(payload))
        if details:
            text.append("  " + " · ".join(details), style="dim")
        return text

    def summary(self) -> str:
        counts = self.counts()
        parts = [f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s]]
        return f"execution {self.id} {self.status}: {', '.join(parts) or 'no nodes'}"


STATUS_ORDER = ("completed", "failed", "skipped", "cancelled", "running", "ready", "pending")


def _family_style(event_type: str) -> str:
    family = event_type.split(".", 1)[0]
    return {"execution": "bold cyan", "task": "blue", "lock": "yellow"}.get(family, "")


def _peek(api: Api, execution_id: str) -> dict[str, Any] | None:
    """The execution if the API answers now; None while it is unreachable or erring."""
    try:
        response = api.http.get(f"/executions/{execution_id}")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    data: dict[str, Any] = response.json()
    return data


def _stream(api: Api, view: ExecutionView, live: Live | None) -> None:
    def reconnecting(message: str) -> None:
        current = _peek(api, view.id)
        if current is not None:
            view.refresh(current)
            if view.status in TERMINAL_STATUSES:
                # A finished execution's stream answers a resume with 204, not with frames.
                raise _Ended
        if live is None:
            err_console.print(message, style="yellow")
        else:
            view.note = message
            live.refresh()

    try:
        for event in follow(api, f"/executions/{view.id}/stream", on_reconnect=reconnecting):
            if event.type == "stream.complete":
                return
            view.apply(event)
            if live is None:
                console.print(view.line(event), soft_wrap=True, highlight=False)
                console.file.flush()  # a pipe or a file sees each event at once
            else:
                live.refresh()
    except _Ended:
        return


def watch_execution(api: Api, execution_id: str) -> None:
    """Follow an execution until it ends; exit code 0 if it completed, 1 otherwise."""
    view = ExecutionView(api.request("GET", f"/executions/{execution_id}", wait_s=RESTART_WAIT_S))
    try:
        if console.is_terminal:
            with Live(view, console=console, refresh_per_second=4, transient=False) as live:
                _stream(api, view, live)
                view.refresh(api.request("GET", f"/executions/{view.id}", wait_s=RESTART_WAIT_S))
                live.refresh()  # the last frame stays on screen: make it the final state
        else:
            _stream(api, view, None)
            view.refresh(api.request("GET", f"/executions/{view.id}", wait_s=RESTART_WAIT_S))
            console.print(view.table())
    except KeyboardInterrupt:
        err_console.print(
            f"stopped watching; execution {view.id} goes on. Follow it again with "
            f"`stitchwork plan watch {view.id}`, stop it with `stitchwork plan abort {view.id}`",
            highlight=False,
        )
        raise typer.Exit(130) from None
    console.print(view.summary(), highlight=False)
    if view.status != "completed":
        raise typer.Exit(1)
