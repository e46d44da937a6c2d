"""Markdown milestone tables (columns such as Issue, Title, Phase, Priority, Depends On,
Est. Tokens, Model) read as plan data; ``plans.parse_plan`` validates the result."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from stitchwork.errors import InvalidRequest


def _err(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, field=where)


# Markdown milestone tables. A node's id is its issue reference without the '#' ('#163' -> '163')
# because ids travel in URL paths; '#163' (or '163') in Depends On resolves to that id, and the
# payload keeps the reference ({"issue_ref": "#163", "title": ...}).
_SEPARATOR_RE = re.compile(r"\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*")
_CELL_RE = re.compile(r"(?<!\\)\|")
_LINK_RE = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_HEADING_RE = re.compile(r"\s{0,3}#{1,6}\s+(.*?)[\s#]*")
_NO_DEPS = frozenset({"", "-", "\u2014", "\u2013", "none", "n/a", "na"})  # em and en dashes
_COLUMNS = {
    **dict.fromkeys(("issue", "issue #", "issue id", "id", "#"), "issue"),
    **dict.fromkeys(("title", "name", "summary", "task"), "title"),
    **dict.fromkeys(("depends on", "dependencies", "deps", "blocked by"), "depends_on"),
    **dict.fromkeys(("est tokens", "estimated tokens", "tokens"), "est_tokens"),
    **dict.fromkeys(("type", "job type"), "job_type"),
    **dict.fromkeys(("agent", "agent profile"), "agent_profile"),
    **{key: key for key in ("phase", "priority", "model", "claims", "mode")},
}
_METADATA_COLUMNS = ("phase", "priority", "model", "est_tokens")


def _bare(cell: str) -> str:
    """A cell without link syntax, code and emphasis marks, whitespace collapsed."""
    text = _LINK_RE.sub(r"\1", cell).replace("`", "").replace("*", "")
    return " ".join(text.split())


def _cells(line: str) -> list[str]:
    text = line.strip().removeprefix("|")
    text = text[:-1] if text.endswith("|") and not text.endswith("\\|") else text
    return [cell.replace("\\|", "|").strip() for cell in _CELL_RE.split(text)]


def tables(lines: list[str]) -> Iterator[tuple[list[str], list[tuple[int, list[str]]]]]:
    """Each table outside code fences: its header cells and its (line number, cells) rows."""
    fenced, i = False, 0
    while i < len(lines) - 1:
        line, below = lines[i], lines[i + 1]
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and "|" in line and "|" in below and _SEPARATOR_RE.fullmatch(below):
            end = i + 2
            while end < len(lines) and "|" in lines[end] and lines[end].strip():
                end += 1
            yield _cells(line), [(k + 1, _cells(lines[k])) for k in range(i + 2, end)]
            i = end
            continue
        i += 1


def _issue_table(lines: list[str]) -> tuple[list[str | None], list[tuple[int, list[str]]]]:
    """The first table with an Issue column: its canonical column names and its rows."""
    for header, rows in tables(lines):
        columns = [
            _COLUMNS.get(" ".join(re.sub(r"[._-]", " ", _bare(c)).lower().split())) for c in header
        ]
        if "issue" in columns:
            return columns, rows
    raise InvalidRequest("no Markdown table with an Issue column was found", field="body")


def milestone_plan_data(text: str) -> dict[str, Any]:
    """The plan data (as a JSON plan would hold it) of the first Markdown table with an
    Issue column; raises ``InvalidRequest`` naming the row."""
    lines = text.splitlines()
    columns, rows = _issue_table(lines)
    nodes: list[dict[str, Any]] = []
    for i, (line_no, cells) in enumerate(rows):
        row: dict[str, str] = {}
        for column, cell in zip(columns, cells, strict=False):
            if column:
                row.setdefault(column, cell)
        issue = _bare(row.get("issue", ""))
        node_id = issue.removeprefix("#").strip()
        if not node_id:
            raise _err(f"nodes[{i}].id", f"the table row on line {line_no} has no issue")
        ref = f"#{node_id}" if node_id.isdigit() else issue
        title = " ".join(row.get("title", "").split()) or ref
        cell = row.get("claims", "")
        claims = re.findall(r"`([^`]+)`", cell) or _bare(cell).replace(",", " ").split()
        extra = {"job_type": _bare(row.get("job_type", "")), "claims": claims}
        extra |= {"agent_profile": _bare(row.get("agent_profile", ""))}
        extra |= {"mode": _bare(row.get("mode", "")).lower()}
        metadata = {k: _bare(row[k]) for k in _METADATA_COLUMNS if _bare(row.get(k, ""))}
        deps = _bare(row.get("depends_on", ""))
        deps_list = [] if deps.lower() in _NO_DEPS else re.split(r"[,;\s]+", deps)
        node: dict[str, Any] = {
            "id": node_id,
            "title": title,
            "payload": {"issue_ref": ref, "title": title},
            "priority": metadata.get("priority"),  # a label here; validation maps it
            "metadata": metadata,
            "depends_on": [d for d in deps_list if d.lower() not in _NO_DEPS | {"and", "&"}],
        }
        node.update((key, value) for key, value in extra.items() if value)
        nodes.append(node)
    ids = {node["id"] for node in nodes}
    for i, node in enumerate(nodes):
        for dep in node["depends_on"]:
            if dep.removeprefix("#") not in ids:
                where = f"issue {node['payload']['issue_ref']} (line {rows[i][0]})"
                message = f"{where} depends on {dep}, which is not in the table"
                raise _err(f"nodes[{i}].depends_on", message)
        node["depends_on"] = [dep.removeprefix("#") for dep in node["depends_on"]]
    headings = (m.group(1) for line in lines if (m := _HEADING_RE.fullmatch(line)))
    return {"name": next(headings, None), "nodes": nodes}
