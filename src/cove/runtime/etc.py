"""A container's /etc/hosts, /etc/hostname and /etc/resolv.conf (rendering
is pure; writing keeps the inode, because the files are bind-mounted into
the running container and a rename would leave it the old copy)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cove.model import IPAddress


def hosts(
    hostname: str,
    name: str,
    addresses: Sequence[IPAddress],
    extra: Sequence[tuple[str, str]] = (),
) -> str:
    """``extra``: (name, address) lines of ``--add-host``, after the rest."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    names = " ".join(dict.fromkeys(n for n in (hostname, name) if n))
    lines.extend(f"{a}\t{names}" for a in addresses)
    if not addresses:
        lines.append(f"127.0.1.1\t{names}")
    lines.extend(f"{address}\t{host}" for host, address in extra)
    return "\n".join(lines) + "\n"


def resolv_conf(nameservers: Sequence[IPAddress], host_resolv: str) -> str:
    """Point at the first network's gateway (the agent's DNS); a container
    on no network keeps the host's resolvers."""
    if not nameservers:
        return host_resolv
    body = "".join(f"nameserver {ns}\n" for ns in nameservers)
    return body + "options ndots:0\n"


def write_in_place(path: Path, content: str) -> bool:
    """Write ``content`` without replacing the inode; False if unchanged.

    Overwritten, then cut to size, rather than emptied first: a reader in
    the container never finds the file empty (a shorter text is padded with
    blank lines until the cut), and truncating a file to zero costs ext4
    about 0.3 ms, twenty times the write."""
    data = content.encode()
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        old = b""
    if old == data:
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data.ljust(len(old), b"\n"), 0)
        if len(old) > len(data):
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return True
