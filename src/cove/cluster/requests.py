"""Acting on a container wherever it lives: a change asked on one host
(``cove rm web`` on h1) is written to the store as a request for the node
that owns the container (``cluster/requests/<node>/<token>``), which that
node's agent carries out with its own local code path and answers in the
same key. The asking side waits, bounded, for the answer.

Each agent watches only its own node's requests. A request for a node whose
agent is down fails at once with a message naming the node, except ``rm``,
which stays as a mark: the owner removes the container when it returns.
Answers nobody collected (the asker gave up) are deleted after
``ANSWER_TTL`` seconds by the owner.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from cove.clock import Clock
from cove.cluster.nodes import is_alive
from cove.errors import CoveError, InvalidArgument, Unavailable, from_json
from cove.store.base import Compare, Delete, Put, Store

log = logging.getLogger(__name__)

CLUSTER_REQUESTS = "cluster/requests/"
REMOVE = "rm"
STOP = "stop"
START = "start"
ANSWER_TTL = 120.0
DEFAULT_TIMEOUT = 30.0

# Carries out one request on the owner: (container name, container id,
# arguments) -> an answer (JSON). Raises CoveError to refuse.
Handler = Callable[[str, str, Mapping[str, Any]], Mapping[str, Any]]


def _encode(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def requests_prefix(node: str) -> str:
    return f"{CLUSTER_REQUESTS}{node}/"


class RemoteRequests:
    """The asking side."""

    def __init__(
        self, store: Store, clock: Clock, node: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._store = store
        self._clock = clock
        self._node = node
        self.timeout = timeout

    def ask(
        self,
        owner: str,
        op: str,
        name: str,
        cid: str,
        args: Mapping[str, Any] | None = None,
        *,
        extra_wait: float = 0.0,
    ) -> Mapping[str, Any]:
        """Have ``owner``'s agent do ``op`` on container ``name`` (id ``cid``)
        and return its answer; raises the owner's error, or ``Unavailable``
        when the owner's agent is down or does not answer within the
        timeout (plus ``extra_wait``: a stop's grace period, say)."""
        alive = is_alive(self._store, owner)
        if not alive and op != REMOVE:
            raise Unavailable(
                f"container {name} runs on node {owner}, whose agent is down (see cove members):"
                f" {op} it once the agent on {owner} is back",
                container=name,
                node=owner,
            )
        key = requests_prefix(owner) + secrets.token_hex(8)
        body = {
            "op": op,
            "name": name,
            "id": cid,
            "args": dict(args or {}),
            "from": self._node,
            "created": self._clock.time(),
        }
        raw = _encode(body)
        self._store.put(key, raw)
        if not alive:
            raise Unavailable(
                f"container {name} runs on node {owner}, whose agent is down (see cove members):"
                f" it is marked for removal and is removed when the agent on {owner} is back",
                container=name,
                node=owner,
            )
        timeout = self.timeout + max(extra_wait, 0.0)
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            kv = self._store.get(key)
            if kv is None:
                raise Unavailable(f"the request to node {owner} vanished", node=owner)
            answer = json.loads(kv.value)
            if answer.get("done"):
                self._store.delete(key)
                if answer.get("error"):
                    raise from_json(answer["error"])
                result: Mapping[str, Any] = answer.get("result") or {}
                return result
            if time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(pause * 1.5, 0.25)
        # Too late: withdraw the request unless it was answered meanwhile (a
        # removal stays: the owner carries it out when it can).
        if op != REMOVE:
            withdrawn = self._store.txn([Compare.value_is(key, raw)], [Delete(key)]).succeeded
            if not withdrawn:
                return self.ask_again(key, owner)
        raise Unavailable(
            f"node {owner} did not carry out {op} of container {name} within"
            f" {timeout:g} s: is its agent stuck? (see cove members; its log)"
            + (" The container stays marked for removal." if op == REMOVE else ""),
            container=name,
            node=owner,
        )

    def ask_again(self, key: str, owner: str) -> Mapping[str, Any]:
        kv = self._store.get(key)
        if kv is None:
            raise Unavailable(f"the request to node {owner} vanished", node=owner)
        answer = json.loads(kv.value)
        self._store.delete(key)
        if answer.get("error"):
            raise from_json(answer["error"])
        result: Mapping[str, Any] = answer.get("result") or {}
        return result


class RequestServer:
    """The owning side: carries out this node's requests, one at a time,
    when they arrive (``kick``) and on each periodic pass."""

    def __init__(
        self, store: Store, clock: Clock, node: str, handlers: Mapping[str, Handler]
    ) -> None:
        self._store = store
        self._clock = clock
        self._prefix = requests_prefix(node)
        # Whether the last pass found no request at all (nothing to answer,
        # no answer to expire): the periodic pass of a watched server can
        # then be skipped (``ContainerParts``).
        self.idle = False
        self._handlers = dict(handlers)

    @property
    def prefix(self) -> str:
        return self._prefix

    def run_once(self) -> int:
        """Carry out every pending request; returns how many."""
        done = 0
        now = self._clock.time()
        kvs = self._store.range(self._prefix).kvs
        self.idle = not kvs
        for kv in kvs:
            try:
                req = json.loads(kv.value)
            except ValueError:
                req = None
            if not isinstance(req, dict):
                log.warning("dropping a malformed request %s", kv.key)
                self._store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
                continue
            if req.get("done"):
                if now - float(req.get("answered", now)) > ANSWER_TTL:
                    self._store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
                continue
            answer = self._carry_out(req)
            # Only if the asker has not withdrawn it meanwhile.
            self._store.txn(
                [Compare.mod_is(kv.key, kv.mod_revision)],
                [Put(kv.key, _encode({**req, **answer, "done": True, "answered": now}))],
            )
            done += 1
        return done

    def _carry_out(self, req: Mapping[str, Any]) -> dict[str, Any]:
        op, name, cid = str(req.get("op")), str(req.get("name")), str(req.get("id"))
        handler = self._handlers.get(op)
        args = req.get("args") or {}
        if handler is None or not isinstance(args, dict):
            err: CoveError = InvalidArgument(f"malformed request {op!r} for container {name}")
            return {"error": err.to_json()}
        log.info("carrying out %s of container %s for node %s", op, name, req.get("from"))
        try:
            return {"result": dict(handler(name, cid, args))}
        except CoveError as exc:
            log.warning("%s of container %s for node %s: %s", op, name, req.get("from"),
                        exc.message)  # fmt: skip
            return {"error": exc.to_json()}
        except (TypeError, ValueError) as exc:  # hostile or broken arguments
            err = InvalidArgument(f"malformed request {op!r} for container {name}: {exc}")
            return {"error": err.to_json()}
