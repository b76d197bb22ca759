"""The JSON `cove network inspect` reads: the network and its endpoints.

Before the service returned `Endpoint` records the API sent each stored
value as it was; the encoding must give the same body, keys in the same
(sorted) order.
"""

from __future__ import annotations

import ipaddress
import json

from cove.api.networks import network_json
from cove.clock import ManualClock
from cove.model import ENDPOINTS, Endpoint
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.store.memory import MemoryStore
from cove.timefmt import rfc3339


def _stored(ep: Endpoint) -> bytes:
    # As runtime.service writes an endpoint.
    return json.dumps(ep.to_json(), sort_keys=True).encode()


def test_inspect_sends_the_endpoints_as_stored() -> None:
    store = MemoryStore(ManualClock())
    svc = NetworkService(store, ManualClock())
    net, _ = svc.create(NetworkSpec(name="front"))
    eps = [
        Endpoint(
            id="e1", network="front", container_id="c1", container_name="web",
            interface="eth0", host_veth="cv1", mac="02:00:00:00:00:01",
            ipv4=ipaddress.IPv4Address("10.1.0.2"), ipv6=ipaddress.IPv6Address("fd00::2"),
            aliases=("www",), hostname="web", netns="/run/cove/netns/c1",
            services=("web:80",),
        ),
        Endpoint(
            id="e2", network="front", container_id="c2", container_name="db",
            interface="eth1", host_veth="cv2", mac="02:00:00:00:00:02",
        ),
    ]  # fmt: skip
    for ep in eps:
        store.put(f"{ENDPOINTS}front/{ep.id}", _stored(ep))
    store.put(f"{ENDPOINTS}other/e3", _stored(eps[1]))

    before = [json.loads(kv.value) for kv in store.range(f"{ENDPOINTS}front/").kvs]
    body = network_json(net, svc.endpoints("front"))
    shown = {**net.to_json(), "created": rfc3339(net.created)}

    assert body["endpoints"] == before
    assert [list(e) for e in body["endpoints"]] == [list(e) for e in before]
    assert {k: v for k, v in body.items() if k != "endpoints"} == shown
    assert before[1]["ipv4"] is None and before[0]["services"] == ["web:80"]
    assert json.dumps(body) == json.dumps({**shown, "endpoints": before})


def test_ls_and_create_send_no_endpoints() -> None:
    svc = NetworkService(MemoryStore(ManualClock()), ManualClock())
    net, _ = svc.create(NetworkSpec(name="front"))
    assert network_json(net) == {**net.to_json(), "created": rfc3339(net.created)}
    assert network_json(net)["created"].endswith("Z")
    assert svc.endpoints("front") == []
    assert svc.endpoints("absent") == []
