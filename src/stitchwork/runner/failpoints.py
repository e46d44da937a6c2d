"""Fail points: named places where a crash test makes this process die, to prove recovery.

``STITCHWORK_FAILPOINTS="merge.swapped=0.3,land.committed=1"`` makes the process SIGKILL
itself when it reaches ``merge.swapped`` (with probability 0.3) or ``land.committed``
(always): exactly what a SIGKILL from outside at that moment does, but at a moment an outside
signal would rarely hit. The crash harness (``tests/e2e/test_agent_crash.py``) uses them;
unset, as everywhere else, a fail point costs one dictionary lookup.

Points: ``gate.started`` (a gate's step began), ``land.committed`` (the task's commit is on its
branch, nothing merged), ``merge.locked`` (the repository's merge lock is held, nothing merged)
and ``merge.swapped`` (the target branch moved, the job's state not yet recorded).
"""

from __future__ import annotations

import functools
import os
import random
import signal

ENV = "STITCHWORK_FAILPOINTS"


@functools.cache
def _points(spec: str) -> dict[str, float]:
    points: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, chance = item.partition("=")
        try:
            probability = float(chance or "1")
        except ValueError:
            raise ValueError(f"{ENV}: {item!r} is not name=probability") from None
        if not 0 <= probability <= 1:
            raise ValueError(f"{ENV}: the probability of {name!r} must be between 0 and 1")
        points[name.strip()] = probability
    return points


def failpoint(name: str) -> None:
    """Die here (SIGKILL, no clean-up of any kind) if ``STITCHWORK_FAILPOINTS`` says so."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    probability = _points(spec).get(name, 0.0)
    if probability and random.random() < probability:  # noqa: S311 - not for security
        os.kill(os.getpid(), signal.SIGKILL)
