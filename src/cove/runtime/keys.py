"""Where a container's records live in the store, by the node that runs it,
so that an agent can watch its own node's containers and statuses alone
(etcd watches key ranges).

- ``containers/<node>/<name>``   the container (``Container``); ``node`` is
                                 its owner (a name cannot contain ``/``)
- ``cluster/names/<name>``       the name's claim, ``{"node", "id"}``: made
                                 and deleted in the same transaction as the
                                 record, it keeps names unique in the cluster
- ``cluster/status/<node>/<id>`` the owner's last word on the process

- ``cluster/layout/<node>``      ``{"version": N}``: the node's records are
                                 all in layout ``N`` (``LAYOUT_VERSION``), so
                                 its agent's start reads nothing else to know

Records written before this layout (``containers/<name>``,
``cluster/status/<id>``, ``endpoints/<network>/<id>``) are moved by their
agent at start-up (``cove.runtime.relayout``); until then
``find_container`` still finds them.
"""

from __future__ import annotations

import json

from cove.model import CONTAINERS
from cove.store.base import KeyValue, Store

NAMES = "cluster/names/"
CLUSTER_STATUS = "cluster/status/"
LAYOUT = "cluster/layout/"
# 1: containers and process states under their node; 2: endpoints too.
LAYOUT_VERSION = 2


def containers_of(node: str) -> str:
    """The prefix of ``node``'s container records."""
    return f"{CONTAINERS}{node}/"


def container_key(node: str, name: str) -> str:
    return f"{CONTAINERS}{node}/{name}"


def name_key(name: str) -> str:
    """The claim that keeps the container name ``name`` unique."""
    return NAMES + name


def name_claim(node: str, cid: str) -> bytes:
    return json.dumps({"node": node, "id": cid}, separators=(",", ":")).encode()


def legacy_container_key(name: str) -> str:
    """Where a record written before the per-node layout lies."""
    return CONTAINERS + name


def statuses_of(node: str) -> str:
    """The prefix of the process states ``node``'s agent publishes."""
    return f"{CLUSTER_STATUS}{node}/"


def status_key(node: str, cid: str) -> str:
    return f"{CLUSTER_STATUS}{node}/{cid}"


def status_id(key: str) -> str:
    """The container id of a status key (either layout)."""
    return key.rsplit("/", 1)[-1]


def layout_key(node: str) -> str:
    """The mark that ``node``'s records are all in the layout of now."""
    return LAYOUT + node


def is_legacy(key: str, prefix: str) -> bool:
    """Whether ``key`` under ``prefix`` has the old one-segment shape."""
    return key.startswith(prefix) and "/" not in key[len(prefix) :]


def claimed_node(store: Store, name: str) -> str | None:
    """The node the name ``name`` is claimed for (None: not claimed)."""
    kv = store.get(name_key(name))
    if kv is None:
        return None
    try:
        return str(json.loads(kv.value)["node"])
    except (ValueError, KeyError, TypeError):
        return None


def find_container(store: Store, name: str) -> KeyValue | None:
    """The record of the container named ``name``, wherever its node keeps
    it: its claim, then the record (two reads); a record of the old layout
    not yet moved by its agent is found at its old key."""
    if not name or "/" in name:
        return None
    node = claimed_node(store, name)
    if node is not None:
        return store.get(container_key(node, name))
    return store.get(legacy_container_key(name))
