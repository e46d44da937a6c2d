"""What a key may do (roles, extra scopes, job types) and which lock table a repository is."""

from __future__ import annotations

import uuid

import pytest

from stitchwork.errors import Forbidden, InvalidRequest
from stitchwork.services.auth import Principal, Role, Scope, allows, check_grants, submit_scope
from stitchwork.services.job_types import JobTypeCatalog
from stitchwork.storage.locks import MAX_LOCK_KEY, lock_key, lock_scope

JOB_TYPES = JobTypeCatalog().names
READS = {"jobs:read", "executions:read", "locks:read", "queues:read", "metrics:read"}
OPERATES = {"jobs:write", "executions:write", "locks:write"}
ADMIN_ONLY = {"queues:write", "metrics:all", "locks:global", "keys:admin"}


def test_the_scopes_are_the_documented_ones() -> None:
    assert {s.value for s in Scope} == READS | OPERATES | ADMIN_ONLY


@pytest.mark.parametrize("scope", sorted(READS | OPERATES | ADMIN_ONLY))
@pytest.mark.parametrize("role", list(Role))
def test_each_role_holds_exactly_its_fixed_scopes(role: Role, scope: str) -> None:
    expected = {
        Role.READER: READS,
        Role.OPERATOR: READS | OPERATES,
        Role.ADMIN: READS | OPERATES | ADMIN_ONLY,
    }[role]
    assert allows(role, (), scope) is (scope in expected)


@pytest.mark.parametrize("job_type", JOB_TYPES)
def test_an_operator_submits_every_job_type_but_shell(job_type: str) -> None:
    assert allows(Role.OPERATOR, (), submit_scope(job_type)) is (job_type != "shell")
    assert allows(Role.ADMIN, (), submit_scope(job_type))
    assert not allows(Role.READER, (), submit_scope(job_type))


def test_shell_needs_its_own_scope_even_beside_the_wildcard() -> None:
    assert not allows(Role.READER, ["jobs:submit:*"], "jobs:submit:shell")
    assert allows(Role.READER, ["jobs:submit:*"], "jobs:submit:noop")
    assert allows(Role.OPERATOR, ["jobs:submit:shell"], "jobs:submit:shell")
    assert allows(Role.READER, ["jobs:submit:shell"], "jobs:submit:shell")
    assert not allows(Role.READER, ["jobs:submit:shell"], "jobs:submit:noop")


def test_extra_scopes_add_to_the_role_and_never_widen_into_other_scopes() -> None:
    assert allows(Role.READER, ["locks:write"], "locks:write")
    assert not allows(Role.READER, ["locks:write"], "locks:global")
    assert not allows(Role.OPERATOR, ["jobs:submit:*"], "queues:write")


def test_a_principal_refuses_with_a_forbidden_naming_the_scope() -> None:
    principal = Principal(uuid.uuid4(), uuid.uuid4(), "ci", Role.READER)

    with pytest.raises(Forbidden) as refused:
        principal.require_submit("noop")

    assert refused.value.fields["required_scope"] == "jobs:submit:noop"
    assert "jobs:submit:noop" in refused.value.message
    principal.require(Scope.JOBS_READ)  # held: no error


def test_grants_are_checked_and_deduplicated() -> None:
    role, scopes = check_grants(
        "operator", ["jobs:submit:shell", "locks:global", "jobs:submit:shell"], job_types=JOB_TYPES
    )
    assert (role, scopes) == (Role.OPERATOR, ("jobs:submit:shell", "locks:global"))
    assert check_grants("reader", ["jobs:submit:*"]) == (Role.READER, ("jobs:submit:*",))


@pytest.mark.parametrize(
    ("role", "scopes", "message"),
    [
        ("root", [], "unknown role 'root'"),
        ("reader", ["jobs:admin"], "unknown scope 'jobs:admin'"),
        ("reader", ["jobs:submit:"], "unknown scope 'jobs:submit:'"),
        ("reader", ["jobs:submit:Bad Type"], "unknown scope"),
        ("reader", ["jobs:submit:deploy"], "unknown job type 'deploy'"),
    ],
)
def test_unknown_grants_are_refused_naming_them(role: str, scopes: list[str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_grants(role, scopes, job_types=JOB_TYPES)


# -- lock keys ----------------------------------------------------------------------------------


def test_a_name_is_its_workspaces_own_lock_table() -> None:
    alpha, beta = uuid.uuid4(), uuid.uuid4()

    assert lock_key(alpha, "shared-repo") != lock_key(beta, "shared-repo")
    assert lock_key(alpha, "shared-repo") == f"{alpha}:shared-repo"
    assert lock_scope(lock_key(beta, "a:b")) == (beta, "a:b")


def test_an_absolute_path_is_one_lock_table_for_every_workspace() -> None:
    alpha, beta = uuid.uuid4(), uuid.uuid4()

    assert lock_key(alpha, "/srv/shop") == lock_key(beta, "/srv/shop") == "/srv/shop"
    assert lock_scope("/srv/shop") == (None, "/srv/shop")


def test_a_name_too_long_for_the_table_is_refused() -> None:
    workspace = uuid.uuid4()
    longest = "x" * (MAX_LOCK_KEY - len(f"{workspace}:"))

    assert len(lock_key(workspace, longest)) == MAX_LOCK_KEY
    with pytest.raises(InvalidRequest, match="repository name longer than"):
        lock_key(workspace, longest + "x")
