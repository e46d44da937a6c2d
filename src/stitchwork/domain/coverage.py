"""Coverage totals from the reports gates write: Cobertura XML or coverage.py JSON."""

from __future__ import annotations

import json
import math
from pathlib import PurePosixPath
from xml.etree import ElementTree


class UnreadableCoverageReport(ValueError):
    """A coverage report in an unknown format, malformed, or without a total in 0-100."""


def parse_coverage(text: str, *, filename: str) -> float:
    """The total line coverage in percent from a Cobertura XML or coverage.py JSON report.

    Args:
        text: the report's contents.
        filename: the report's name; its suffix (``.xml`` or ``.json``) selects the format.

    Raises:
        UnreadableCoverageReport: unknown format, malformed report, or no total in 0-100.
    """
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix == ".xml":
        # The report comes from the agent's worktree, so it is untrusted: entity declarations
        # ("billion laughs") are refused, and expat never fetches a DOCTYPE's external DTD.
        if "<!entity" in text.lower():
            raise UnreadableCoverageReport(f"{filename}: XML entity declarations are refused")
        try:
            root = ElementTree.fromstring(text)  # noqa: S314 -- entities refused just above
            percent = float(root.get("line-rate", "")) * 100 if root.tag == "coverage" else None
        except (ElementTree.ParseError, ValueError) as exc:
            raise UnreadableCoverageReport(f"{filename}: not a Cobertura report: {exc}") from None
        if percent is None:
            raise UnreadableCoverageReport(f"{filename}: the root element is not <coverage>")
    elif suffix == ".json":
        try:
            percent = json.loads(text)["totals"]["percent_covered"]
        except (ValueError, TypeError, KeyError) as exc:
            message = f"{filename}: not a coverage.py JSON report (totals.percent_covered): {exc}"
            raise UnreadableCoverageReport(message) from None
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise UnreadableCoverageReport(f"{filename}: percent_covered is not a number")
    else:
        raise UnreadableCoverageReport(
            f"{filename}: unknown format; use Cobertura XML (.xml) or coverage.py JSON (.json)"
        )
    if not (math.isfinite(percent) and 0 <= percent <= 100):
        raise UnreadableCoverageReport(f"{filename}: total coverage {percent!r}% is not 0-100")
    return float(percent)
