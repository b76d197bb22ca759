"""Go-style durations, as Consul's JSON carries them ("10s", "1m30s", or
nanoseconds as a number)."""

from __future__ import annotations

import re
from typing import Any

from cove.errors import InvalidArgument

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a Go duration ("10s", "1m30s", "250ms") or a number of
    nanoseconds, as Consul accepts both. ``InvalidArgument`` otherwise."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: expected a duration, got {value!r}")
    unit = _UNIT.get(value[-1:])
    if unit is not None and value[:-1].isdigit() and value[:-1].isascii():
        return int(value[:-1]) * unit  # the common "10s", "1h", "30m"
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise InvalidArgument(f"{what}: invalid duration {value!r}")
    return sign * total


def format_duration(seconds: float) -> str:
    """A Go-style duration string ("10s", "1m30s", "500ms")."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    frac = seconds - whole
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "")
    sec = f"{s + frac:g}" if frac else str(s)
    return f"{out}{sec}s"
