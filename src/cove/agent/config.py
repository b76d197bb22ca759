"""Agent settings: defaults, then a TOML config file, then the environment
(``COVE_STATE_DIR``, ``COVE_SOCKET``), then command-line flags."""

from __future__ import annotations

import grp
import ipaddress
import os
import socket as socketlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cove.errors import InvalidArgument
from cove.timefmt import parse_duration

DEFAULT_STATE_DIR = Path("/var/lib/cove")
DEFAULT_SOCKET = Path("/run/cove/agent.sock")


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT``."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise InvalidArgument(f"invalid {what} address {text!r}: expected ADDR:PORT") from None
    if not sep or not 0 <= number <= 65535:
        raise InvalidArgument(f"invalid {what} address {text!r}: expected ADDR:PORT")
    return host, number


@dataclass(frozen=True, slots=True)
class AgentConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    socket: Path = DEFAULT_SOCKET
    http: tuple[str, int] | None = ("127.0.0.1", 8500)
    store: str = ""  # empty: sqlite:<state_dir>/state.db
    dns: tuple[str, int] | None = ("127.0.0.1", 8600)
    dns_domain: str = "cove"
    dns_ttl: int = 0
    upstreams: tuple[str, ...] | None = None  # None: from /etc/resolv.conf
    resolv_conf: Path = Path("/etc/resolv.conf")
    node_name: str = field(default_factory=socketlib.gethostname)
    advertise: str | None = None  # None: found at start (see cove.cluster.advertise)
    node_ttl: int = 10  # seconds a dead agent's node stays alive
    # Seconds after which a dead node is removed with all it owned (Consul's
    # reconnect_timeout); None: never (cove members rm removes by hand).
    reap_after: float | None = None
    datacenter: str = "dc1"
    log_level: str = "info"
    log_file: Path | None = None
    reconcile_interval: float = 15.0
    vxlan_port: int = 4789  # UDP port of overlay networks' VXLAN devices
    enable_script_checks: bool = False
    vip_ranges: tuple[str, ...] = ("10.96.0.0/16",)
    config_file: Path | None = None  # where these came from: hidden from containers
    # Consul's ACL system on /v1 (and the token gate of the native API).
    acl_enabled: bool = False
    acl_default_policy: str = "allow"
    acl_initial_management: str | None = None
    socket_group: str | None = None  # None: the socket is root's alone (0600)
    http_allowed_hosts: tuple[str, ...] = ()  # names a Host header may carry besides addresses
    # TCP/TLS connections at once; 0: sized from the open-file limit.
    http_max_conns: int = 0
    http_max_conns_per_client: int = 200  # per client IP address (Consul's default); 0: no cap
    https: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_verify_incoming: bool = False
    # etcd over TLS (etcds://): the members' CA, this agent's client cert/key.
    store_ca: Path | None = None
    store_cert: Path | None = None
    store_key: Path | None = None
    store_timeout: float = 5.0  # seconds a store request may retry before a 503
    # CNI: the directory whose cove conflists the agent keeps in sync with
    # its networks (e.g. /etc/cni/net.d); None: off.
    cni_conf_dir: Path | None = None

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:{self.state_dir / 'state.db'}"

    @property
    def run_dir(self) -> Path:
        """Runtime files (container namespaces, supervisor socket)."""
        return self.state_dir / "run"


def load(
    flags: Mapping[str, Any], config_file: Path | None, environ: Mapping[str, str]
) -> AgentConfig:
    """Merge the sources; ``flags`` holds only the flags that were given."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values.update(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"cannot read config file {config_file}: {exc}") from exc
    if "COVE_STATE_DIR" in environ:
        values["state_dir"] = environ["COVE_STATE_DIR"]
    if "COVE_SOCKET" in environ:
        values["socket"] = environ["COVE_SOCKET"]
    values.update({k: v for k, v in flags.items() if v is not None})
    known = {f.name for f in fields(AgentConfig)} - {"config_file"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidArgument(f"unknown config setting(s): {', '.join(unknown)}")
    return _coerce(replace(AgentConfig(), config_file=config_file, **values))


def _coerce(cfg: AgentConfig) -> AgentConfig:
    http = cfg.http
    if isinstance(http, str):
        http = None if http in ("", "off") else parse_hostport(http, "http")
    dns = cfg.dns
    if isinstance(dns, str):
        dns = None if dns in ("", "off") else parse_hostport(dns, "dns")
    upstreams = cfg.upstreams
    if upstreams is not None:
        upstreams = tuple(str(u) for u in upstreams)
        for u in upstreams:
            _check_upstream(u)
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise InvalidArgument(f"invalid log level {cfg.log_level!r}")
    _check_acl(cfg)
    https = cfg.https
    if isinstance(https, str):
        https = None if https in ("", "off") else parse_hostport(https, "https")
    if cfg.socket_group is not None:
        socket_gid(str(cfg.socket_group))
    hosts = cfg.http_allowed_hosts
    if isinstance(hosts, str):
        hosts = (hosts,)
    hosts = tuple(str(h).lower() for h in hosts)
    for h in hosts:
        if not h or any(c in h for c in ":/[] \t"):
            raise InvalidArgument(
                f"invalid --http-allowed-host {h!r}: expected a host name without a port"
            )
    for name in ("http_max_conns", "http_max_conns_per_client"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"invalid {name} {value!r}: expected a whole number, 0 or more")
    port = cfg.vxlan_port
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgument(f"invalid vxlan_port {port!r}: expected a UDP port, 1 to 65535")
    name = cfg.node_name
    if not isinstance(name, str) or not name or "/" in name or name.strip() != name:
        # One segment of store keys (containers/<node>/, endpoints/<net>/<node>/).
        raise InvalidArgument(
            f"invalid node name {name!r}: expected a name without '/' or spaces"
            " (--node-name; the default is the host name)"
        )
    node_ttl = cfg.node_ttl
    if isinstance(node_ttl, bool) or not isinstance(node_ttl, int) or not 2 <= node_ttl <= 3600:
        raise InvalidArgument(
            f"invalid node_ttl {node_ttl!r}: expected whole seconds from 2 to 3600"
        )
    reap_after = _reap_after(cfg.reap_after)
    tls_cert = Path(cfg.tls_cert) if cfg.tls_cert else None
    tls_key = Path(cfg.tls_key) if cfg.tls_key else None
    tls_ca = Path(cfg.tls_ca) if cfg.tls_ca else None
    if https is not None and (tls_cert is None or tls_key is None):
        raise InvalidArgument("--https needs --tls-cert and --tls-key (PEM files)")
    if cfg.tls_verify_incoming and tls_ca is None:
        raise InvalidArgument(
            "--tls-verify-incoming needs --tls-ca: the CA that signs client certificates"
        )
    store_timeout = cfg.store_timeout
    if isinstance(store_timeout, bool) or not isinstance(store_timeout, int | float):
        raise InvalidArgument(f"invalid store_timeout {store_timeout!r}: expected seconds")
    if not 0 < store_timeout <= 600:
        raise InvalidArgument(
            f"invalid store_timeout {store_timeout!r}: expected seconds, more than 0, at most 600"
        )
    return replace(
        cfg,
        reap_after=reap_after,
        store_ca=Path(cfg.store_ca) if cfg.store_ca else None,
        store_cert=Path(cfg.store_cert) if cfg.store_cert else None,
        store_key=Path(cfg.store_key) if cfg.store_key else None,
        store_timeout=float(store_timeout),
        state_dir=Path(cfg.state_dir),
        socket=Path(cfg.socket),
        http=tuple(http) if http else None,  # type: ignore[arg-type]
        dns=tuple(dns) if dns else None,  # type: ignore[arg-type]
        upstreams=upstreams,
        log_file=Path(cfg.log_file) if cfg.log_file else None,
        resolv_conf=Path(cfg.resolv_conf),
        reconcile_interval=float(cfg.reconcile_interval),
        vip_ranges=tuple(str(r) for r in cfg.vip_ranges),
        socket_group=str(cfg.socket_group) if cfg.socket_group is not None else None,
        http_allowed_hosts=hosts,
        https=tuple(https) if https else None,  # type: ignore[arg-type]
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        cni_conf_dir=Path(cfg.cni_conf_dir) if cfg.cni_conf_dir else None,
        tls_verify_incoming=bool(cfg.tls_verify_incoming),
        advertise=str(cfg.advertise) if cfg.advertise else None,
    )


def _check_acl(cfg: AgentConfig) -> None:
    if not isinstance(cfg.acl_enabled, bool):
        raise InvalidArgument(f"invalid acl_enabled {cfg.acl_enabled!r}: expected true or false")
    if cfg.acl_default_policy not in ("allow", "deny"):
        raise InvalidArgument(
            f"invalid ACL default policy {cfg.acl_default_policy!r}: expected allow or deny"
        )
    token = cfg.acl_initial_management
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise InvalidArgument("invalid ACL initial management token: expected a non-empty string")


def socket_gid(name: str) -> int:
    """The id of the group named by ``--socket-group``; ``InvalidArgument``
    when there is none."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InvalidArgument(
            f"unknown group {name!r} for --socket-group: create it (groupadd {name}) "
            "or name an existing group"
        ) from None


def _check_upstream(text: str) -> None:
    if ":" in text and not text.count(":") > 1:
        parse_hostport(text, "upstream")
        return
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        parse_hostport(text, "upstream")


def environ() -> Mapping[str, str]:
    return os.environ


def _reap_after(value: object) -> float | None:
    """``reap_after`` as seconds: a Go duration (``72h``, ``30m``) or a
    number of seconds, at least 10 s; ``None``, ``""``, ``0`` or
    ``"off"``: never."""
    if value is None or value in ("", "off", 0):
        return None
    seconds: float | None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        seconds = parse_duration(str(value))
    if seconds is None or not 10 <= seconds <= 10 * 365 * 86400:
        raise InvalidArgument(
            f"invalid reap_after {value!r}: expected a duration of at least 10s"
            " (72h as Consul's reconnect_timeout, 30m, 90s) or off"
        )
    return seconds
