"""Plans: JSON, YAML and Markdown input, format detection, validation errors and round trips."""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from stitchwork.domain.locks import LockMode
from stitchwork.domain.plans import (
    DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
    MAX_PLAN_NODES,
    FailurePolicy,
    Plan,
    PlanNode,
    parse_plan,
    parse_priority,
    plan_to_dict,
    validate_plan,
)
from stitchwork.errors import CycleError, InvalidClaim, InvalidRequest, NotFound

FIXTURE = Path(__file__).parent.parent / "fixtures" / "milestones.md"


def _json(data: dict[str, Any]) -> Plan:
    return parse_plan(json.dumps(data), format="json")


def _rejects(data: dict[str, Any], field: str, *words: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        _json(data)
    assert info.value.field == field
    for word in words:
        assert word in info.value.message
    return info.value


def _table(*rows: str, header: str = "| Issue | Title | Depends On |") -> str:
    return "\n".join([header, "|---|---|---|", *rows]) + "\n"


# --- good paths ----------------------------------------------------------------------------


def test_json_plan_parses_every_field_and_normalises_them() -> None:
    plan = _json(
        {
            "name": "api work",
            "concurrency": 2,
            "failure_policy": "continue",
            "repo": "acme/shop",
            "nodes": [
                {"id": "schema", "title": "Schema", "type": "shell", "claims": ["./db//x.sql"]},
                {
                    "id": "api",
                    "job_type": "agent",
                    "payload": {"prompt": "build it", "n": [1, 2.5, None, True]},
                    "agent_profile": "backend",
                    "mode": "read",
                    "claims": ["src/api/**", "src/api/**"],
                    "priority": 7,
                    "depends_on": ["schema"],
                    "metadata": {"phase": "core"},
                },
                {"id": "docs", "priority": "P1"},
            ],
            "edges": [{"from": "api", "to": "docs"}, ["schema", "docs"]],
        }
    )
    assert plan.name == "api work"
    assert (plan.concurrency, plan.failure_policy, plan.repo) == (
        2,
        FailurePolicy.CONTINUE,
        "acme/shop",
    )
    schema, api, docs = plan.nodes
    assert schema == PlanNode(id="schema", title="Schema", job_type="shell", claims=("db/x.sql",))
    assert api.mode is LockMode.READ
    assert api.claims == ("src/api/**",)  # de-duplicated
    assert (api.priority, api.agent_profile, api.metadata) == (7, "backend", {"phase": "core"})
    assert api.payload == {"prompt": "build it", "n": [1, 2.5, None, True]}
    assert docs.title == "docs"  # a missing title defaults to the id
    assert (docs.job_type, docs.mode, docs.priority) == ("noop", LockMode.WRITE, 90)
    assert plan.edges == (("schema", "api"), ("api", "docs"), ("schema", "docs"))


def test_plan_defaults_when_only_nodes_are_given() -> None:
    plan = _json({"nodes": [{"id": "a"}]})
    assert plan.name is None
    assert plan.repo is None
    assert plan.concurrency == DEFAULT_CONCURRENCY
    assert plan.failure_policy is FailurePolicy.FAIL_FAST
    assert plan.edges == ()


def test_yaml_plan_reads_integer_ids_and_references() -> None:
    text = """
name: release
concurrency: 3
nodes:
  - id: 163
    title: Build
    claims: [src/**]
  - id: 164
    depends_on: [163]
    mode: analysis
edges:
  - from: 163
    to: 164
"""
    plan = parse_plan(text, format="yaml")
    assert [node.id for node in plan.nodes] == ["163", "164"]
    assert plan.edges == (("163", "164"),)  # the duplicate edge is dropped
    assert plan.node("164").mode is LockMode.ANALYSIS


def test_markdown_table_parses_into_noop_nodes_with_metadata() -> None:
    text = """# Sprint 9

Some prose before the table.

| Issue | Title | Phase | Priority | Depends On | Est. Tokens | Model |
|-------|-------|-------|----------|------------|-------------|-------|
| #163 | Add login | Core | P0 | — | 40k | opus |
| #164 | Add logout | Core | P2 | #163 | 10k | haiku |
"""
    plan = parse_plan(text, format="markdown")
    assert plan.name == "Sprint 9"
    login, logout = plan.nodes
    assert login.id == "163"
    assert login.job_type == "noop"
    assert login.payload == {"issue_ref": "#163", "title": "Add login"}
    assert login.metadata == {
        "phase": "Core",
        "priority": "P0",
        "model": "opus",
        "est_tokens": "40k",
    }
    assert (login.priority, logout.priority) == (100, 80)
    assert plan.edges == (("163", "164"),)


@pytest.mark.parametrize(
    ("text", "first_id"),
    [
        ('{"nodes": [{"id": "j"}]}', "j"),
        ('  \n {"nodes": [{"id": "j2"}]}', "j2"),
        ("nodes:\n  - id: y\n", "y"),
        (_table("| #7 | Seven | |"), "7"),
        # A YAML plan that quotes a Markdown table in a payload is still YAML.
        (
            "nodes:\n  - id: y2\n    payload:\n      prompt: |\n"
            "        | a | b |\n        |---|---|\n",
            "y2",
        ),
    ],
    ids=["json", "json-leading-space", "yaml", "markdown", "yaml-quoting-a-table"],
)
def test_format_is_detected_when_not_given(text: str, first_id: str) -> None:
    assert parse_plan(text).nodes[0].id == first_id


def test_format_names_are_case_insensitive_with_short_aliases() -> None:
    assert parse_plan("nodes: [{id: a}]", format="YML").nodes[0].id == "a"
    assert parse_plan(_table("| #1 | One | |"), format="md").nodes[0].id == "1"


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan("{}", format="toml")
    assert info.value.field == "format"


# --- parse errors --------------------------------------------------------------------------


def test_invalid_json_names_line_and_column() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan('{"nodes": [\n  {"id": "a",}\n]}')
    assert info.value.field == "body"
    assert "not valid JSON" in info.value.message
    assert "line 2" in info.value.message


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan("nodes:\n  - id: a\n   - id: b\n", format="yaml")
    assert info.value.field == "body"
    assert "not valid YAML" in info.value.message
    assert "line 3" in info.value.message


@pytest.mark.parametrize("text", ["[1, 2]", "just words", "nodes: 3", ""])
def test_text_without_a_nodes_list_is_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan(text)
    assert info.value.field == "nodes"


def test_unknown_keys_are_rejected_with_their_location() -> None:
    _rejects({"nodes": [{"id": "a"}], "version": 2}, "version", "unknown key")
    _rejects({"nodes": [{"id": "a", "depend_on": ["b"]}]}, "nodes[0].depend_on", "depends_on")


def test_type_and_job_type_must_agree() -> None:
    _rejects({"nodes": [{"id": "a", "type": "x", "job_type": "y"}]}, "nodes[0].type")


# --- validation errors ---------------------------------------------------------------------


def test_duplicate_ids_are_rejected_naming_both_places() -> None:
    _rejects({"nodes": [{"id": "a"}, {"id": "b"}, {"id": "a"}]}, "nodes[2].id", "nodes[0]", "'a'")


def test_edge_to_an_unknown_node_is_rejected() -> None:
    _rejects({"nodes": [{"id": "a"}], "edges": [["a", "ghost"]]}, "edges[0]", "'ghost'")


def test_depends_on_an_unknown_node_is_rejected_at_the_reference() -> None:
    data = {"nodes": [{"id": "a"}, {"id": "b", "depends_on": ["a", "ghost"]}]}
    _rejects(data, "nodes[1].depends_on[1]", "'ghost'", "not in the plan")


def test_self_edge_is_rejected() -> None:
    _rejects({"nodes": [{"id": "a", "depends_on": ["a"]}]}, "nodes[0].depends_on[0]", "itself")


def test_cycle_is_rejected_with_the_cycle_named() -> None:
    data = {
        "nodes": [{"id": "a"}, {"id": "b"}, {"id": "c"}],
        "edges": [["a", "b"], ["b", "c"], ["c", "a"]],
    }
    with pytest.raises(CycleError) as info:
        _json(data)
    assert info.value.cycle == ["a", "b", "c", "a"]
    assert info.value.field == "edges"
    assert "a -> b -> c -> a" in info.value.message


def test_cycle_downstream_of_acyclic_nodes_is_found_and_starts_at_its_earliest_node() -> None:
    data = {
        "nodes": [{"id": n} for n in ["root", "x", "y", "z", "tail"]],
        "edges": [["root", "z"], ["z", "y"], ["y", "x"], ["x", "z"], ["x", "tail"]],
    }
    with pytest.raises(CycleError) as info:
        _json(data)
    assert info.value.cycle == ["x", "z", "y", "x"]


def test_invalid_claim_names_the_node_and_the_claim_index() -> None:
    data = {"nodes": [{"id": "a"}, {"id": "b", "claims": ["src/ok.ts", "/etc/passwd"]}]}
    with pytest.raises(InvalidClaim) as info:
        _json(data)
    assert info.value.field == "nodes[1].claims[1]"
    assert info.value.fields["field"] == "nodes[1].claims[1]"
    assert "'b'" in info.value.message
    assert info.value.claim == "/etc/passwd"


@pytest.mark.parametrize("claims", ["src/**", [3]], ids=["bare-string", "not-a-string"])
def test_claims_of_the_wrong_shape_are_rejected(claims: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        _json({"nodes": [{"id": "a", "claims": claims}]})
    assert info.value.field is not None
    assert info.value.field.startswith("nodes[0].claims")


@pytest.mark.parametrize("value", [0, -1, "4", True, 2.0, MAX_CONCURRENCY + 1])
def test_invalid_concurrency_is_rejected(value: Any) -> None:
    _rejects({"nodes": [{"id": "a"}], "concurrency": value}, "concurrency", "concurrency")


@pytest.mark.parametrize("value", [1, MAX_CONCURRENCY])
def test_concurrency_bounds_are_accepted(value: int) -> None:
    assert _json({"nodes": [{"id": "a"}], "concurrency": value}).concurrency == value


def test_invalid_mode_and_policy_are_rejected_listing_the_choices() -> None:
    _rejects(
        {"nodes": [{"id": "a", "mode": "exclusive"}]}, "nodes[0].mode", "read, analysis, write"
    )
    _rejects({"nodes": [{"id": "a"}], "failure_policy": "retry"}, "failure_policy", "fail_fast")


@pytest.mark.parametrize("value", ["P10", "urgentish", 1.5, True, 10**7, [1]])
def test_invalid_priority_is_rejected(value: Any) -> None:
    _rejects({"nodes": [{"id": "a", "priority": value}]}, "nodes[0].priority", "priority")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 0), ("", 0), (5, 5), ("-3", -3), ("P0", 100), ("p2", 80), ("High", 90), ("low", 70)],
)
def test_priority_labels_map_to_numbers_with_p0_highest(value: Any, expected: int) -> None:
    assert parse_priority(value) == expected


@pytest.mark.parametrize("node_id", ["", "a/b", "has space", "-lead", "x" * 129, 3.5])
def test_invalid_ids_are_rejected(node_id: Any) -> None:
    _rejects({"nodes": [{"id": node_id}]}, "nodes[0].id")


def test_empty_plan_is_rejected() -> None:
    _rejects({"nodes": []}, "nodes")
    with pytest.raises(InvalidRequest) as info:
        validate_plan(Plan(nodes=()))
    assert info.value.field == "nodes"


def test_node_limit_accepts_the_limit_and_rejects_one_more() -> None:
    nodes = tuple(PlanNode(id=f"n{i}") for i in range(MAX_PLAN_NODES))
    started = time.perf_counter()
    assert len(validate_plan(Plan(nodes=nodes)).nodes) == MAX_PLAN_NODES
    assert time.perf_counter() - started < 2.0  # measured ~0.1 s; guards against quadratic code
    with pytest.raises(InvalidRequest) as info:
        validate_plan(Plan(nodes=(*nodes, PlanNode(id="one-more"))))
    assert info.value.field == "nodes"
    assert str(MAX_PLAN_NODES) in info.value.message


def test_payload_must_be_json() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan("nodes:\n  - id: a\n    payload: {when: 2024-01-01}\n")
    assert info.value.field == "nodes[0].payload"
    assert "not JSON" in info.value.message
    _rejects({"nodes": [{"id": "a", "payload": [1]}]}, "nodes[0].payload", "object")


def test_yaml_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 20)]
    text = "nodes:\n  - id: a\n    payload:\n" + "\n".join("      " + line for line in lines)
    started = time.perf_counter()
    with pytest.raises(InvalidRequest) as info:
        parse_plan(text)
    assert info.value.field == "nodes[0].payload"
    assert time.perf_counter() - started < 2.0


def test_metadata_values_must_be_strings() -> None:
    _rejects({"nodes": [{"id": "a", "metadata": {"est": {"x": 1}}}]}, "nodes[0].metadata.est")


def test_validate_plan_returns_a_normalised_copy_and_leaves_the_input_alone() -> None:
    raw = Plan(
        nodes=(PlanNode(id="a", claims=("./src//a.ts",)), PlanNode(id="b", title="B")),
        edges=(("a", "b"), ("a", "b")),
    )
    checked = validate_plan(raw)
    assert checked.nodes[0].claims == ("src/a.ts",)
    assert checked.nodes[0].title == "a"
    assert checked.edges == (("a", "b"),)
    assert raw.nodes[0].claims == ("./src//a.ts",)


def test_validate_plan_converts_mode_and_policy_strings() -> None:
    raw: Any = Plan(nodes=(PlanNode(id="a", mode="read"),), failure_policy="continue")  # type: ignore[arg-type]
    checked = validate_plan(raw)
    assert checked.nodes[0].mode is LockMode.READ
    assert checked.failure_policy is FailurePolicy.CONTINUE


# --- plan helpers and round trips ----------------------------------------------------------


def test_plan_helpers_answer_dependencies_and_dependents() -> None:
    plan = _json({"nodes": [{"id": "a"}, {"id": "b"}, {"id": "c", "depends_on": ["a", "b"]}]})
    assert plan.node("c").id == "c"
    assert plan.dependencies("c") == ("a", "b")
    assert plan.dependents("a") == ("c",)
    assert plan.dependencies("a") == ()
    assert plan.position("b") == 1
    with pytest.raises(NotFound):
        plan.node("zzz")
    with pytest.raises(NotFound):
        plan.dependencies("zzz")


def test_plan_to_dict_round_trips_through_json_and_yaml() -> None:
    plan = _json(
        {
            "name": "rt",
            "concurrency": 9,
            "failure_policy": "continue",
            "repo": "r",
            "nodes": [
                {"id": "a", "payload": {"deep": {"list": [1, "x"]}}, "claims": ["src"]},
                {"id": "b", "mode": "read", "priority": -2, "metadata": {"k": "v"}},
            ],
            "edges": [["a", "b"]],
        }
    )
    data = plan_to_dict(plan)
    assert parse_plan(json.dumps(data)) == plan
    assert parse_plan(yaml.safe_dump(data)) == plan
    data["nodes"][0]["payload"]["deep"]["list"].append(2)
    assert plan.nodes[0].payload == {"deep": {"list": [1, "x"]}}  # the dict is a copy
    assert all(set(node) == {f.name for f in fields(PlanNode)} for node in data["nodes"])


def test_markdown_plan_round_trips_through_plan_to_dict() -> None:
    plan = parse_plan(FIXTURE.read_text())
    assert parse_plan(json.dumps(plan_to_dict(plan))) == plan


# --- Markdown edge cases -------------------------------------------------------------------


def test_markdown_headers_tolerate_case_spaces_backticks_and_unknown_columns() -> None:
    text = (
        "|  `ISSUE`  | Owner |   title  | depends   on | EST. TOKENS | Notes |\n"
        "| :--- | --- | :---: | ---: | --- | --- |\n"
        "|   `#1`   | @me |  First   thing  |   | 5k | anything |\n"
        "| #2 | @you | Second | `#1` | 6k | |\n"
    )
    plan = parse_plan(text)
    first, second = plan.nodes
    assert (first.id, first.title, first.metadata) == ("1", "First thing", {"est_tokens": "5k"})
    assert second.payload == {"issue_ref": "#2", "title": "Second"}
    assert plan.edges == (("1", "2"),)


@pytest.mark.parametrize("empty", ["", "\u2014", "\u2013", "-", "none", "None", "N/A", "`\u2014`"])
def test_markdown_empty_dependency_markers_mean_no_dependencies(empty: str) -> None:
    plan = parse_plan(_table(f"| #1 | One | {empty} |", "| #2 | Two | #1 |"))
    assert plan.edges == (("1", "2"),)


def test_markdown_dependency_lists_accept_commas_spaces_and_bare_numbers() -> None:
    rows = ["| #1 | a | |", "| #2 | b | |", "| #3 | c | |", "| #4 | d | #1, #2 and 3 |"]
    plan = parse_plan(_table(*rows))
    assert plan.dependencies("4") == ("1", "2", "3")


def test_markdown_reference_to_a_missing_issue_is_a_clear_error() -> None:
    text = _table("| #1 | One | — |", "| #2 | Two | #1, #999 |")
    with pytest.raises(InvalidRequest) as info:
        parse_plan(text)
    assert info.value.field == "nodes[1].depends_on"
    assert "#2" in info.value.message
    assert "#999" in info.value.message
    assert "not in the table" in info.value.message
    assert "line 4" in info.value.message


def test_markdown_uses_the_first_table_with_an_issue_column() -> None:
    text = (
        "Intro prose | with a pipe.\n\n"
        "| Phase | Goal |\n|---|---|\n| Core | things |\n\n"
        "```\n| Issue | Title |\n|---|---|\n| #50 | fenced, ignored |\n```\n\n"
        + _table("| #10 | Ten | |")
        + "\n| Issue | Title |\n|---|---|\n| #20 | second table |\n"
    )
    assert [node.id for node in parse_plan(text).nodes] == ["10"]


def test_markdown_without_an_issue_table_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan("| Phase | Goal |\n|---|---|\n| a | b |\n", format="markdown")
    assert info.value.field == "body"
    assert "Issue column" in info.value.message


def test_markdown_duplicate_issue_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan(_table("| #1 | One | |", "| #1 | Again | |"))
    assert info.value.field == "nodes[1].id"


def test_markdown_row_without_an_issue_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan(_table("| #1 | One | |", "|  | Nameless | |"))
    assert info.value.field == "nodes[1].id"
    assert "line 4" in info.value.message


def test_markdown_priorities_map_and_keep_the_raw_label() -> None:
    header = "| Issue | Priority |"
    rows = ["| #1 | High |", "| #2 | medium |", "| #3 | 7 |", "| #4 | |"]
    text = "\n".join([header, "|---|---|", *rows])
    plan = parse_plan(text)
    assert [node.priority for node in plan.nodes] == [90, 80, 7, 0]
    assert plan.nodes[0].metadata == {"priority": "High"}
    assert plan.nodes[3].metadata == {}


def test_markdown_unknown_priority_is_rejected_at_its_row() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan("| Issue | Priority |\n|---|---|\n| #1 | P1 |\n| #2 | whenever |\n")
    assert info.value.field == "nodes[1].priority"


def test_markdown_optional_columns_set_type_claims_mode_and_agent() -> None:
    text = (
        "| Issue | Type | Claims | Mode | Agent |\n|---|---|---|---|---|\n"
        "| #1 | agent | `src/api/**`, `./docs/api.md` | read | backend |\n"
        "| #2 | | | | |\n"
    )
    first, second = parse_plan(text).nodes
    assert (first.job_type, first.mode, first.agent_profile) == ("agent", LockMode.READ, "backend")
    assert first.claims == ("src/api/**", "docs/api.md")
    assert (second.job_type, second.mode, second.claims, second.title) == (
        "noop",
        LockMode.WRITE,
        (),
        "#2",
    )


def test_markdown_short_rows_are_padded_and_escaped_pipes_kept() -> None:
    text = "| Issue | Title | Depends On |\n|---|---|---|\n| #1 | a \\| b |\n| #2 |\n"
    plan = parse_plan(text)
    assert plan.nodes[0].title == "a | b"
    assert plan.nodes[1].title == "#2"
    assert plan.edges == ()


def test_fixture_parses_into_eighteen_issues_with_their_dependencies() -> None:
    plan = parse_plan(FIXTURE.read_text())
    assert plan.name == "Milestone 3: Storefront MVP"
    assert [node.id for node in plan.nodes] == [str(n) for n in range(201, 219)]
    deps = {
        "202": {"201"},
        "203": {"201"},
        "204": {"202"},
        "205": {"202"},
        "206": {"201"},
        "207": {"203"},
        "208": {"204", "207"},
        "209": {"205", "207"},
        "210": {"205", "206", "207"},
        "211": {"204", "205"},
        "212": {"211", "207"},
        "213": {"211"},
        "214": {"213", "204"},
        "215": {"205", "206", "208"},
        "217": {"209", "210", "212", "213"},
        "218": {"214", "215", "216", "217"},
    }
    assert {(frm, to) for frm, to in plan.edges} == {(d, n) for n, ds in deps.items() for d in ds}
    assert len(plan.edges) == sum(len(ds) for ds in deps.values())
    assert plan.dependencies("201") == ()
    assert plan.dependencies("216") == ()
    checkout = plan.node("213")
    assert checkout.title == "Stripe checkout session and payment webhooks"
    assert checkout.priority == 100
    assert checkout.metadata == {
        "phase": "Checkout",
        "priority": "P0",
        "model": "opus",
        "est_tokens": "80k",
    }
    assert all(node.job_type == "noop" and "owner" not in node.metadata for node in plan.nodes)
