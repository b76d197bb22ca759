"""Network coordinates (Consul's /v1/coordinate) and sorting by them
(``?near=``).

The model is Vivaldi's, as Consul's (github.com/hashicorp/serf/coordinate):
a coordinate is an 8-dimensional vector with a height, an adjustment and an
error; the estimated round trip between two nodes is the distance between
their vectors plus both heights, plus both adjustments when that sum stays
positive. cove's agents do not gossip, so they compute no coordinates of
their own: a node has one when something (a Consul tool, a measuring job)
PUTs it to /v1/coordinate/update. ``?near=`` sorts nodes with a coordinate
by their estimated round trip from the named node and puts the others last,
in their order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from cove.codec import dumps
from cove.errors import InvalidArgument
from cove.registry import types as t
from cove.registry.decode import fold, text
from cove.registry.keys import COORDS, seg
from cove.registry.queries import Answer, Decoded
from cove.store.base import Put, Store

DIMENSIONS = 8  # Consul's (and serf's) default dimensionality

T = TypeVar("T")


def parse_coord(raw: Any) -> dict[str, Any]:
    """A Vivaldi coordinate from JSON, validated (finite numbers, 8
    dimensions, non-negative error and height)."""
    c = fold(raw, "Coord")
    vec = c.get("vec")
    if not isinstance(vec, list) or len(vec) != DIMENSIONS:
        raise InvalidArgument(
            f"invalid coordinate: Vec must hold {DIMENSIONS} numbers (dimensionality mismatch)"
        )
    out: dict[str, Any] = {"Vec": [_finite(x, "Vec") for x in vec]}
    for key, field, minimum in (
        ("error", "Error", 0.0),
        ("adjustment", "Adjustment", None),
        ("height", "Height", 0.0),
    ):
        value = _finite(c.get(key, 0.0), field)
        if minimum is not None and value < minimum:
            raise InvalidArgument(f"invalid coordinate: {field} must not be negative")
        out[field] = value
    return out


def _finite(x: Any, field: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise InvalidArgument(f"invalid coordinate: {field} must hold finite numbers, got {x!r}")
    return float(x)


def rtt(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Estimated round trip in seconds between two coordinates (serf's
    Coordinate.DistanceTo)."""
    dist = math.dist(a["Vec"], b["Vec"]) + float(a["Height"]) + float(b["Height"])
    adjusted = dist + float(a["Adjustment"]) + float(b["Adjustment"])
    return adjusted if adjusted > 0 else dist


class Coordinates:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._decode = Decoded(100_000)

    def update(self, body: Any) -> int:
        d = fold(body, "coordinate update")
        node = text(d, "node", "Node")
        if not node:
            raise InvalidArgument("Node is required")
        segment = text(d, "segment", "Segment")
        if d.get("coord") is None:
            raise InvalidArgument("Coord is required")
        coord = parse_coord(d["coord"])
        if self._store.get(t.node_key(node)) is None:
            raise InvalidArgument(f'node "{node}" is not in the catalog: register it first')
        entry = {"Node": node, "Segment": segment, "Coord": coord}
        return self._store.txn(
            (), [Put(f"{COORDS}{seg(node)}/{seg(segment)}", dumps(entry))]
        ).revision

    def nodes(self) -> Answer:
        rr = self._store.range(COORDS)
        out = [self._decode(kv) for kv in rr.kvs]
        return Answer(
            out, max((kv.mod_revision for kv in rr.kvs), default=0), rr.revision, (COORDS,)
        )

    def node(self, name: str) -> Answer:
        prefix = f"{COORDS}{seg(name)}/"
        rr = self._store.range(prefix)
        out = [self._decode(kv) for kv in rr.kvs]
        index = max((kv.mod_revision for kv in rr.kvs), default=0)
        return Answer(out, index, rr.revision, (prefix,), found=bool(out))

    def of(self) -> dict[str, dict[str, Any]]:
        """Each node's coordinate (its default segment's, else its first)."""
        out: dict[str, dict[str, Any]] = {}
        for kv in self._store.range(COORDS).kvs:
            d = self._decode(kv)
            if d["Node"] not in out or not d.get("Segment"):
                out[d["Node"]] = d["Coord"]
        return out


def sort_near(
    items: Sequence[T], origin: str, coords: Mapping[str, Any], node_of: Callable[[T], str]
) -> list[T]:
    """``items`` by estimated round trip from ``origin``'s node; those
    without a coordinate (or all, when ``origin`` has none) keep their
    order after the others."""
    here = coords.get(origin)
    if here is None:
        return list(items)
    keyed = []
    for i, item in enumerate(items):
        there = coords.get(node_of(item))
        keyed.append((0 if there is not None else 1, rtt(here, there) if there else 0.0, i, item))
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [k[3] for k in keyed]
