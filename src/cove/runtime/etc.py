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


def host_hosts(host: str, extra: Sequence[tuple[str, str]] = ()) -> str:
    """A ``--network host`` container's /etc/hosts: the host's, then its
    ``--add-host`` lines (Docker's); localhost alone if the host has none."""
    text = host if host.strip() else "127.0.0.1\tlocalhost\n::1\tlocalhost\n"
    if not text.endswith("\n"):
        text += "\n"
    return text + "".join(f"{address}\t{name}\n" for name, address in extra)


def resolv_conf(
    nameservers: Sequence[IPAddress],
    host_resolv: str,
    dns: Sequence[str] = (),
    search: Sequence[str] = (),
    options: Sequence[str] = (),
) -> str:
    """Point at the first network's gateway (the agent's DNS); a container
    on no network keeps the host's resolvers.

    ``dns``, ``search`` and ``options`` are ``--dns``, ``--dns-search`` and
    ``--dns-option`` as Docker has them: each replaces its part (servers,
    ``search``, ``options``) and leaves the rest as it would have been; a
    search of ``.`` alone means none."""
    if not (dns or search or options):
        if not nameservers:
            return host_resolv
        body = "".join(f"nameserver {ns}\n" for ns in nameservers)
        return body + "options ndots:0\n"
    host_servers, host_search, host_options = _parse_resolv(host_resolv)
    if nameservers:
        host_servers = [str(ns) for ns in nameservers]
        host_search, host_options = [], ["ndots:0"]
    servers = list(dns) or host_servers
    domains = [d for d in search if d != "."] if search else host_search
    opts = list(options) or host_options
    lines = [f"nameserver {ns}" for ns in servers]
    if domains:
        lines.append("search " + " ".join(domains))
    if opts:
        lines.append("options " + " ".join(opts))
    return "\n".join(lines) + "\n"


def _parse_resolv(text: str) -> tuple[list[str], list[str], list[str]]:
    """Nameservers, search domains and options of a resolv.conf text."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = words[1:]
        elif words[0] == "options":
            options.extend(words[1:])
    return servers, search, options


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
