"""Image references as Docker writes them (pure): ``nginx``,
``nginx:1.25``, ``registry:5000/team/app@sha256:...``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cove.errors import InvalidArgument

DEFAULT_REGISTRY = "docker.io"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_REGISTRY = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Reference:
    """``registry/path[:tag][@digest]``; ``registry`` empty when the user
    named none (``nginx``), so a loaded ``nginx:latest`` matches it."""

    registry: str
    path: str
    tag: str = "latest"
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.path}" if self.registry else self.path

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag}"

    def remote(self) -> str:
        """The reference to pull: Docker Hub's when no registry is named."""
        registry = self.registry or DEFAULT_REGISTRY
        path = self.path
        if registry == DEFAULT_REGISTRY and "/" not in path:
            path = f"library/{path}"
        ref = f"{registry}/{path}"
        return f"{ref}@{self.digest}" if self.digest else f"{ref}:{self.tag}"

    def candidates(self) -> tuple[str, ...]:
        """The stored names this reference may mean, most exact first:
        ``nginx`` is ``nginx:latest`` as loaded, or as pulled from Docker
        Hub or built by podman (``localhost/``)."""
        own = str(self)
        if self.registry:
            return (own,)
        tail = f"@{self.digest}" if self.digest else f":{self.tag}"
        lib = f"library/{self.path}" if "/" not in self.path else self.path
        return (
            own,
            f"{DEFAULT_REGISTRY}/{lib}{tail}",
            f"{DEFAULT_REGISTRY}/{self.path}{tail}",
            f"localhost/{self.path}{tail}",
        )


def parse(text: str) -> Reference:
    """Raises ``InvalidArgument`` naming what is wrong."""
    if not text or len(text) > 512 or text != text.strip():
        raise InvalidArgument(f"invalid image reference {text!r}")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise InvalidArgument(f"invalid image reference {text!r}: bad digest {digest!r}")
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidArgument(f"invalid image reference {text!r}: bad tag {tag!r}")
    parts = rest.split("/")
    registry = ""
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry = parts.pop(0)
        if not _REGISTRY.match(registry):
            raise InvalidArgument(f"invalid image reference {text!r}: bad registry {registry!r}")
    if not parts or not all(_COMPONENT.match(p) for p in parts):
        raise InvalidArgument(
            f"invalid image reference {text!r}: names are lower case letters, digits and . _ -"
        )
    return Reference(registry, "/".join(parts), tag or "latest", digest)
