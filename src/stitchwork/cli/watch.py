"""``stitchwork jobs watch``: a live view of a job's steps and output, fed by its SSE stream."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stitchwork.cli.client import Api
from stitchwork.cli.follow import StreamEvent, follow
from stitchwork.cli.output import console, status_text

OUTPUT_LINES = 12
RESTART_WAIT_S = 30.0  # how long watch waits for an API that is restarting (a loaded machine)
STEP_MARK = {
    "pending": ("·", "dim"),
    "running": ("●", "blue"),
    "completed": ("✓", "green"),
    "failed": ("✗", "red"),
    "skipped": ("↷", "yellow"),
}


@dataclass
class _Step:
    name: str
    status: str = "running"
    duration_s: float | None = None
    error: str | None = None


@dataclass
class WatchView:
    job: dict[str, Any]
    steps: dict[str, _Step] = field(default_factory=dict)
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))
    partial: str = ""
    note: str = ""
    started: float = field(default_factory=time.monotonic)

    def apply(self, event: StreamEvent) -> None:
        payload = event.data.get("payload", {})
        step_id = event.data.get("step_id")
        kind = event.type
        if kind.startswith("job."):
            if "status" in payload:
                self.job["status"] = payload["status"]
            if "attempt" in payload:
                self.job["attempt"] = payload["attempt"]
            if kind == "job.progress":
                self.job["progress_percent"] = payload["progress_percent"]
            if kind in {"job.failed", "job.retried"}:
                self.job["error"] = payload.get("error")
            if kind == "job.completed":
                self.job["progress_percent"] = 100
        elif kind == "step.started" and step_id:
            self.steps[step_id] = _Step(payload.get("name", "step"))
            self.output.clear()
            self.partial = ""
        elif kind in {"step.completed", "step.failed", "step.skipped"} and step_id in self.steps:
            step = self.steps[step_id]
            step.status = kind.removeprefix("step.")
            step.duration_s = payload.get("duration_s")
            step.error = payload.get("error") or payload.get("reason")
        elif kind == "step.output":
            self._add_output(payload.get("chunk", ""), payload.get("dropped_chars", 0))
        self.note = ""

    def _add_output(self, chunk: str, dropped: int) -> None:
        if dropped:
            self.output.append(f"… {dropped} characters dropped (output rate limit) …")
        text = self.partial + chunk
        *lines, self.partial = text.split("\n")
        self.output.extend(lines)

    def render(self) -> Group:
        job = self.job
        head = Text.assemble(
            (f"{job['type']} {job['id'][:8]} ", "bold"),
            status_text(job["status"]),
            f"  attempt {job['attempt']}/{job['max_attempts']}",
            f"  {job['progress_percent']}%",
            f"  {time.monotonic() - self.started:.1f}s",
        )
        steps = Table.grid(padding=(0, 1))
        for step in self.steps.values():
            mark, style = STEP_MARK.get(step.status, ("?", ""))
            took = f"{step.duration_s:.1f}s" if step.duration_s is not None else ""
            steps.add_row(
                Text(mark, style=style), step.name[:70], took, Text(step.error or "", style="dim")
            )
        lines = [*self.output, self.partial] if self.partial else list(self.output)
        output = Text("\n".join(f"  {line}" for line in lines[-OUTPUT_LINES:]), style="dim")
        parts: list[Any] = [head, steps, output]
        if self.note:
            parts.append(Text(self.note, style="yellow"))
        return Group(*parts)


def watch_job(api: Api, job_id: str) -> None:
    """Follow a job until it ends; exit code 0 if it completed, 1 otherwise."""
    job = api.request("GET", f"/jobs/{job_id}", wait_s=RESTART_WAIT_S)
    view = WatchView(job)

    with Live(view.render(), console=console, refresh_per_second=8, transient=False) as live:

        def reconnecting(message: str) -> None:
            view.note = message
            live.update(view.render())

        for event in follow(api, f"/jobs/{job_id}/events/stream", on_reconnect=reconnecting):
            if event.type == "stream.complete":
                view.job["status"] = event.data.get("status", view.job["status"])
                break
            view.apply(event)
            live.update(view.render())
        live.update(view.render())
    if not console.is_terminal:
        console.print()  # Live leaves its last line open when it is not drawing on a terminal

    final = api.request("GET", f"/jobs/{job_id}", wait_s=RESTART_WAIT_S)
    error = f": {final['error']}" if final["error"] else ""
    console.print(f"job {final['id']} {final['status']}{error}")
    if final["status"] != "completed":
        raise typer.Exit(1)
