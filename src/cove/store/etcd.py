"""The cluster store: etcd v3 through its JSON gRPC gateway (``/v3/...``).

Plain ``http.client`` over persistent connections (a small pool, one request
per connection at a time), keys and values base64 as the gateway wants, and
one streaming connection plus one reader thread per watch, over HTTP or
HTTPS with a client certificate. Which member is asked, what is retried and
for how long: ``cove.store.etcd_transport``. A transaction whose answer was
lost is not simply sent again (its own writes could fail its compares): the
client reads its keys back first (``_applied``).

Errors map to the cove tree: gRPC ``NOT_FOUND`` (an unknown or expired lease)
is ``NotFound``, ``INVALID_ARGUMENT`` (e.g. a key written twice in one
transaction) is ``InvalidArgument``, a compacted watch start is
``WatchCompacted``, a TLS certificate refused is ``TlsRefused``, and
everything else that outlasts the retries (no member reachable, a cluster
without quorum) is ``StoreError`` naming the endpoints.

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
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from cove.clock import Clock
from cove.errors import CoveError, InvalidArgument, NotFound, StoreError, WatchCompacted
from cove.store.base import (
    Compare,
    CompareTarget,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    Op,
    Put,
    RangeResult,
    TxnResult,
)
from cove.store.etcd_transport import (
    DEFAULT_TIMEOUT,
    GRPC_INVALID_ARGUMENT,
    GRPC_NOT_FOUND,
    LEADER_HEADERS,
    Backoff,
    Endpoint,
    Failure,
    Members,
    TlsRefused,
    attempt_timeout,
    classify_answer,
    error_fields,
    tls_refused,
)
from cove.store.memory import check_ops

log = logging.getLogger(__name__)

_POOL_SIZE = 8

_TARGETS = {
    CompareTarget.VALUE: ("VALUE", "value"),
    CompareTarget.VERSION: ("VERSION", "version"),
    CompareTarget.CREATE: ("CREATE", "create_revision"),
    CompareTarget.MOD: ("MOD", "mod_revision"),
}
_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


class EtcdError(StoreError):
    """An error answer from etcd (``code`` is the gRPC status code)."""


class _OutcomeUnknown(StoreError):
    """A request that may or may not have been applied (internal: a
    transaction re-checks, then retries)."""


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


def _key_range(prefix: str, end: str | None = None) -> dict[str, str]:
    """etcd's key and range end for the keys under ``prefix``, or with
    ``end`` for the keys from ``prefix`` to ``end`` (``UNBOUNDED``: all
    keys from ``prefix`` on, which etcd spells with range end "\\0")."""
    if end is None:
        return {"key": _b64(prefix or "\0"), "range_end": _b64(_range_end(prefix))}
    return {"key": _b64(prefix or "\0"), "range_end": _b64(end or "\0")}


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


class EtcdWatch:
    """One streaming ``/v3/watch`` with a reader thread feeding a queue."""

    def __init__(
        self,
        endpoint: Endpoint,
        prefix: str,
        start_revision: int | None,
        timeout: float,
        members: Members | None = None,
        *,
        prev: bool = True,
        end: str | None = None,
    ) -> None:
        self._queue: queue.Queue[list[Event] | StoreError] = queue.Queue()
        self._closed = False
        self._endpoint = endpoint
        self._members = members
        # The member's failures when the watch started: when a request of
        # the store sets that member aside (it stopped answering, lost its
        # leader), the watch stops too and the hub watches on another one.
        # A stream stays silent on a member that hangs, so this is how it
        # learns.
        self._failures = endpoint.failures
        request: dict[str, Any] = {**_key_range(prefix, end), "prev_kv": prev}
        if start_revision is not None and start_revision > 0:
            request["start_revision"] = str(start_revision)
        try:
            self._conn = endpoint.connect(timeout=timeout)
        except OSError as exc:
            raise StoreError(
                "cannot start an etcd watch", endpoint=endpoint.url, error=str(exc)
            ) from exc
        try:
            self._conn.request(
                "POST",
                "/v3/watch",
                body=json.dumps({"create_request": request}),
                headers=LEADER_HEADERS,
            )
            self._resp = self._conn.getresponse()
            if self._resp.status != 200:
                raise StoreError("etcd refused the watch", status=self._resp.status)
            first = json.loads(self._resp.readline() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._conn.close()
            raise StoreError("cannot start an etcd watch", endpoint=endpoint.url) from exc
        result = first.get("result", {})
        if not result.get("created"):
            self._conn.close()
            raise StoreError("etcd did not create the watch", answer=str(first)[:200])
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
            self._broken()
            self._queue.put(exc)
        except Exception as exc:
            self._broken()
            # Anything the stream throws at this thread boundary (including
            # http.client tripping over a connection that close() tore down)
            # becomes the StoreError that the next call to next() raises.
            err = StoreError("the etcd watch stream failed", error=exc)
            err.__cause__ = exc
            self._queue.put(err)

    def _broken(self) -> None:
        """The stream failed by itself (not closed): set its member aside,
        so the watch that replaces it starts on another one."""
        if not self._closed and self._members is not None:
            self._members.failed(self._endpoint)

    def next(self, timeout: float | None = None) -> list[Event]:
        if self._closed:
            raise StoreError("the watch is closed")
        if self._endpoint.failures != self._failures and self._queue.empty():
            raise StoreError("the watch's etcd member was set aside", endpoint=self._endpoint.url)
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

    def __init__(
        self,
        endpoints: list[str],
        clock: Clock,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """``endpoints``: member client URLs (``http://`` or ``https://``,
        the latter with ``tls``); ``timeout``: how long a request may keep
        failing over and retrying before it raises ``StoreError``."""
        if not endpoints:
            raise InvalidArgument("etcd needs at least one endpoint")
        if timeout <= 0:
            raise InvalidArgument("the etcd timeout must be positive", timeout=timeout)
        self._members = Members([Endpoint(e, tls) for e in endpoints])
        self._timeout = timeout
        self._clock = clock  # etcd keeps time itself; kept for the common signature
        self._lock = threading.Lock()
        self._pool: list[tuple[Endpoint, http.client.HTTPConnection]] = []
        self._seen = 0  # the highest revision any answer carried
        self._closed = False

    # -- transport -----------------------------------------------------------

    def describe(self) -> str:
        """The store as a user names it: ``etcd at URL,URL``."""
        return f"etcd at {self._members.describe()}"

    def _call(
        self,
        path: str,
        body: dict[str, Any],
        *,
        backoff: Backoff | None = None,
        unknown_ok: bool = True,
    ) -> dict[str, Any]:
        """POST one request, failing over and retrying what etcd says may be
        retried until the deadline; returns the JSON answer or raises a
        mapped error. ``unknown_ok=False``: raise ``_OutcomeUnknown`` instead
        of retrying when the request may have been applied."""
        payload = json.dumps(body).encode()
        backoff = backoff or Backoff(self._timeout)
        tried: list[str] = []
        while True:
            endpoint = self._members.current()
            kind, detail, answer = self._attempt(endpoint, path, payload, backoff)
            if kind is None:
                return answer
            tried.append(f"{endpoint.url}: {detail}")
            log.debug("etcd %s on %s failed (%s): %s", path, endpoint.url, kind.value, detail)
            if kind is Failure.FATAL:
                raise TlsRefused(
                    f"etcd at {endpoint.url} refused the TLS connection: {detail} "
                    "(check --store-ca, --store-cert and --store-key)",
                    path=path,
                )
            if kind is Failure.UNKNOWN and not unknown_ok:
                raise _OutcomeUnknown(detail, path=path)
            if not backoff.wait():
                raise StoreError(
                    f"the store ({self.describe()}) is unavailable: no member answered "
                    f"within {self._timeout:g}s",
                    path=path,
                    tried="; ".join(tried[-len(self._members.endpoints) :]),
                )

    def _attempt(
        self, endpoint: Endpoint, path: str, payload: bytes, backoff: Backoff
    ) -> tuple[Failure | None, str, dict[str, Any]]:
        """One try on one member: (None, "", answer) or (kind, why, {})."""
        timeout = attempt_timeout(backoff, len(self._members.endpoints), self._timeout)
        conn = self._pooled(endpoint)
        reused = conn is not None
        if conn is None:
            try:
                conn = endpoint.connect(timeout)
            except OSError as exc:
                self._members.failed(endpoint)
                if tls_refused(exc):
                    return Failure.FATAL, str(exc), {}
                return Failure.SAFE, str(exc) or type(exc).__name__, {}
        elif conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.request("POST", path, body=payload, headers=LEADER_HEADERS)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._drop_pool(endpoint)
            if not reused or isinstance(exc, TimeoutError):
                # A fresh connection that breaks, or a member that does not
                # answer in time: set it aside. (A reused one may just have
                # been closed while idle: the next try opens a new one.)
                self._members.failed(endpoint)
            if tls_refused(exc):
                return Failure.FATAL, str(exc), {}
            return Failure.UNKNOWN, str(exc) or type(exc).__name__, {}
        try:
            answer: dict[str, Any] = json.loads(data or b"{}")
        except ValueError:
            conn.close()
            self._members.failed(endpoint)
            return Failure.UNKNOWN, f"an answer that is not JSON (HTTP {resp.status})", {}
        self._give_back(endpoint, conn)
        if "error" in answer or resp.status != 200:
            code, message = error_fields(answer)
            kind = classify_answer(code, message, resp.status)
            if kind is None:
                raise self._error(answer, path)
            self._members.failed(endpoint)
            return kind, message, {}
        rev = _revision(answer)
        if rev > self._seen:
            self._seen = rev  # a plain int store: a lost race only lowers it
        return None, "", answer

    def _pooled(self, endpoint: Endpoint) -> http.client.HTTPConnection | None:
        """An idle connection to ``endpoint``; idle ones to other members
        are closed (the client has moved on from them)."""
        stale: list[http.client.HTTPConnection] = []
        found: http.client.HTTPConnection | None = None
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            keep: list[tuple[Endpoint, http.client.HTTPConnection]] = []
            for ep, conn in self._pool:
                if ep is not endpoint:
                    stale.append(conn)
                elif found is None:
                    found = conn
                else:
                    keep.append((ep, conn))
            self._pool = keep
        for conn in stale:
            conn.close()
        return found

    def _drop_pool(self, endpoint: Endpoint) -> None:
        with self._lock:
            stale = [c for ep, c in self._pool if ep is endpoint]
            self._pool = [(ep, c) for ep, c in self._pool if ep is not endpoint]
        for conn in stale:
            conn.close()

    def _give_back(self, endpoint: Endpoint, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._pool) < _POOL_SIZE:
                self._pool.append((endpoint, conn))
                return
        conn.close()

    @staticmethod
    def _error(answer: dict[str, Any], path: str) -> CoveError:
        code, message = error_fields(answer)
        if code == GRPC_NOT_FOUND:
            return NotFound(message.removeprefix("etcdserver: "), path=path)
        if code == GRPC_INVALID_ARGUMENT:
            return InvalidArgument(message.removeprefix("etcdserver: "), path=path)
        if "compacted" in message:
            return WatchCompacted(message, path=path)
        return EtcdError(message, path=path, code=code)

    # -- reads ---------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        answer = self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", ())
        return _kv(kvs[0]) if kvs else None

    def range(self, prefix: str, *, end: str | None = None) -> RangeResult:
        answer = self._call("/v3/kv/range", _key_range(prefix, end))
        return RangeResult(tuple(_kv(kv) for kv in answer.get("kvs", ())), _revision(answer))

    def keys(self, prefix: str, *, end: str | None = None) -> RangeResult:
        answer = self._call("/v3/kv/range", {**_key_range(prefix, end), "keys_only": True})
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
        since = self._seen  # every write of this transaction comes after it
        backoff = Backoff(self._timeout)
        while True:
            try:
                answer = self._call("/v3/kv/txn", body, backoff=backoff, unknown_ok=False)
                break
            except _OutcomeUnknown as exc:
                # Sent, but no answer: sending it again could see its own
                # writes fail its compares. Look whether it was applied.
                log.info("etcd transaction outcome unknown (%s); re-checking", exc.message)
                done = self._applied(success, since, backoff)
                if done is not None:
                    return done
                if not backoff.wait():
                    raise StoreError(
                        f"the store ({self.describe()}) is unavailable: no member answered "
                        f"within {self._timeout:g}s",
                        path="/v3/kv/txn",
                    ) from exc
        responses = tuple(
            tuple(_kv(kv) for kv in r.get("response_range", {}).get("kvs", ()))
            for r in answer.get("responses", ())
        )
        return TxnResult(bool(answer.get("succeeded", False)), _revision(answer), responses)

    def _applied(self, success: Sequence[Op], since: int, backoff: Backoff) -> TxnResult | None:
        """The result of a transaction whose answer was lost, when its
        writes are there (every put's key holds its value and lease, written
        in one revision after ``since``); None when they are not or this
        cannot tell (a transaction that only deletes), and it must be sent
        again (its compares are then judged afresh)."""
        puts = [op for op in success if isinstance(op, Put)]
        if not puts:
            return None
        revisions: set[int] = set()
        for put in puts:
            answer = self._call("/v3/kv/range", {"key": _b64(put.key)}, backoff=backoff)
            kvs = answer.get("kvs", ())
            kv = _kv(kvs[0]) if kvs else None
            if kv is None or kv.value != put.value or kv.lease != put.lease:
                return None
            if kv.mod_revision <= since:
                return None
            revisions.add(kv.mod_revision)
        if len(revisions) != 1:
            return None
        responses: list[tuple[KeyValue, ...]] = []
        for op in success:
            if isinstance(op, Get):  # what it reads now, as after the commit
                target = _key_range(op.key) if op.prefix else {"key": _b64(op.key)}
                got = self._call("/v3/kv/range", target, backoff=backoff)
                responses.append(tuple(_kv(item) for item in got.get("kvs", ())))
            else:
                responses.append(())
        revision = revisions.pop()
        log.info("etcd transaction was applied at revision %s", revision)
        return TxnResult(True, revision, tuple(responses))

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

    def watch(
        self,
        prefix: str,
        start_revision: int | None = None,
        *,
        prev: bool = True,
        end: str | None = None,
    ) -> EtcdWatch:
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
        backoff = Backoff(self._timeout)
        while True:
            endpoint = self._members.current()
            timeout = attempt_timeout(backoff, len(self._members.endpoints), self._timeout)
            try:
                return EtcdWatch(
                    endpoint, prefix, start_revision, timeout, self._members, prev=prev, end=end
                )
            except StoreError as exc:
                self._members.failed(endpoint)
                if not backoff.wait():
                    raise StoreError(
                        f"the store ({self.describe()}) is unavailable: cannot start a watch",
                        error=exc.message,
                    ) from exc

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
