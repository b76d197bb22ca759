"""The JSON the container API sends for the service's records.

`cove inspect`, `cove ps --format json`, `cove exec` and the answers to run,
stop, start, connect and disconnect read exactly this, so the expected
bodies below were taken from the API's answers before the service returned
records, keys in the same order.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from cove.api.containers import container_json, exec_json
from cove.model import Endpoint
from cove.runtime.spec import Container
from cove.runtime.state import ProcessState, Status
from cove.runtime.view import ContainerView, ExecInfo, status_text

CID = "ab" * 32
DEFAULT_CAPS = [
    "CAP_AUDIT_WRITE",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]


def _container() -> Container:
    return Container.from_json(
        {
            "id": CID,
            "name": "web",
            "argv": ["/bin/sh", "-c", "sleep 1"],
            "hostname": "web",
            "env": {"PATH": "/bin", "A": "1"},
            "labels": {"k": "v"},
            "rootfs": None,
            "workdir": "/",
            "restart": "on-failure",
            "ports": ["8080:80/tcp"],
            "networks": ["front", "back"],
            "services": ["web:80"],
            "desired": "running",
            "created": 1700000000.5,
            "cap_add": ["NET_ADMIN"],
            "cap_drop": ["CHOWN"],
            "seccomp": "default",
        }
    )


def _endpoints() -> tuple[Endpoint, ...]:
    common: dict[str, Any] = {"container_id": CID, "container_name": "web"}
    return (
        Endpoint(
            id="e1", network="front", interface="eth0", host_veth="cv1",
            mac="02:00:00:00:00:01", ipv4=ipaddress.IPv4Address("10.1.0.2"),
            ipv6=ipaddress.IPv6Address("fd00::2"), aliases=("www",), hostname="web",
            netns="/run/cove/netns/ab", **common,
        ),
        Endpoint(
            id="e2", network="back", interface="eth1", host_veth="cv2",
            mac="02:00:00:00:00:02", ipv4=ipaddress.IPv4Address("10.2.0.2"),
            netns="/run/cove/netns/ab", **common,
        ),
    )  # fmt: skip


STORED = {
    "id": CID,
    "name": "web",
    "argv": ["/bin/sh", "-c", "sleep 1"],
    "hostname": "web",
    "env": {"PATH": "/bin", "A": "1"},
    "labels": {"k": "v"},
    "rootfs": None,
    "workdir": "/",
    "restart": "on-failure",
    "ports": ["8080:80/tcp"],
    "networks": ["front", "back"],
    "services": ["web:80"],
    "desired": "running",
    "created": 1700000000.5,
    "cap_add": ["NET_ADMIN"],
    "cap_drop": ["CHOWN"],
    "seccomp": "default",
    "node": "",  # the node that runs it (empty: a single-host record)
    "init": False,
    "stop_signal": "SIGTERM",
    "extra_hosts": [],
    "user": "",
    "auto_remove": False,
    # a container without an image, no -v, --tmpfs or --read-only
    "image": "",
    "image_id": "",
    "mounts": [],
    "read_only": False,
    # no --dns, --dns-search or --dns-option
    "dns": [],
    "dns_search": [],
    "dns_options": [],
    "memory": 0,  # no -m or --cpus
    "cpus": 0.0,
    "network_mode": "",  # its own namespace, on its networks
}

INSPECT = {
    **STORED,
    "created": "2023-11-14T22:13:20.500000Z",  # RFC 3339, as Docker shows it
    "short_id": "abababababab",
    "capabilities": sorted([*DEFAULT_CAPS, "CAP_NET_ADMIN"]),
    "state": {
        "status": "exited",
        "pid": 0,
        "exit_code": 3,
        "started_at": "1970-01-01T00:00:01.500000Z",
        "finished_at": "1970-01-01T00:00:02.500000Z",
        "restart_count": 2,
        "error": "boom",
    },
    "endpoints": {
        "front": {
            "endpoint_id": "e1",
            "interface": "eth0",
            "host_veth": "cv1",
            "mac": "02:00:00:00:00:01",
            "ipv4": "10.1.0.2",
            "ipv6": "fd00::2",
            "aliases": ["www"],
        },
        "back": {
            "endpoint_id": "e2",
            "interface": "eth1",
            "host_veth": "cv2",
            "mac": "02:00:00:00:00:02",
            "ipv4": "10.2.0.2",
            "ipv6": None,
            "aliases": [],
        },
    },
    "network_settings": {
        "ip_address": "10.1.0.2",
        "global_ipv6_address": "fd00::2",
        "mac_address": "02:00:00:00:00:01",
        "ports": ["8080:80/tcp"],
        "networks": {
            "front": {
                "ip_address": "10.1.0.2",
                "global_ipv6_address": "fd00::2",
                "mac_address": "02:00:00:00:00:01",
                "aliases": ["www"],
                "endpoint_id": "e1",
            },
            "back": {
                "ip_address": "10.2.0.2",
                "global_ipv6_address": "",
                "mac_address": "02:00:00:00:00:02",
                "aliases": [],
                "endpoint_id": "e2",
            },
        },
    },
    "host_config": {"network_mode": "front"},  # Docker's: the first network
    "netns": "/run/cove/netns/ab",
    "log_path": "/var/lib/cove/logs/x/log",
}


def _keys(data: Any) -> Any:
    """Every key in order, nested: the wire order, not only the content."""
    if isinstance(data, dict):
        return [(k, _keys(v)) for k, v in data.items()]
    return None


def test_a_container_encodes_to_what_inspect_sent_before() -> None:
    state = ProcessState(
        CID, Status.EXITED, exit_code=3, started_at=1.5, finished_at=2.5,
        restart_count=2, error="boom", pid_start=77, stopped_by_user=True,
    )  # fmt: skip
    view = ContainerView(_container(), _endpoints(), state, Path("/var/lib/cove/logs/x/log"))
    body = container_json(view)
    assert body == INSPECT
    assert _keys(body) == _keys(INSPECT)
    # The supervisor's own fields (pid_start, stopped_by_user) stay inside.
    assert "pid_start" not in body["state"]
    assert json.loads(json.dumps(body)) == body
    assert status_text(body["state"]) == "exited (3)"


def test_a_container_on_no_network_has_no_netns() -> None:
    view = ContainerView(_container(), (), ProcessState(CID), Path("/l"))
    body = container_json(view)
    assert body["endpoints"] == {}
    assert body["netns"] == ""
    assert body["log_path"] == "/l"
    assert body["state"] == {
        "status": "created",
        "pid": 0,
        "exit_code": None,
        "started_at": "0001-01-01T00:00:00Z",  # Docker's zero time: never started
        "finished_at": "0001-01-01T00:00:00Z",
        "restart_count": 0,
        "error": "",
    }
    assert status_text(body["state"]) == "created"


def test_exec_info_encodes_to_what_cove_exec_reads() -> None:
    c = _container()
    info = ExecInfo(
        id=c.id, pid=4242, env=dict(c.env), workdir="/srv",
        capabilities=tuple(sorted(c.capabilities)), seccomp=c.seccomp, user="nobody",
    )  # fmt: skip
    body = exec_json(info)
    assert body == {
        "pid": 4242,
        "env": {"PATH": "/bin", "A": "1"},
        "workdir": "/srv",
        "id": CID,
        "capabilities": [cap.removeprefix("CAP_") for cap in INSPECT["capabilities"]],
        "seccomp": True,
        "user": "nobody",
    }
    assert list(body) == ["pid", "env", "workdir", "id", "capabilities", "seccomp", "user"]
