"""Timestamps as fixed-width ISO-8601 UTC strings.

The embedded nx-27017 server returns a datetime written through ``$set`` as a string in
another format and compares mixed types loosely, so every stored timestamp is this one
string form: it sorts and compares correctly as text on both nx-27017 and MongoDB.
"""

from __future__ import annotations

import datetime as dt


def to_iso(when: dt.datetime) -> str:
    """Format an aware datetime as a fixed-width UTC ISO string."""
    return when.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def now_iso(offset_s: float = 0.0) -> str:
    """Return the current time (plus an offset in seconds) as a fixed-width UTC ISO string."""
    return to_iso(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_s))
