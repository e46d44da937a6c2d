"""The event tailer: brings events committed by other processes into this process's bus.

It is the database-tail relay's loop and lives with the other relays in ``bus/relay.py``
(``DbTailRelay``, the default ``bus_url``); re-exported here for existing callers.
"""

from __future__ import annotations

from stitchwork.bus.relay import LOOKBACK_IDS, PAGE, EventTailer

__all__ = ["LOOKBACK_IDS", "PAGE", "EventTailer"]
