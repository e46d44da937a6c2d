"""How CLI commands reach a running server: URL and key from settings or the credentials file
that ``stitchwork serve`` writes on first start."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from stitchwork.cli.output import fail
from stitchwork.config import Settings


@dataclass(frozen=True)
class Credentials:
    api_url: str
    api_key: str
    workspace: str = "default"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(
                {"api_url": self.api_url, "api_key": self.api_key, "workspace": self.workspace},
                fh,
            )
        tmp.replace(path)  # never a half-written credentials file

    @classmethod
    def load(cls, path: Path) -> Credentials | None:
        try:
            data = json.loads(path.read_text())
            return cls(data["api_url"], data["api_key"], data.get("workspace", "default"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def resolve(settings: Settings) -> Credentials:
    stored = Credentials.load(settings.credentials_path)
    url = settings.api_url or (stored.api_url if stored else "")
    key = settings.api_key or (stored.api_key if stored else "")
    if not url:
        url = f"http://{settings.api_host}:{settings.api_port}"
    if not key:
        fail(
            "no API key: run `stitchwork serve` once (it creates one and stores it in "
            f"{settings.credentials_path}), or set STITCHWORK_API_KEY"
        )
    return Credentials(url.rstrip("/"), key)


class Api:
    """A thin synchronous client; every error becomes a one-line message and exit code 1."""

    def __init__(self, creds: Credentials, timeout_s: float = 10.0) -> None:
        self.creds = creds
        self.http = httpx.Client(
            base_url=f"{creds.api_url}/api/v1",
            headers={"Authorization": f"Bearer {creds.api_key}"},
            timeout=timeout_s,
        )

    def request(self, method: str, path: str, *, wait_s: float = 0, **kwargs: Any) -> Any:
        """Send a request; with ``wait_s``, keep trying that long while the API is unreachable
        (it may be restarting)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
                break
            except httpx.ConnectError:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                fail(
                    f"cannot reach stitchwork at {self.creds.api_url}: "
                    "is `stitchwork serve` running?"
                )
            except httpx.HTTPError as exc:
                fail(f"request to {self.creds.api_url} failed: {exc}")
        self.raise_for_problem(response)
        return response.json()

    def raise_for_problem(self, response: httpx.Response) -> None:
        """End the command with the API's problem detail if the response is an error."""
        if response.status_code < 400:
            return
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        fail(f"{response.status_code}: {detail}")


def api_from(settings: Settings) -> Api:
    return Api(resolve(settings))
