"""Names and IDs of containers and networks, as Docker has them. Pure.

- A name follows Docker's rule ``[a-zA-Z0-9][a-zA-Z0-9_.-]*`` (so Compose's
  ``project_service_1`` and ``project_default`` are names).
- Every object has a 64-hex ID; a command takes a name, a full ID or a
  unique prefix of one (``resolve``).
- DNS answers a name as given, case-insensitively, and, where the name is
  not a DNS label (an underscore, a dot, more than 63 characters), also
  its DNS-safe form (``dns_safe``): lower case, ``_`` and ``.`` as ``-``.
- Generated names are ``adjective_surname``, like Docker's, from word lists
  of cove's own.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Container, Iterable

from cove.errors import Conflict, InvalidArgument, NotFound

NAME_RULE = "[a-zA-Z0-9][a-zA-Z0-9_.-]*"
_NAME = re.compile(rf"^{NAME_RULE}$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]+$")
MAX_NAME = 128
SHORT_ID = 12


def check_name(name: str, what: str) -> str:
    """``name`` if it follows Docker's rule; ``InvalidArgument`` naming the
    rule otherwise."""
    if len(name) > MAX_NAME:
        raise InvalidArgument(
            f"{what} name {name[:20]!r}... is {len(name)} characters; at most {MAX_NAME}",
            name=name,
        )
    if not _NAME.match(name):
        raise InvalidArgument(
            f"invalid {what} name {name!r}: a name starts with a letter or digit and holds"
            " only letters, digits, '_', '.' and '-'",
            name=name,
        )
    return name


def is_dns_label(name: str) -> bool:
    return bool(_LABEL.match(name))


def dns_safe(name: str) -> str:
    """The form of ``name`` that is one DNS label: lower case, ``_`` and
    ``.`` as ``-``, cut to 63 characters, no ``-`` at either end. Equal to
    ``name.lower()`` when that is a label already."""
    out = name.lower().replace("_", "-").replace(".", "-")[:63].strip("-")
    return out


def dns_names(name: str) -> tuple[str, ...]:
    """The names DNS answers for ``name``: as given (lower case, DNS is
    case-insensitive) and, if that is not a label, its DNS-safe form."""
    lower = name.lower()
    safe = dns_safe(name)
    return (lower,) if safe == lower or not safe else (lower, safe)


def is_full_id(text: str) -> bool:
    return bool(_HEX64.match(text))


def full_id(stored: str) -> str:
    """A 64-hex ID for a record written before IDs were 64 hex digits: the
    stored ID followed by a digest of it, so the old ID is a prefix of the
    new one (what a user copied before still finds it)."""
    if is_full_id(stored):
        return stored
    tail = hashlib.sha256(stored.encode()).hexdigest()
    base = stored.lower() if _HEX.match(stored.lower()) else ""
    return (base + tail)[:64]


def new_id() -> str:
    return secrets.token_hex(32)


def resolve(ref: str, items: Iterable[tuple[str, str]], what: str) -> str:
    """The name of the one object ``ref`` means, out of (name, id) pairs:
    an exact name, then a full ID, then a unique ID prefix. ``NotFound``
    when nothing matches; ``Conflict`` listing the matches when a prefix
    is ambiguous."""
    pairs = list(items)
    for name, _ in pairs:
        if name == ref:
            return name
    low = ref.lower()
    if _HEX.match(low):
        for name, oid in pairs:
            if oid == low:
                return name
        matches = sorted((oid, name) for name, oid in pairs if oid.startswith(low))
        if len(matches) == 1:
            return matches[0][1]
        if len(matches) > 1:
            listed = ", ".join(f"{oid[:SHORT_ID]} ({name})" for oid, name in matches[:10])
            raise Conflict(
                f"{what} ID prefix {ref!r} is ambiguous: it matches {listed};"
                " give more digits or the name",
                **{what: ref},
            )
    raise NotFound(f"{what} {ref} not found", **{what: ref})


_ADJECTIVES = (
    "amber", "ardent", "balmy", "bold", "brave", "breezy", "bright", "calm", "candid",
    "clever", "cosy", "crisp", "daring", "deft", "eager", "earnest", "fair", "fearless",
    "fervent", "fond", "frank", "gentle", "glad", "golden", "hardy", "hearty", "humble",
    "jolly", "keen", "kind", "lively", "lucid", "merry", "mellow", "mighty", "nimble",
    "noble", "patient", "placid", "plucky", "polite", "proud", "quick", "quiet", "rapid",
    "ready", "serene", "sharp", "shy", "silent", "sleek", "snug", "sober", "spry", "steady",
    "stoic", "sunny", "swift", "tender", "tidy", "upbeat", "vivid", "warm", "wise", "witty",
    "zealous",
)  # fmt: skip

# Scientists, engineers and explorers of the sea and sky.
_SURNAMES = (
    "agnesi", "ampere", "babbage", "banneker", "bell", "boole", "bose", "cannon", "carson",
    "cousteau", "curie", "darwin", "dirac", "earle", "euler", "faraday", "fermi", "franklin",
    "galois", "gauss", "germain", "goodall", "hamilton", "hertz", "hopper", "humboldt",
    "hypatia", "johnson", "kepler", "khayyam", "kovalevskaya", "lamarr", "leavitt",
    "lovelace", "maxwell", "meitner", "mendel", "mirzakhani", "nansen", "noether", "ohm",
    "pascal", "piccard", "planck", "raman", "ride", "sagan", "shackleton", "somerville",
    "tesla", "tharp", "turing", "volta", "wegener", "wu", "yalow",
)  # fmt: skip


def generate_name(taken: Container[str], choice: Callable[[int], int] = secrets.randbelow) -> str:
    """``adjective_surname`` not in ``taken``; a digit is appended after a
    few collisions, as Docker does."""
    for attempt in range(64):
        name = f"{_ADJECTIVES[choice(len(_ADJECTIVES))]}_{_SURNAMES[choice(len(_SURNAMES))]}"
        if attempt >= 8:
            name += str(choice(10))
        if name not in taken:
            return name
    raise Conflict("could not choose a free container name: give one with --name")
