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


# -- nanoseconds: `cove logs -t`, `--since`, `--until` -------------------------

_NS = 1_000_000_000
_GO_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS_NS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": _NS,
    "m": 60 * _NS, "h": 3600 * _NS,
}  # fmt: skip
_UNIX = re.compile(r"([0-9]+)(?:\.([0-9]*))?")
_FRACTION = re.compile(r"(T[0-9]{2}:[0-9]{2}:[0-9]{2})[.,]([0-9]+)")
_DATE_ZONE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})([zZ]|[+-][0-9]{2}:?[0-9]{2})")
TIME_FORMS = (
    "an RFC 3339 time (2026-12-06T15:04:05Z, 2026-12-06T15:04:05.5+01:00, or without"
    " a zone: local time), a date (2026-12-06), Unix seconds (1796569445 or"
    " 1796569445.000000001) or a duration before now (10m, 1h30m, 90s)"
)


def rfc3339_nano(ns: int) -> str:
    """``ns`` (Unix nanoseconds) as ``docker logs -t`` shows it: UTC, nine
    digits always (so the strings sort as the times do)."""
    sec, frac = divmod(ns, _NS)
    base = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def parse_go_duration_ns(text: str) -> int | None:
    """A Go duration (``1h30m``, ``-90s``, ``1.5h``, ``0``) in nanoseconds,
    or ``None`` when ``text`` is not one."""
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    pos = 0
    total = 0
    for m in _GO_DURATION.finditer(text):
        if m.start() != pos:
            return None
        whole, _, frac = m.group(1).partition(".")
        unit = _GO_UNITS_NS[m.group(2)]
        total += int(whole or "0") * unit
        if frac:
            total += int(frac) * unit // 10 ** len(frac)
        pos = m.end()
    return sign * total if pos == len(text) and pos > 0 else None


def parse_time_ns(text: str, now_ns: int, flag: str = "time") -> int:
    """Unix nanoseconds for what ``docker logs --since/--until`` take: a Go
    duration before ``now_ns``, Unix seconds (with up to nine decimals), or
    an RFC 3339 time or date (local time when it names no zone, as Docker).
    ``InvalidArgument`` naming ``flag`` and the accepted forms otherwise."""
    value = text.strip()
    d = parse_go_duration_ns(value)
    if d is not None:
        return now_ns - d
    m = _UNIX.fullmatch(value)
    if m is not None:
        frac = (m.group(2) or "")[:9].ljust(9, "0")
        return int(m.group(1)) * _NS + int(frac)
    extra = 0
    f = _FRACTION.search(value)
    if f is not None:
        digits = f.group(2)[:9].ljust(9, "0")
        extra = int(digits)
        value = value[: f.start()] + f.group(1) + value[f.end() :]
    z = _DATE_ZONE.fullmatch(value)
    if z is not None:
        value = f"{z.group(1)}T00:00{z.group(2)}"
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"invalid {flag} {text!r}: use {TIME_FORMS}") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time, as Docker reads a time without a zone
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000 + extra
