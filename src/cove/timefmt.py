"""Times as Docker shows and takes them. Pure.

``rfc3339`` writes a Unix time the way ``docker inspect`` does (UTC, ``Z``);
``parse_time`` reads what ``--since``, ``--until`` and ``until=`` filters
take: a Go duration before now (``10m``, ``1h30m``), an RFC 3339 time or
date, or Unix seconds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from cove.errors import InvalidArgument

ZERO_TIME = "0001-01-01T00:00:00Z"
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def rfc3339(t: float | None) -> str:
    """``t`` (Unix seconds) in RFC 3339, UTC; Docker's zero time when unset."""
    if not t:
        return ZERO_TIME
    text = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def parse_duration(text: str) -> float | None:
    """A Go duration (``1h30m``, ``90s``, ``1.5h``) in seconds, or ``None``."""
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def parse_time(text: str, now: float) -> float:
    """Unix seconds for a duration before ``now``, an RFC 3339 time (or a
    date), or Unix seconds (``1700000000.5``). ``InvalidArgument`` naming
    the forms otherwise."""
    text = text.strip()
    d = parse_duration(text)
    if d is not None:
        return now - d
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"invalid time {text!r}: use a duration (10m, 1h30m), an RFC 3339 time"
            " (2024-01-02T15:04:05Z) or Unix seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
