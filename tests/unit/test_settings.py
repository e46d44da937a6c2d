"""Settings validation and defaults."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from stitchwork.config import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STITCHWORK_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("heartbeat_s", [30, 31])
def test_heartbeat_not_shorter_than_lease_is_refused(heartbeat_s: int) -> None:
    with pytest.raises(ValidationError, match=r"heartbeat_interval .* must be shorter than lease"):
        Settings(lease=timedelta(seconds=30), heartbeat_interval=timedelta(seconds=heartbeat_s))


def test_heartbeat_shorter_than_lease_is_accepted() -> None:
    settings = Settings(lease=timedelta(seconds=30), heartbeat_interval=timedelta(seconds=29))
    assert settings.heartbeat_interval < settings.lease


@pytest.mark.parametrize("name", ["lease", "heartbeat_interval", "sweep_interval", "poll_interval"])
@pytest.mark.parametrize("value", [timedelta(0), timedelta(seconds=-1)])
def test_non_positive_intervals_are_refused(name: str, value: timedelta) -> None:
    with pytest.raises(ValidationError, match="must be a positive duration"):
        Settings(**{name: value})


def test_default_database_is_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'stitchwork.db'}"
    assert settings.database_url.startswith("sqlite+aiosqlite:")
    assert settings.queue_url == "sql://"


def test_explicit_database_url_is_kept(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://u@db/x"
    settings = Settings(data_dir=tmp_path, database_url=url)
    assert settings.database_url == url
    assert not settings.database_url.startswith("sqlite")


def test_settings_read_prefixed_environment_with_iso_durations(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STITCHWORK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("STITCHWORK_LEASE", "PT1M")
    monkeypatch.setenv("STITCHWORK_HEARTBEAT_INTERVAL", "PT20S")
    monkeypatch.setenv("STITCHWORK_MAX_ATTEMPTS", "7")
    settings = Settings()
    assert settings.lease == timedelta(minutes=1)
    assert settings.heartbeat_interval == timedelta(seconds=20)
    assert settings.max_attempts == 7
    assert settings.database_url.endswith(f"{tmp_path}/stitchwork.db")


@pytest.mark.parametrize(("text", "seconds"), [("20", 20), ("2.5", 2.5), ("PT20S", 20)])
def test_durations_from_the_environment_accept_plain_seconds_or_iso(
    monkeypatch: pytest.MonkeyPatch, text: str, seconds: float
) -> None:
    monkeypatch.setenv("STITCHWORK_SWEEP_INTERVAL", text)
    assert Settings().sweep_interval == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 101),
        ("worker_concurrency", 0),
        ("backoff_jitter", 1.5),
        ("api_port", 70_000),
    ],
)
def test_out_of_range_numbers_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.lease = timedelta(seconds=1)  # type: ignore[misc]


def test_unrouted_job_types_go_to_the_default_queue() -> None:
    settings = Settings(queue_routes={"shell": "slow"})
    assert settings.queue_for("shell") == "slow"
    assert settings.queue_for("noop") == "default"


@pytest.mark.parametrize("field", ["shutdown_grace", "cancel_grace", "backoff_base", "backoff_max"])
def test_negative_grace_and_backoff_durations_are_refused(field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(**{field: -1})

    assert field in str(raised.value)
    assert "must not be negative" in str(raised.value)
