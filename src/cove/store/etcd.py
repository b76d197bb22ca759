"""The cluster store: etcd v3 through its JSON gRPC gateway (``/v3/...``).

Plain ``http.client`` over persistent connections (a small pool, one request
per connection at a time), keys and values base64 as the gateway wants, and
one streaming connection plus one reader thread per watch. Endpoints are
tried in order; the first that answers is used until it fails.

Errors map to the cove tree: gRPC ``NOT_FOUND`` (an unknown or expired lease)
is ``NotFound``, ``INVALID_ARGUMENT`` (e.g. a key written twice in one
transaction) is ``InvalidArgument``, a compacted watch start is
``WatchCompacted``, and everything else (refused connections, timeouts, a
cluster without quorum) is ``StoreError``.

Differences from the memory and SQLite backends, all etcd's own rules:

- a VALUE compare on a *missing* key never holds (etcd has no way to tell a
  missing value from an empty one); use ``Compare.absent``/``present``;
- a lease's TTL may be raised to etcd's minimum (2 s with default settings);
- history is compacted by the cluster's own ``--auto-compaction-*`` settings
  (or ``compact()``), not by this client.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import queue
import socket
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from cove.clock import Clock
from cove.errors import CoveError, InvalidArgument, NotFound, StoreError, WatchCompacted
from cove.store.base import (
    Compare,
    CompareTarget,
    Delete,
    Event,
    EventType,
    KeyValue,
    Op,
    Put,
    RangeResult,
    TxnResult,
)
from cove.store.memory import check_ops

log = logging.getLogger(__name__)

_TIMEOUT = 10.0  # seconds for one unary request
_POOL_SIZE = 8

# gRPC status codes the gateway returns in {"code": N}
_GRPC_INVALID_ARGUMENT = 3
_GRPC_NOT_FOUND = 5
_GRPC_OUT_OF_RANGE = 11

_TARGETS = {
    CompareTarget.VALUE: ("VALUE", "value"),
    CompareTarget.VERSION: ("VERSION", "version"),
    CompareTarget.CREATE: ("CREATE", "create_revision"),
    CompareTarget.MOD: ("MOD", "mod_revision"),
}
_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


class EtcdError(StoreError):
    """An error answer from etcd (``code`` is the gRPC status code)."""


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _range_end(prefix: str) -> bytes:
    """etcd's range end for "every key starting with prefix"."""
    end = bytearray(prefix.encode())
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # with key "\0": the whole keyspace


def _key_range(prefix: str) -> dict[str, str]:
    return {"key": _b64(prefix or "\0"), "range_end": _b64(_range_end(prefix))}


def _kv(data: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(data.get("key")).decode(),
        value=_unb64(data.get("value")),
        create_revision=int(data.get("create_revision", 0)),
        mod_revision=int(data.get("mod_revision", 0)),
        version=int(data.get("version", 0)),
        lease=int(data.get("lease", 0)),
    )


def _revision(body: dict[str, Any]) -> int:
    return int(body.get("header", {}).get("revision", 0))


def _compare(c: Compare) -> dict[str, Any]:
    target, field = _TARGETS[c.target]
    value: Any = _b64(c.value) if isinstance(c.value, bytes) else str(c.value)
    if (c.target is CompareTarget.VALUE) != isinstance(c.value, bytes):
        raise InvalidArgument("compare value of the wrong type", key=c.key)
    return {"key": _b64(c.key), "target": target, "result": _RESULTS[c.op.value], field: value}


def _request_op(op: Op) -> dict[str, Any]:
    if isinstance(op, Put):
        put: dict[str, Any] = {"key": _b64(op.key), "value": _b64(op.value)}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    target = _key_range(op.key) if op.prefix else {"key": _b64(op.key)}
    if isinstance(op, Delete):
        return {"request_delete_range": target}
    return {"request_range": target}


class _Endpoint:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise InvalidArgument("an etcd endpoint must be http://host:port", endpoint=url)
        self.host = parts.hostname
        self.port = parts.port or 2379
        self.url = f"http://{self.host}:{self.port}"

    def connect(self, timeout: float | None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


class EtcdWatch:
    """One streaming ``/v3/watch`` with a reader thread feeding a queue."""

    def __init__(self, endpoint: _Endpoint, prefix: str, start_revision: int | None) -> None:
        self._queue: queue.Queue[list[Event] | StoreError] = queue.Queue()
        self._closed = False
        request: dict[str, Any] = {**_key_range(prefix), "prev_kv": True}
        if start_revision is not None and start_revision > 0:
            request["start_revision"] = str(start_revision)
        self._conn = endpoint.connect(timeout=_TIMEOUT)
        try:
            self._conn.request(
                "POST",
                "/v3/watch",
                body=json.dumps({"create_request": request}),
                headers={"Content-Type": "application/json"},
            )
            self._resp = self._conn.getresponse()
            if self._resp.status != 200:
                raise StoreError("etcd refused the watch", status=self._resp.status)
            first = json.loads(self._resp.readline() or b"{}").get("result", {})
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._conn.close()
            raise StoreError("cannot start an etcd watch", endpoint=endpoint.url) from exc
        if not first.get("created"):
            self._conn.close()
            raise StoreError("etcd did not create the watch", answer=str(first))
        if self._conn.sock is not None:
            self._conn.sock.settimeout(None)  # a quiet watch may wait forever
        self._thread = threading.Thread(target=self._read, name="cove-etcd-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._closed:
                line = self._resp.readline()
                if not line:
                    raise StoreError("etcd closed the watch stream")
                result = json.loads(line).get("result", {})
                if result.get("canceled"):
                    compacted = int(result.get("compact_revision", 0))
                    if compacted:
                        raise WatchCompacted(
                            "watch start revision was compacted", compacted=compacted
                        )
                    raise StoreError("etcd cancelled the watch", reason=result.get("cancel_reason"))
                events = [_event(e) for e in result.get("events", ())]
                if events:
                    self._queue.put(events)
        except StoreError as exc:
            self._queue.put(exc)
        except Exception as exc:
            # Anything the stream throws at this thread boundary (including
            # http.client tripping over a connection that close() tore down)
            # becomes the StoreError that the next call to next() raises.
            err = StoreError("the etcd watch stream failed", error=exc)
            err.__cause__ = exc
            self._queue.put(err)

    def next(self, timeout: float | None = None) -> list[Event]:
        if self._closed:
            raise StoreError("the watch is closed")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        events: list[Event] = []
        while True:
            if isinstance(item, StoreError):
                if events:  # deliver what came before the failure first
                    self._queue.put(item)  # FIFO: it is the only item left
                    return events
                self._queue.put(item)  # keep failing on later calls too
                raise item
            events.extend(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return events

    def close(self) -> None:
        self._closed = True
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()
        self._queue.put(StoreError("the watch is closed"))


def _event(data: dict[str, Any]) -> Event:
    kv = _kv(data["kv"])
    prev = _kv(data["prev_kv"]) if data.get("prev_kv") else None
    if data.get("type") == "DELETE":
        return Event(EventType.DELETE, kv, prev)
    return Event(EventType.PUT, kv, prev)


class EtcdStore:
    """The Store protocol on an etcd v3 cluster (see the module docstring)."""

    def __init__(self, endpoints: list[str], clock: Clock) -> None:
        if not endpoints:
            raise InvalidArgument("etcd needs at least one endpoint")
        self._endpoints = [_Endpoint(e) for e in endpoints]
        self._clock = clock  # etcd keeps time itself; kept for the common signature
        self._lock = threading.Lock()
        self._pool: list[tuple[_Endpoint, http.client.HTTPConnection]] = []
        self._preferred = 0
        self._closed = False

    # -- transport -----------------------------------------------------------

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one request; returns the JSON answer or raises a mapped error."""
        payload = json.dumps(body).encode()
        failures: list[str] = []
        for attempt in range(len(self._endpoints) + 1):
            endpoint, conn, reused = self._borrow()
            try:
                conn.request(
                    "POST", path, body=payload, headers={"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                failures.append(f"{endpoint.url}: {exc}")
                if reused:  # the peer dropped idle connections: drop their siblings too
                    with self._lock:
                        stale, self._pool = self._pool, []
                    for _, old in stale:
                        old.close()
                else:  # a fresh connection failed: try the next endpoint
                    with self._lock:
                        if self._endpoints[self._preferred] is endpoint:
                            self._preferred = (self._preferred + 1) % len(self._endpoints)
                log.debug("etcd request %s failed (attempt %s): %s", path, attempt, exc)
                continue
            self._give_back(endpoint, conn)
            try:
                answer: dict[str, Any] = json.loads(data or b"{}")
            except ValueError as exc:
                raise StoreError("etcd sent an answer that is not JSON", path=path) from exc
            if "error" in answer or resp.status != 200:
                raise self._error(answer, path)
            return answer
        raise StoreError("etcd is unreachable", path=path, tried="; ".join(failures))

    def _borrow(self) -> tuple[_Endpoint, http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._pool:
                endpoint, conn = self._pool.pop()
                return endpoint, conn, True
            endpoint = self._endpoints[self._preferred]
        return endpoint, endpoint.connect(timeout=_TIMEOUT), False

    def _give_back(self, endpoint: _Endpoint, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._pool) < _POOL_SIZE:
                self._pool.append((endpoint, conn))
                return
        conn.close()

    @staticmethod
    def _error(answer: dict[str, Any], path: str) -> CoveError:
        code = int(answer.get("code", 0))
        message = str(answer.get("error") or answer.get("message") or "unknown etcd error")
        if code == _GRPC_NOT_FOUND:
            return NotFound(message.removeprefix("etcdserver: "), path=path)
        if code == _GRPC_INVALID_ARGUMENT:
            return InvalidArgument(message.removeprefix("etcdserver: "), path=path)
        if "compacted" in message:
            return WatchCompacted(message, path=path)
        return EtcdError(message, path=path, code=code)

    # -- reads ---------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        answer = self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", ())
        return _kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> RangeResult:
        answer = self._call("/v3/kv/range", _key_range(prefix))
        return RangeResult(tuple(_kv(kv) for kv in answer.get("kvs", ())), _revision(answer))

    @property
    def revision(self) -> int:
        # A point read of a key that cannot exist costs etcd nothing and
        # carries the current revision in its header.
        return _revision(self._call("/v3/kv/range", {"key": _b64("\0")}))

    # -- writes --------------------------------------------------------------

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        check_ops((Put(key, value, lease),))
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _revision(self._call("/v3/kv/put", body))

    def delete(self, key: str, *, prefix: bool = False) -> int:
        check_ops((Delete(key, prefix),))
        body = _key_range(key) if prefix else {"key": _b64(key)}
        return _revision(self._call("/v3/kv/deleterange", body))

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        check_ops(success)
        check_ops(failure)
        body = {
            "compare": [_compare(c) for c in compares],
            "success": [_request_op(op) for op in success],
            "failure": [_request_op(op) for op in failure],
        }
        answer = self._call("/v3/kv/txn", body)
        responses = tuple(
            tuple(_kv(kv) for kv in r.get("response_range", {}).get("kvs", ()))
            for r in answer.get("responses", ())
        )
        return TxnResult(bool(answer.get("succeeded", False)), _revision(answer), responses)

    def compact(self, revision: int) -> None:
        try:
            self._call("/v3/kv/compaction", {"revision": str(revision)})
        except WatchCompacted:
            return  # already compacted at or past it: nothing to forget
        except EtcdError as exc:
            if "future revision" in exc.message:
                raise InvalidArgument(
                    "cannot compact a future revision", revision=revision
                ) from exc
            raise

    # -- watches -------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int | None = None) -> EtcdWatch:
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            endpoint = self._endpoints[self._preferred]
        return EtcdWatch(endpoint, prefix, start_revision)

    # -- leases --------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        if ttl <= 0:
            raise InvalidArgument("a lease TTL must be positive", ttl=ttl)
        return int(self._call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def lease_keepalive(self, lease: int) -> int:
        answer = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        ttl = int(answer.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise NotFound("lease not found or expired", lease=lease)
        return ttl

    def lease_revoke(self, lease: int) -> None:
        with contextlib.suppress(NotFound):
            self._call("/v3/lease/revoke", {"ID": str(lease)})

    def cluster(self) -> dict[str, Any]:
        """The etcd cluster (for the operator API): ``members`` (each with
        ``id``, ``name``, ``peer_urls``, ``client_urls``), the ``leader``'s
        id, and the raft ``index`` and ``term`` of the member that answered."""
        listed = self._call("/v3/cluster/member/list", {}).get("members") or []
        status = self._call("/v3/maintenance/status", {})
        return {
            "members": [
                {
                    "id": str(m.get("ID", "")),
                    "name": str(m.get("name", "")),
                    "peer_urls": list(m.get("peerURLs") or []),
                    "client_urls": list(m.get("clientURLs") or []),
                    "learner": bool(m.get("isLearner", False)),
                }
                for m in listed
            ],
            "leader": str(status.get("leader", "")),
            "index": int(status.get("raftIndex", 0)),
            "term": int(status.get("raftTerm", 0)),
            "version": str(status.get("version", "")),
        }

    # -- life cycle ----------------------------------------------------------

    def local(self) -> None:
        """Over the network: no ``LocalStore`` abilities (callers take the
        compare-and-swap and watch paths)."""
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for _, conn in pool:
            conn.close()
