"""Many containers of a host that runs no agent, written straight into the
cluster fixture's etcd, and the bytes a host reads from etcd: what one
container start costs the other agents of a busy cluster (shared by
``tests/integration/test_cluster_fanout.py`` and
``bench/cluster/etcd_load.py``)."""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import secrets
import time
from typing import Protocol

import nsutil
from cluster import ETCD_PORT, FABRIC_ADDRESS
from cove.model import endpoint_key
from cove.runtime.keys import container_key, name_claim, name_key
from etcd_fixture import EtcdLoad

GHOST = "ghost"  # the node the clones belong to: no agent runs it


class Metered(Protocol):
    def metrics(self) -> EtcdLoad: ...


def settle(member: Metered, quiet: float = 3.0, limit: float = 60.0) -> None:
    """Wait until etcd sees no write for ``quiet`` seconds (the agent has
    finished what the last command started)."""
    deadline = time.monotonic() + limit
    last = member.metrics()
    calm_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = member.metrics()
        writes = sum((now - last).calls.get(m, 0) for m in ("Put", "Txn", "DeleteRange"))
        last = now
        if writes:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            return


class FabricMember:
    """The cluster fixture's etcd, reached from inside the fabric namespace."""

    def __init__(self, fabric: str) -> None:
        self.fabric = fabric

    def _http(self, method: str, path: str, body: object = None) -> bytes:
        with nsutil.entered(self.fabric):
            conn = http.client.HTTPConnection(FABRIC_ADDRESS, ETCD_PORT, timeout=10)
            try:
                conn.request(method, path, body=None if body is None else json.dumps(body))
                return conn.getresponse().read()
            finally:
                conn.close()

    def metrics(self) -> EtcdLoad:
        return EtcdLoad.parse(self._http("GET", "/metrics").decode())

    def range(self, prefix: str) -> list[tuple[str, bytes]]:
        body = {"key": _b64(prefix), "range_end": _end(prefix)}
        answer = json.loads(self._http("POST", "/v3/kv/range", body))
        return [
            (base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")))
            for kv in answer.get("kvs", ())
        ]

    def delete_prefix(self, prefix: str) -> None:
        self._http("POST", "/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _end(prefix)})

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        for i in range(0, len(items), 100):  # under etcd's --max-txn-ops (128)
            ops = [
                {"request_put": {"key": _b64(k), "value": base64.b64encode(v).decode()}}
                for k, v in items[i : i + 100]
            ]
            self._http("POST", "/v3/kv/txn", {"success": ops})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _end(prefix: str) -> str:
    return _b64(prefix[:-1] + chr(ord(prefix[-1]) + 1))


def rx_bytes(netns: str) -> int:
    """Bytes the host's fabric link (eth0) received: everything it read
    from etcd, TCP/IP headers included."""
    out = nsutil.run("ip", "-n", netns, "-j", "-s", "link", "show", "eth0").stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def clones(member: FabricMember, seed: str, network: str, subnet: str, count: int) -> list[str]:
    """Write ``count`` containers like ``seed`` (its container, endpoint
    and IPAM records, a running container on ``network``) under node
    ``ghost``: every agent sees them, none builds them. Their addresses are
    taken from the top of ``subnet``, far from what IPAM hands out first.
    Returns the keys written."""
    ((_, craw),) = [(k, v) for k, v in member.range("containers/") if k.endswith(f"/{seed}")]
    seed_id = json.loads(craw)["id"]
    ((_, eraw),) = [
        (k, v) for k, v in member.range(f"endpoints/{network}/") if seed_id.encode() in v
    ]
    ((_, iraw),) = [(k, v) for k, v in member.range(f"ipam/{network}/") if seed_id.encode() in v]
    hosts = list(ipaddress.ip_network(subnet).hosts())
    items: list[tuple[str, bytes]] = []
    for i in range(count):
        cid = secrets.token_hex(32)
        name = f"{GHOST}{i}"
        addr = hosts[-1 - i]
        mac = "02:42:" + ":".join(f"{b:02x}" for b in addr.packed[-4:])
        c = {**json.loads(craw), "id": cid, "name": name, "hostname": cid[:12], "node": GHOST}
        eid = secrets.token_hex(16)
        e = {
            **json.loads(eraw),
            "id": eid,
            "container_id": cid,
            "container_name": name,
            "ipv4": str(addr),
            "host_veth": "cv" + eid[:10],
            "node": GHOST,
            "mac": mac,
        }
        items += [
            (container_key(GHOST, name), json.dumps(c).encode()),
            (name_key(name), name_claim(GHOST, cid)),
            (endpoint_key(network, GHOST, eid), json.dumps(e).encode()),
            (f"ipam/{network}/{addr}", json.dumps({**json.loads(iraw), "owner": cid}).encode()),
        ]
    member.put_many(items)
    return [k for k, _ in items]


def remove(member: FabricMember, keys: list[str]) -> None:
    """Delete the clones' records (before the agents' clean-up prunes)."""
    for key in keys:
        member._http("POST", "/v3/kv/deleterange", {"key": _b64(key)})
