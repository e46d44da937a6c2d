"""Payload validation: bad input is refused with the field it concerns, before any I/O."""

from __future__ import annotations

from typing import Any

import pytest

from stitchwork.errors import InvalidRequest
from stitchwork.services.job_types import JobTypeCatalog


@pytest.fixture
def catalog() -> JobTypeCatalog:
    return JobTypeCatalog()


def test_unknown_type_names_the_type_field_and_lists_known_types(catalog: JobTypeCatalog) -> None:
    with pytest.raises(InvalidRequest) as info:
        catalog.validate("deploy", {})
    assert info.value.field == "type"
    assert "unknown job type 'deploy'" in info.value.message
    assert "known types: agent-review, agent-task, emit, noop, shell, sleep" in info.value.message


@pytest.mark.parametrize(
    ("payload", "field", "needle"),
    [
        ({}, "payload.command", "Field required"),
        ({"command": ""}, "payload.command", "non-empty command"),
        ({"command": "   "}, "payload.command", "non-empty command"),
        ({"command": []}, "payload.command", "non-empty command"),
        ({"command": ["ls", ""]}, "payload.command", "non-empty command"),
        ({"command": 5}, "payload.command", "valid"),
        ({"command": "ls", "timeout_s": 0}, "payload.timeout_s", "greater than 0"),
        ({"command": "ls", "timeout_s": 86_401}, "payload.timeout_s", "less than or equal"),
        ({"command": "ls", "env": {"A": 1}}, "payload.env.A", "valid string"),
        ({"command": "ls", "output_tail_chars": -1}, "payload.output_tail_chars", "greater"),
        ({"command": "ls", "shell": True}, "payload.shell", "Extra inputs"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_bad_shell_payload_names_the_offending_field(
    catalog: JobTypeCatalog, payload: dict[str, Any], field: str, needle: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        catalog.validate("shell", payload)
    assert info.value.field == field
    assert info.value.message.startswith(f"{field}: ")
    assert needle in info.value.message


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"seconds": -1}, "payload.seconds"),
        ({"seconds": "soon"}, "payload.seconds"),
        ({"progress_steps": 101}, "payload.progress_steps"),
        ({"fail_attempts": -1}, "payload.fail_attempts"),
        ({"nap": 1}, "payload.nap"),
    ],
)
def test_bad_sleep_payload_names_the_offending_field(
    catalog: JobTypeCatalog, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        catalog.validate("sleep", payload)
    assert info.value.field == field


def test_valid_payload_is_normalised_without_adding_defaults(catalog: JobTypeCatalog) -> None:
    assert catalog.validate("shell", {"command": "ls"}) == {"command": "ls"}
    assert catalog.validate("shell", {"command": ["echo", "hi"], "timeout_s": 2}) == {
        "command": ["echo", "hi"],
        "timeout_s": 2.0,
    }
    assert catalog.validate("sleep", {"seconds": "1.5"}) == {"seconds": 1.5}


def test_noop_accepts_any_payload(catalog: JobTypeCatalog) -> None:
    assert catalog.validate("noop", {"anything": [1, 2]}) == {"anything": [1, 2]}


def test_catalog_knows_the_builtin_types(catalog: JobTypeCatalog) -> None:
    assert catalog.names == ["agent-review", "agent-task", "emit", "noop", "shell", "sleep"]
    assert "shell" in catalog
    assert "deploy" not in catalog
