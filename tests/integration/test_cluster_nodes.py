"""Nodes are first-class: three hosts (network namespaces) on one etcd, each
with its own agent (see tests/cluster.py)."""

from __future__ import annotations

import json

import pytest

from cluster import Cluster

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def test_each_node_is_recorded_with_its_advertise_address(cluster3: Cluster) -> None:
    for host in cluster3.hosts:
        raw = cluster3.etcd_get(f"cluster/nodes/{host.name}")
        assert raw is not None, host.name
        record = json.loads(raw)
        assert record["name"] == host.name
        assert record["advertise"] == host.address
