"""Catalog writes: nodes, service instances and checks.

Every write is one optimistic store transaction (``txn.transact``), so a
failing request writes nothing and concurrent writers never lose updates.
The agent endpoints (``register_service`` ...) act for this agent's node;
``catalog_register`` acts for any node, as Consul's /v1/catalog/register.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from cove.clock import Clock
from cove.codec import dumps, loads
from cove.errors import InvalidArgument, NotFound
from cove.registry import types as t
from cove.registry.decode import check_from_json, fold, service_from_json, string_map, text
from cove.registry.txn import Tx, in_process, transact
from cove.store.base import Delete, Put, Store

log = logging.getLogger(__name__)

WRITTEN_DEFINITIONS = 1024  # encoded check definitions kept for the runner


class Catalog:
    def __init__(
        self, store: Store, clock: Clock, node: t.Node, *, consul_service: bool = False
    ) -> None:
        self._store = store
        self._consul_service = consul_service  # ensure_node shows the agent as `consul`
        self._clock = clock
        self.node = node
        # Reading a registration's keys in one call saves etcd round trips;
        # in memory, plain gets are cheaper than a read-only transaction.
        self._prefetch = not in_process(store)
        self._encoded: tuple[t.Node | None, bytes] = (None, b"")  # last node written
        # Check definitions just encoded, by their bytes: the check runner
        # takes them back (``definition``) instead of decoding what this
        # process has just written. Bounded; an OrderedDict because its
        # pop and popitem are atomic across threads.
        self._written: OrderedDict[bytes, t.CheckDefinition] = OrderedDict()

    # -- this agent's node ---------------------------------------------------

    def ensure_node(self, *, lease: int = 0) -> int:
        """Write this node and its passing serfHealth check (tied to
        ``lease`` so the check vanishes, and reads as critical, when the
        agent stops renewing it)."""

        def plan(tx: Tx) -> None:
            self._put_node(tx, self.node)
            key = t.check_key("", self.node.name, t.SERF_CHECK)
            serf = t.HealthCheck(
                id=t.SERF_CHECK,
                name="Serf Health Status",
                node=self.node.name,
                status=t.Status.PASSING,
                output="Agent alive and reachable",
            )
            current = tx.get(key)
            if (
                current is None
                or current.lease != lease
                or t.HealthCheck.from_json(_loads(current.value)) != serf
            ):
                tx.add(Put(key, dumps(serf.to_json()), lease))
            if self._consul_service:
                self._put_consul_service(tx)

        return transact(self._store, plan)[1]

    def _put_consul_service(self, tx: Tx) -> None:
        """The agent in its own catalog, as a Consul server is: a ``consul``
        service (ID ``consul``, port 8300) on its node, written only when
        it is missing or differs. It is no agent service (Consul's leader
        registers it, so /v1/agent/services does not list it)."""
        inst = t.ServiceInstance(
            id=t.CONSUL_SERVICE,
            name=t.CONSUL_SERVICE,
            node=self.node.name,
            port=8300,
            meta={
                "raft_version": "3",
                "serf_protocol_current": "2",
                "serf_protocol_max": "5",
                "serf_protocol_min": "1",
                "version": t.CONSUL_VERSION,
            },
        )
        key = t.service_key(inst.name, inst.node, inst.id)
        value = inst.to_json()
        current = tx.get(key)
        if current is None or _loads(current.value) != value:
            tx.add(Put(key, dumps(value)))

    def _put_node(self, tx: Tx, node: t.Node) -> None:
        # Written only when it changed: a node write wakes every health query.
        # Every registration passes here: compare the bytes first, and
        # encode the agent's own (unchanging) node once.
        if self._encoded[0] is not node:
            self._encoded = (node, dumps(node.to_json()))
        value = self._encoded[1]
        key = t.node_key(node.name)
        current = tx.get(key)
        if current is None or (current.value != value and _loads(current.value) != node.to_json()):
            tx.add(Put(key, value))

    # -- agent services and checks -------------------------------------------

    def register_service(
        self,
        inst: t.ServiceInstance,
        checks: Sequence[tuple[t.CheckDefinition, t.Status]],
        *,
        replace_existing_checks: bool = False,
        enable_script_checks: bool = False,
    ) -> int:
        if not enable_script_checks:
            for c, _ in checks:
                if c.kind is t.CheckKind.SCRIPT:
                    raise InvalidArgument(_SCRIPTS_DISABLED)
        node = self.node.name

        def plan(tx: Tx) -> None:
            self._put_node(tx, self.node)
            old = _agent_entry(tx, node, inst.id)
            if old is not None and old[0] != inst.name:
                self._drop_service(tx, node, inst.id, old)
                old = None
            keep = [c.id for c, _ in checks]
            check_ids = list(keep)
            for cid in old[1] if old else ():
                if cid in keep:
                    continue
                if replace_existing_checks:
                    tx.add(Delete(t.agent_check_key(node, cid)))
                    tx.add(Delete(t.check_key(inst.name, node, cid)))
                else:
                    check_ids.append(cid)
            _put_agent_entry(tx, node, inst.id, inst.name, check_ids)
            tx.add(Put(t.service_key(inst.name, node, inst.id), dumps(inst.to_json())))
            for definition, status in checks:
                self._put_check(tx, definition, status, inst)

        keys: list[str] = []
        if self._prefetch:
            keys = [t.node_key(node), t.agent_service_key(node, inst.id)]
            for definition, _ in checks:
                keys += [
                    t.agent_check_key(node, definition.id),
                    t.check_key(inst.name, node, definition.id),
                ]
        return transact(self._store, plan, keys)[1]

    def deregister_service(self, service_id: str) -> int:
        node = self.node.name

        def plan(tx: Tx) -> None:
            entry = _agent_entry(tx, node, service_id)
            if entry is None:
                raise NotFound(
                    f'Unknown service ID "{service_id}". Ensure that the service ID is '
                    "passed, not the service name."
                )
            self._drop_service(tx, node, service_id, entry)

        return transact(self._store, plan)[1]

    def _drop_service(
        self, tx: Tx, node: str, service_id: str, entry: tuple[str, list[str]]
    ) -> None:
        name, check_ids = entry
        tx.add(Delete(t.agent_service_key(node, service_id)))
        tx.add(Delete(t.service_key(name, node, service_id)))
        for cid in check_ids:
            tx.add(Delete(t.agent_check_key(node, cid)))
            tx.add(Delete(t.check_key(name, node, cid)))

    def register_check(
        self, definition: t.CheckDefinition, status: t.Status, *, enable_script_checks: bool
    ) -> int:
        if definition.kind is t.CheckKind.SCRIPT and not enable_script_checks:
            raise InvalidArgument(_SCRIPTS_DISABLED)
        if definition.kind is t.CheckKind.NONE:
            raise InvalidArgument(
                "Invalid check: exactly one of Args, HTTP, TCP, UDP, GRPC, H2PING or TTL"
                " is required"
            )
        node = self.node.name

        def plan(tx: Tx) -> None:
            inst = None
            if definition.service_id:
                entry = _agent_entry(tx, node, definition.service_id)
                raw = None
                if entry is not None:
                    raw = tx.get_json(t.service_key(entry[0], node, definition.service_id))
                if entry is None or raw is None:
                    # Consul: 404 (agent/agent_endpoint.go, AgentRegisterCheck).
                    raise NotFound(f'ServiceID "{definition.service_id}" does not exist')
                inst = t.ServiceInstance.from_json(raw)
                if definition.id not in entry[1]:
                    _put_agent_entry(tx, node, inst.id, inst.name, [*entry[1], definition.id])
            self._put_node(tx, self.node)
            self._put_check(tx, definition, status, inst)

        return transact(self._store, plan)[1]

    def _put_check(
        self,
        tx: Tx,
        definition: t.CheckDefinition,
        status: t.Status,
        inst: t.ServiceInstance | None,
    ) -> None:
        node = self.node.name
        if inst is not None and (
            definition.service_id != inst.id or definition.service_name != inst.name
        ):
            definition = replace(definition, service_id=inst.id, service_name=inst.name)
        akey = t.agent_check_key(node, definition.id)
        old_def = tx.get_json(akey)
        if old_def is not None:
            old = t.CheckDefinition.from_json(old_def)
            if old.service_name != definition.service_name:
                tx.add(Delete(t.check_key(old.service_name, node, old.id)))
                old_def = None  # a check that changes service starts afresh
            if old.service_id and old.service_id != definition.service_id:
                # The check moves to another service: its old owner forgets it.
                entry = _agent_entry(tx, node, old.service_id)
                if entry is not None:
                    rest = [c for c in entry[1] if c != old.id]
                    _put_agent_entry(tx, node, old.service_id, entry[0], rest)
        key = t.check_key(definition.service_name, node, definition.id)
        previous = tx.get_json(key)
        output = ""
        if previous is not None and old_def is not None:
            # Re-registering keeps what the check last saw, so an idempotent
            # registration does not flap a passing service to critical.
            status = t.Status(previous.get("Status", status))
            output = previous.get("Output", "")
        state = t.HealthCheck(
            id=definition.id,
            name=definition.name,
            node=node,
            status=status,
            service_id=definition.service_id,
            service_name=definition.service_name,
            service_tags=inst.tags if inst else (),
            notes=definition.notes,
            output=output,
            kind=definition.kind,
            interval=definition.interval,
            timeout=definition.timeout if definition.kind is not t.CheckKind.TTL else 0.0,
        )
        value = dumps(definition.to_json())
        self._written[value] = definition
        if len(self._written) > WRITTEN_DEFINITIONS:
            with contextlib.suppress(KeyError):
                self._written.popitem(last=False)
        tx.add(Put(akey, value))
        tx.add(Put(key, dumps(state.to_json())))

    def definition(self, value: bytes) -> t.CheckDefinition:
        """The check definition stored as ``value``: the object itself when
        this catalog has just written it, else decoded. Raises ``ValueError``
        or ``KeyError`` for malformed bytes."""
        found = self._written.pop(value, None)
        if found is not None:
            return found
        return t.CheckDefinition.from_json(_loads(value))

    def set_maintenance(self, service_id: str | None, enable: bool, reason: str) -> int:
        """Put a service of this agent (or, with None, the whole node) into
        maintenance: a critical check Consul clients recognise by its ID."""
        node = self.node.name
        notes = reason or "Maintenance mode is enabled for this " + (
            "service" if service_id else "node"
        )

        def plan(tx: Tx) -> None:
            if service_id is None:
                key = t.check_key("", node, NODE_MAINTENANCE)
                if not enable:
                    if tx.get(key) is not None:
                        tx.add(Delete(key))
                    return
                state = t.HealthCheck(
                    id=NODE_MAINTENANCE,
                    name="Node Maintenance Mode",
                    node=node,
                    status=t.Status.CRITICAL,
                    notes=notes,
                )
                tx.add(Put(key, dumps(state.to_json())))
                return
            entry = _agent_entry(tx, node, service_id)
            if entry is None:
                raise NotFound(f'Unknown service ID "{service_id}"')
            cid = f"{SERVICE_MAINTENANCE}{service_id}"
            name, checks = entry
            if not enable:
                if cid in checks:
                    tx.add(Delete(t.agent_check_key(node, cid)))
                    tx.add(Delete(t.check_key(name, node, cid)))
                    _put_agent_entry(tx, node, service_id, name, [c for c in checks if c != cid])
                return
            raw = tx.get_json(t.service_key(name, node, service_id))
            inst = t.ServiceInstance.from_json(raw) if raw else None
            definition = t.CheckDefinition(
                id=cid,
                name="Service Maintenance Mode",
                service_id=service_id,
                service_name=name,
                notes=notes,
            )
            state = t.HealthCheck(
                id=cid,
                name=definition.name,
                node=node,
                status=t.Status.CRITICAL,
                service_id=service_id,
                service_name=name,
                service_tags=inst.tags if inst else (),
                notes=notes,
            )
            tx.add(Put(t.agent_check_key(node, cid), dumps(definition.to_json())))
            tx.add(Put(t.check_key(name, node, cid), dumps(state.to_json())))
            if cid not in checks:
                _put_agent_entry(tx, node, service_id, name, [*checks, cid])

        return transact(self._store, plan)[1]

    def deregister_check(self, check_id: str) -> int:
        node = self.node.name

        def plan(tx: Tx) -> None:
            raw = tx.get_json(t.agent_check_key(node, check_id))
            if raw is None:
                raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed')
            d = t.CheckDefinition.from_json(raw)
            tx.add(Delete(t.agent_check_key(node, check_id)))
            tx.add(Delete(t.check_key(d.service_name, node, check_id)))
            entry = _agent_entry(tx, node, d.service_id) if d.service_id else None
            if entry is not None:
                rest = [c for c in entry[1] if c != check_id]
                _put_agent_entry(tx, node, d.service_id, entry[0], rest)

        return transact(self._store, plan)[1]

    def check_definitions(self) -> list[t.CheckDefinition]:
        prefix = f"{t.AGENT}{t.seg(self.node.name)}/chk/"
        return [
            t.CheckDefinition.from_json(_loads(kv.value)) for kv in self._store.range(prefix).kvs
        ]

    def check_status(self, check_id: str) -> t.Status | None:
        """The current status of one of this agent's checks (None: unknown)."""
        raw = self._store.get(t.agent_check_key(self.node.name, check_id))
        if raw is None:
            return None
        d = t.CheckDefinition.from_json(_loads(raw.value))
        state = self._store.get(t.check_key(d.service_name, self.node.name, check_id))
        return t.Status(_loads(state.value)["Status"]) if state else None

    def update_check(self, check_id: str, status: t.Status, output: str) -> bool:
        """Set a check's status and output; False when nothing changed.
        ``NotFound`` for a check this agent does not own."""
        node = self.node.name
        output = output[: t.OUTPUT_LIMIT]

        def plan(tx: Tx) -> bool:
            raw = tx.get_json(t.agent_check_key(node, check_id))
            if raw is None:
                raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed')
            d = t.CheckDefinition.from_json(raw)
            key = t.check_key(d.service_name, node, check_id)
            cur = tx.get_json(key)
            if cur is None:
                raise NotFound(f'Unknown check ID "{check_id}"')
            if cur.get("Status") == status.value and cur.get("Output") == output:
                return False
            cur["Status"] = status.value
            cur["Output"] = output
            tx.add(Put(key, dumps(cur)))
            return True

        return transact(self._store, plan)[0]

    # -- /v1/catalog/register and deregister ---------------------------------

    def catalog_register(self, body: Any) -> int:
        d = fold(body, "registration")
        node_name = text(d, "node", "Node")
        address = text(d, "address", "Address")
        if not node_name:
            raise InvalidArgument("Must provide node")
        if not address:
            raise InvalidArgument("Must provide address")
        node = t.Node(
            name=node_name,
            address=address,
            datacenter=self.node.datacenter,
            id=text(d, "id", "ID"),
            tagged_addresses=string_map(d, "taggedaddresses", "TaggedAddresses"),
            meta=string_map(d, "nodemeta", "NodeMeta"),
        )
        inst: t.ServiceInstance | None = None
        if d.get("service") is not None:
            inst, _ = service_from_json(d["service"], node_name)
        raw_checks: list[Any] = []
        if d.get("check") is not None:
            raw_checks.append(d["check"])
        if isinstance(d.get("checks"), list):
            raw_checks.extend(d["checks"])
        checks: list[t.HealthCheck] = []
        for raw in raw_checks:
            cd = fold(raw, "check")
            definition, status = check_from_json(cd)
            sid = text(cd, "serviceid", "ServiceID")
            checks.append(
                t.HealthCheck(
                    id=definition.id,
                    name=definition.name,
                    node=node_name,
                    status=status,
                    service_id=sid,
                    notes=definition.notes,
                    output=text(cd, "output", "Output")[: t.OUTPUT_LIMIT],
                )
            )

        def plan(tx: Tx) -> None:
            self._put_node(tx, node)
            if inst is not None:
                tx.add(Put(t.service_key(inst.name, node_name, inst.id), dumps(inst.to_json())))
            names = {inst.id: inst} if inst else {}
            for chk in checks:
                service_name = ""
                tags: tuple[str, ...] = ()
                if chk.service_id:
                    owner = names.get(chk.service_id) or self._find_instance(
                        tx, node_name, chk.service_id
                    )
                    if owner is None:
                        raise InvalidArgument(f'Unknown service ID "{chk.service_id}" for check')
                    service_name, tags = owner.name, owner.tags
                full = replace(chk, service_name=service_name, service_tags=tags)
                tx.add(Put(t.check_key(service_name, node_name, chk.id), dumps(full.to_json())))

        return transact(self._store, plan)[1]

    def _find_instance(self, tx: Tx, node: str, service_id: str) -> t.ServiceInstance | None:
        for kv in tx.range(t.SERVICES):
            parts = kv.key[len(t.SERVICES) :].split("/")
            if parts[1:] == [t.seg(node), t.seg(service_id)]:
                return t.ServiceInstance.from_json(_loads(kv.value))
        return None

    def catalog_deregister(self, body: Any) -> int:
        d = fold(body, "deregistration")
        node_name = text(d, "node", "Node")
        if not node_name:
            raise InvalidArgument("Must provide node")
        service_id = text(d, "serviceid", "ServiceID")
        check_id = text(d, "checkid", "CheckID")

        def plan(tx: Tx) -> None:
            node_seg = t.seg(node_name)
            for kv in tx.range(t.SERVICES):
                parts = kv.key[len(t.SERVICES) :].split("/")
                if parts[1] != node_seg:
                    continue
                if not check_id and (not service_id or parts[2] == t.seg(service_id)):
                    tx.add(Delete(kv.key))
            for kv in (*tx.range(t.CHECKS), *tx.range(f"{t.NODE_CHECKS}{node_seg}/")):
                hc = t.HealthCheck.from_json(_loads(kv.value))
                if hc.node != node_name:
                    continue
                if check_id:
                    hit = hc.id == check_id
                elif service_id:
                    hit = hc.service_id == service_id
                else:
                    hit = True
                if hit:
                    tx.add(Delete(kv.key))
            if not service_id and not check_id:
                tx.add(Delete(t.node_key(node_name)))
                tx.add(Delete(f"{t.AGENT}{node_seg}/", prefix=True))

        return transact(self._store, plan)[1]


NODE_MAINTENANCE = "_node_maintenance"
SERVICE_MAINTENANCE = "_service_maintenance:"

_SCRIPTS_DISABLED = (
    "Scripts are disabled on this agent; to enable, configure "
    "'enable_script_checks' or 'enable_local_script_checks' to true"
)


def _agent_entry(tx: Tx, node: str, service_id: str) -> tuple[str, list[str]] | None:
    """This agent's record of a service: its name and its check IDs."""
    raw = tx.get_json(t.agent_service_key(node, service_id))
    if raw is None:
        return None
    return str(raw["Name"]), [str(c) for c in raw.get("Checks", [])]


def _put_agent_entry(tx: Tx, node: str, service_id: str, name: str, checks: list[str]) -> None:
    tx.add(Put(t.agent_service_key(node, service_id), dumps({"Name": name, "Checks": checks})))


def _loads(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = loads(raw)
    return data
