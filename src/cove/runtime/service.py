"""Containers: run, stop, start, remove, connect and disconnect.

Every change writes the store first (one transaction that also compares
the networks it attaches to are present, so a concurrent ``network rm``
cannot strand an endpoint), then brings the kernel in line through the
reconciler, then asks the supervisor. ``run`` records its intent on local
disk before its first write (see ``cove.runtime.intents``): a failure is
rolled back before the error is answered, or, when the rollback itself
cannot reach the store, the error says so and the rollback is finished
later; a crash is converged by the next reconcile and ``adopt``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cove import naming
from cove.clock import Clock
from cove.cluster.nodes import owned
from cove.cluster.requests import REMOVE, START, STOP, RemoteRequests
from cove.datapath.base import ContainerDatapath, host_veth_name
from cove.errors import (
    AlreadyExists,
    Conflict,
    CoveError,
    InvalidArgument,
    NotFound,
    Unavailable,
    from_json,
    storage_error,
)
from cove.image import runconfig
from cove.image.store import Image, ImageStore
from cove.ipam.allocator import Ipam
from cove.model import (
    CONTAINERS,
    IPAM,
    NETWORKS,
    Endpoint,
    IPAddress,
    Network,
    ServiceSpec,
    legacy_endpoint_key,
)
from cove.network.spec import check_label
from cove.runtime import resources
from cove.runtime.client import SupervisorClient
from cove.runtime.intents import Intent, IntentLog, Phase
from cove.runtime.keys import (
    CLUSTER_STATUS,
    container_key,
    find_container,
    legacy_container_key,
    name_claim,
    name_key,
    status_key,
    statuses_of,
)
from cove.runtime.launch import LaunchSpec
from cove.runtime.mounts import Kind, Mount, check_sources
from cove.runtime.reconcile import ContainerReconciler, container_endpoints, read_snapshot
from cove.runtime.spec import (
    NETWORK_HOST,
    Attachment,
    Container,
    Desired,
    PortMapping,
    RunSpec,
    check_port_families,
)
from cove.runtime.state import ProcessState, Status, restart_text
from cove.runtime.view import AttachInfo, ContainerView, ExecInfo
from cove.runtime.volumes import ANONYMOUS, VolumeStore
from cove.store.base import Compare, Delete, Put, Store, local_store

log = logging.getLogger(__name__)

# --init: tini, built static so it runs whatever the container's libraries.
INIT = "/usr/bin/tini-static"
_EPHEMERAL = (32768, 61000)  # free host ports for -P, as Docker's
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ATTEMPTS = 16
# On a shared store, an address whose owner is not (yet) a container is
# released only after this long: another host may be in the middle of a run.
_ORPHAN_GRACE = 30.0


def no_fault(point: str) -> None:
    """The default fault hook: nothing. Tests make the agent stop or die at
    a named point of a request (see ``cove.agent.faults``)."""


def owner_of(cid: str) -> str:
    return f"container:{cid}"


def probe_host_port(mapping: PortMapping) -> None:
    """``Conflict`` when a host program already holds the port, on either
    family it is published on; ``InvalidArgument`` when the host IP is not
    one of the host's addresses."""
    if mapping.host_ip is not None:
        targets = [(mapping.host_ip.version, str(mapping.host_ip))]
    else:
        targets = [(4, "0.0.0.0"), (6, "::")]
    kind = socket.SOCK_STREAM if mapping.proto == "tcp" else socket.SOCK_DGRAM
    for version, host in targets:
        try:
            sock = socket.socket(socket.AF_INET if version == 4 else socket.AF_INET6, kind)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT and mapping.host_ip is None:
                continue  # a host without IPv6
            raise
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if version == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, mapping.host_port))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and mapping.host_ip is not None:
                    raise InvalidArgument(
                        f"cannot publish {mapping}: {host} is not an address of this host",
                        port=str(mapping),
                    ) from exc
                raise Conflict(
                    f"host port {mapping.host_port}/{mapping.proto} is already in use",
                    port=str(mapping),
                ) from exc


class ContainerService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        ipam: Ipam,
        reconciler: ContainerReconciler,
        supervisor: SupervisorClient,
        netns: ContainerDatapath,
        logs_dir: Path,
        intents: IntentLog,
        port_probe: Callable[[PortMapping], None] = probe_host_port,
        masked: tuple[Path, ...] = (),
        fault: Callable[[str], None] = no_fault,
        node: str = "",
        remote: RemoteRequests | None = None,
        init: str = INIT,
        images: ImageStore | None = None,
        volumes: VolumeStore | None = None,
    ) -> None:
        self._init = init
        self._volumes = volumes
        self._images = images
        self._store = store
        self._node = node
        self._remote = remote or RemoteRequests(store, clock, node)
        self._shared = local_store(store) is None
        # Addresses without a container, seen at start-up: key -> (mod
        # revision, when seen); released after _ORPHAN_GRACE if still so.
        self._orphans: dict[str, tuple[int, float]] = {}
        # The process states this node last published (container id -> JSON).
        self._published: dict[str, dict[str, Any]] | None = None
        self._publishing = threading.RLock()  # one writer of cluster/status/ at a time
        self._name_by_id: dict[str, str] = {}  # container id -> name, for the records
        # Containers removed lately: their last exit is not published again.
        self._gone: deque[str] = deque(maxlen=1024)
        self._clock = clock
        self._ipam = ipam
        self._rec = reconciler
        self._sup = supervisor
        self._netns = netns
        self._logs = logs_dir
        self._probe = port_probe
        self._masked = tuple(str(p) for p in masked)
        self._intents = intents
        self._fault = fault
        # Starts that ``adopt`` could not finish (a full disk): id -> name.
        self._unstarted: dict[str, str] = {}
        # run --rm: id -> name, removed once exited (``remove_exited``).
        self._auto: dict[str, str] = {}
        # Runs under way: id -> (name, the volumes it mounts), so that
        # ``volume rm`` counts a container not yet in the store as a user.
        self._starting: dict[str, tuple[str, frozenset[str]]] = {}

    # -- reading -------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The name of the container ``ref`` means: a name, a full ID or a
        unique ID prefix (``NotFound``; ``Conflict`` when ambiguous)."""
        if ref and find_container(self._store, ref) is not None:
            return ref
        pairs = []
        for kv in self._store.range(CONTAINERS).kvs:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(kv.value)
                pairs.append((str(data["name"]), str(data["id"])))
        return naming.resolve(ref, pairs, "container")

    def get(self, ref: str) -> Container:
        name = self.resolve(ref)
        kv = find_container(self._store, name)
        if kv is None:
            raise NotFound(f"container {ref} not found", container=ref)
        return Container.from_json(json.loads(kv.value))

    def owns(self, c: Container) -> bool:
        """Whether this agent runs ``c`` (an empty node: a single-host record).
        On a store of this host alone (SQLite, memory) every container is
        this agent's, whatever node it was made under (the host was renamed)."""
        return not self._shared or owned(c.node, self._node)

    def node_of(self, c: Container) -> str:
        return c.node or self._node

    def check_local(self, name: str, what: str) -> Container:
        """``c`` if it runs on this node; ``Conflict`` naming its node otherwise
        (``exec`` and ``logs`` work only where the container runs)."""
        c = self.get(name)
        if not self.owns(c):
            raise Conflict(
                f"container {name} runs on node {c.node}: run `cove {what}` on {c.node}"
                f" (with its agent's socket)",
                container=name,
                node=c.node,
            )
        return c

    def endpoints(self, c: Container) -> list[Endpoint]:
        return container_endpoints(self._store, c)

    def inspect(self, name: str) -> ContainerView:
        return self._inspect(self.get(name))

    def _inspect(self, c: Container, endpoints: list[Endpoint] | None = None) -> ContainerView:
        state = self._sup.state(c.id) if self.owns(c) else self._remote_state(c)
        state = state or ProcessState(c.id)
        c = c if c.node else replace(c, node=self._node)
        eps = self.endpoints(c) if endpoints is None else endpoints
        return ContainerView(c, tuple(eps), state, self.log_path(c.id))

    def list_all(self, all_: bool = False) -> list[ContainerView]:
        snap = read_snapshot(self._store)
        states = self._sup.states()
        remote: dict[str, ProcessState] = {}
        if any(not self.owns(c) for c in snap.containers.values()):
            remote = self._remote_states()
        out = []
        for c in sorted(snap.containers.values(), key=lambda c: c.name):
            state = (states if self.owns(c) else remote).get(c.id) or ProcessState(c.id)
            if not all_ and state.status not in (Status.RUNNING, Status.RESTARTING):
                continue
            eps = snap.endpoints.get(c.id, [])
            c = c if c.node else replace(c, node=self._node)
            out.append(ContainerView(c, tuple(eps), state, self.log_path(c.id)))
        return out

    def log_path(self, cid: str) -> Path:
        return self._logs / cid / "log"

    def _remote_state(self, c: Container) -> ProcessState | None:
        kv = self._store.get(status_key(c.node, c.id)) if c.node else None
        if kv is None:
            return None
        return ProcessState.from_json(json.loads(kv.value))

    def _remote_states(self) -> dict[str, ProcessState]:
        out: dict[str, ProcessState] = {}
        for kv in self._store.range(CLUSTER_STATUS).kvs:
            try:
                state = ProcessState.from_json(json.loads(kv.value))
            except (ValueError, KeyError):
                continue
            out[state.id] = state
        return out

    def publish_states(self, only: str | None = None) -> None:
        """Write this node's containers' process states that changed since
        the last call to ``cluster/status/`` (unchanged ones cost nothing),
        so other hosts show them; ``only``: just that container."""
        if not self._node:
            return
        if self._published is None:
            published: dict[str, dict[str, Any]] = {}
            for kv in self._store.range(statuses_of(self._node)).kvs:
                with contextlib.suppress(ValueError, KeyError):
                    data = json.loads(kv.value)
                    if data.get("node") == self._node:
                        published[str(data["id"])] = data
            self._published = published
        with self._publishing:
            # The supervisor holds this node's containers only: no store read.
            states = self._sup.states()
            mine = ({only} & set(states)) if only is not None else set(states)
            mine -= set(self._gone)  # being removed: its record is deleted
            for cid in sorted(mine):
                self._put_state(states[cid])
            if only is None:
                for cid in sorted(set(self._published) - mine):
                    self._store.delete(status_key(self._node, cid))
                    del self._published[cid]

    def publish_state(self, state: ProcessState, name: str = "") -> None:
        """Publish one state the supervisor just took (its ``watch`` feed,
        in order: an exit, then a restart), unless a newer one was."""
        if not self._node:
            return
        if self._published is None:
            self.publish_states()  # first read what is there
            return
        with self._publishing:
            if state.id in self._gone:
                return
            if name:
                self._name_by_id[state.id] = name
            if self._older(state, self._published.get(state.id)):
                return
            self._put_state(state)

    @staticmethod
    def _older(state: ProcessState, published: dict[str, Any] | None) -> bool:
        if published is None:
            return False
        shown = (float(published.get("started_at", 0.0)), float(published.get("finished_at", 0.0)))
        return (state.started_at, state.finished_at) < shown

    def _put_state(self, state: ProcessState) -> None:
        """``cluster/status/<node>/<id>``, with the container's name for the event
        stream (``events.change``: die, start, restart); only if changed."""
        assert self._published is not None
        cid = state.id
        before = self._published.get(cid) or {}
        name = self._name_by_id.get(cid) or str(before.get("name") or "") or self._name_of(cid)
        data = {**state.to_json(), "node": self._node, "name": name}
        if before != data:
            self._store.put(status_key(self._node, cid), _encode(data))
            self._published[cid] = data

    def _name_of(self, cid: str) -> str:
        """A container's name when no feed told it (a state published before
        the supervisor's first word): one store read, on a change only."""
        for c in read_snapshot(self._store, self._node).containers.values():
            self._name_by_id.setdefault(c.id, c.name)
        return self._name_by_id.get(cid, "")

    def _publish_one(self, cid: str) -> None:
        try:
            self.publish_states(only=cid)
        except CoveError as exc:  # the periodic pass publishes it later
            log.debug("cannot publish the state of %s yet: %s", cid[:12], exc.message)

    def exec_info(self, ref: str) -> ExecInfo:
        c = self.check_local(ref, "exec")
        name = c.name
        state = self._sup.states().get(c.id)
        if state is None or state.status is not Status.RUNNING:
            raise Conflict(f"container {name} is not running", container=name)
        return ExecInfo(
            id=c.id, pid=state.pid, env=dict(c.env), workdir=c.workdir,
            capabilities=tuple(sorted(c.capabilities)), seccomp=c.seccomp, user=c.user,
        )  # fmt: skip

    def attach_info(self, ref: str) -> AttachInfo:
        """Where ``cove run -it``/``cove attach`` gets the container's
        terminal or stdin: the supervisor's socket (root only, as exec's
        ``setns`` is), for callers the API lets exec."""
        c = self.check_local(ref, "attach")
        return AttachInfo(
            id=c.id, name=c.name, socket=str(self._sup.socket_path), tty=c.tty,
            interactive=c.interactive,
        )  # fmt: skip

    # -- run -----------------------------------------------------------------

    def run(self, spec: RunSpec) -> ContainerView:
        name = spec.name or naming.generate_name(self._names())
        if find_container(self._store, name) is not None:
            raise AlreadyExists(f"container {name} already exists", container=name)
        networks = [self._network(a.network) for a in spec.attachments]
        if spec.rootfs is not None and not os.path.isdir(spec.rootfs):
            raise InvalidArgument(f"rootfs directory {spec.rootfs} does not exist")
        check_sources(spec.mounts, spec.made_if_missing)
        image = self._image(spec.image) if spec.image else None
        if image is not None:
            conf = runconfig.apply(
                spec.image, image.config, spec.argv, spec.env, spec.workdir, spec.entrypoint
            )
            argv, workdir = conf.argv, conf.workdir
            env = {"PATH": DEFAULT_PATH, **conf.env, "HOSTNAME": spec.hostname or name}
            if not spec.user:
                self._user(image)  # an unknown USER fails the run, not the start
        else:
            argv, workdir = spec.argv, spec.workdir or "/"
            env = {"PATH": DEFAULT_PATH, **spec.env, "HOSTNAME": spec.hostname or name}
            _check_command(spec.argv[0], env["PATH"], spec.rootfs)
        if spec.init:
            self._check_init(spec.rootfs, image is not None)
        spec = replace(spec, mounts=_anonymous_named(spec.mounts, image))
        ports = self._free_ports(spec.ports)
        if networks:
            check_port_families(ports, networks[0])
        self._check_ports(ports)
        cid = secrets.token_hex(32)
        hostname = spec.hostname or (socket.gethostname() if spec.host_network else name)
        env["HOSTNAME"] = hostname
        container = Container(
            id=cid, name=name, argv=argv, hostname=hostname, env=env,
            labels=dict(spec.labels), rootfs=spec.rootfs, workdir=workdir,
            restart=spec.restart, ports=ports, networks=tuple(n.name for n in networks),
            services=spec.services, created=self._clock.time(), cap_add=spec.cap_add,
            cap_drop=spec.cap_drop, seccomp=spec.seccomp, node=self._node,
            restart_max=spec.restart_max, init=spec.init, stop_signal=spec.stop_signal,
            extra_hosts=spec.extra_hosts, auto_remove=spec.auto_remove, image=spec.image,
            image_id=image.id if image is not None else "", mounts=spec.mounts,
            read_only=spec.read_only, dns=spec.dns, dns_search=spec.dns_search,
            dns_options=spec.dns_options, memory=spec.memory, cpus=spec.cpus,
            user=spec.user or (image.config.user if image is not None else ""),
            network_mode=NETWORK_HOST if spec.host_network else "",
            tty=spec.tty, interactive=spec.interactive, console_size=spec.console_size,
        )  # fmt: skip
        intent = Intent(cid, name, container.networks)
        self._intents.record(intent)  # nothing changed yet if this fails
        self._fault("run:recorded")
        endpoints: list[Endpoint] = []
        made = _Made()
        try:
            if spec.mounts:
                vols = frozenset(m.source for m in spec.mounts if m.kind is Kind.VOLUME)
                self._starting[cid] = (name, vols)
                self._make_sources(spec, made)
            with self._rec.claim(cid, name):
                for i, (att, net) in enumerate(zip(spec.attachments, networks, strict=True)):
                    endpoints.append(self._endpoint(container, net, att, f"eth{i}"))
                self._write_new(container, endpoints)
                self._fault("run:stored")
                self._rec.sync(only=cid, name=name)
            self._sup.ensure_running()
            self._sup.create(self._launch_spec(container))
            self._fault("run:created")
            self._sup.start(cid)
        except BaseException as exc:
            log.warning("run %s failed, rolling back: %s", name, exc)
            complete = self._roll_back(intent, container, endpoints)
            self._unmake(made, cid)
            if isinstance(exc, OSError):  # the container's files: a full disk, say
                raise storage_error(exc, str(self._logs), f"cannot run {name}") from exc
            if not complete and isinstance(exc, CoveError):
                note = (
                    f"; container {name} was not started, and what was recorded of it"
                    " is removed once the store can be written again"
                )
                raise from_json({**exc.to_json(), "error": exc.message + note}) from exc
            raise
        finally:
            self._starting.pop(cid, None)
        self._intents.done(cid)
        if container.auto_remove:
            self._auto[cid] = name
        self._fault("run:started")
        self._publish_one(cid)
        log.info("container %s (%s) running", name, cid[:12])
        # From what is in hand, not from the store: the container runs, and
        # a store that just became unreachable must not turn that into an
        # error (the client would take it for "nothing changed").
        return self._inspect(container, endpoints)

    def _roll_back(self, intent: Intent, c: Container, endpoints: list[Endpoint]) -> bool:
        """Undo a failed run before its error is answered; False when part
        of it cannot be undone now (the store is unreachable): that part is
        recorded as an ``abort`` intent, finished by ``finish_intents``."""
        with contextlib.suppress(CoveError):
            self._sup.remove(c.id)  # first: no process may outlive the error
        try:
            self._destroy(c, endpoints, process_gone=True)
        except CoveError as undo:
            log.warning("run %s: rollback incomplete, will finish later: %s", c.name, undo)
            with contextlib.suppress(CoveError):
                self._intents.record(replace(intent, phase=Phase.ABORT))
            return False
        self._intents.done(c.id)
        return True

    def finish_intents(self, *, after_restart: bool = False) -> None:
        """Finish what failed runs could not undo; after a restart, also
        settle the runs a crash interrupted (the store decides: a container
        it holds is started by ``adopt``, one it lacks is released)."""
        if after_restart:
            self._intents.drop_partial()
        for intent in self._intents.all():
            if intent.phase is Phase.PENDING and not after_restart:
                continue  # a run in progress in this agent
            kv = find_container(self._store, intent.name)
            current = Container.from_json(json.loads(kv.value)) if kv is not None else None
            if current is not None and current.id == intent.id and intent.phase is Phase.PENDING:
                self._intents.done(intent.id)
                continue
            log.info("undoing the failed run of container %s (%s)", intent.name, intent.id[:12])
            if current is not None and current.id == intent.id:
                self._destroy(current, self.endpoints(current))
            else:
                for net in intent.networks:
                    self._ipam.release_owner(net, owner_of(intent.id))
                with contextlib.suppress(CoveError):
                    self._sup.remove(intent.id)
            self._intents.done(intent.id)

    def _free_ports(self, ports: tuple[PortMapping, ...]) -> tuple[PortMapping, ...]:
        """Host port 0 (``-p PORT``, ``-P``) replaced by a free port of the
        ephemeral range, as Docker chooses them."""
        taken = {p.claim_key for p in ports if p.host_port}
        out = []
        for p in ports:
            if p.host_port:
                out.append(p)
                continue
            start = secrets.randbelow(_EPHEMERAL[1] - _EPHEMERAL[0])
            span = _EPHEMERAL[1] - _EPHEMERAL[0]
            for i in range(span):
                candidate = replace(p, host_port=_EPHEMERAL[0] + (start + i) % span)
                if candidate.claim_key in taken or any(
                    self._store.get(k) for k in self._claim_keys(candidate, self._node)
                ):
                    continue
                try:
                    self._probe(candidate)
                except (Conflict, InvalidArgument):
                    continue
                taken.add(candidate.claim_key)
                out.append(candidate)
                break
            else:
                raise Conflict(f"no free host port to publish {p.port}/{p.proto} on")
        return tuple(out)

    def _check_init(self, rootfs: str | None, image: bool = False) -> None:
        if rootfs is not None or image:
            # tini lives on the host, not in the container's root
            raise InvalidArgument(
                "--init cannot go with an image or --rootfs yet: run the image's own init"
            )
        if not os.access(self._init, os.X_OK):
            raise InvalidArgument(
                f"--init needs {self._init}: install Debian's tini package (apt-get install tini)"
            )

    def _names(self) -> set[str]:
        return {kv.key.rsplit("/", 1)[-1] for kv in self._store.range(CONTAINERS).kvs}

    def _network(self, ref: str) -> Network:
        """The network ``ref`` names: a name, a full ID or a unique prefix."""
        kv = self._store.get(NETWORKS + ref) if ref else None
        if kv is None:
            nets = [
                Network.from_json(json.loads(kv.value)) for kv in self._store.range(NETWORKS).kvs
            ]
            name = naming.resolve(ref, ((n.name, n.id) for n in nets), "network")
            kv = self._store.get(NETWORKS + name)
            if kv is None:
                raise NotFound(f"network {ref} not found", network=ref)
        return Network.from_json(json.loads(kv.value))

    def _claim_keys(self, p: PortMapping, node: str) -> tuple[str, ...]:
        """Where a host port's claim may be: a single-host record's
        (``ports/<proto>/<port>``), then the node's own (``...@<node>``):
        each host has its own ports, so two hosts may publish the same one."""
        return (p.claim_key, f"{p.claim_key}@{node}") if node else (p.claim_key,)

    def _claim_key(self, p: PortMapping, node: str) -> str:
        """Where a new claim is written."""
        return self._claim_keys(p, node)[-1]

    def _check_ports(self, ports: tuple[PortMapping, ...]) -> None:
        for p in ports:
            for key in self._claim_keys(p, self._node):
                kv = self._store.get(key)
                if kv is not None:
                    holder = json.loads(kv.value).get("container", "?")
                    raise Conflict(
                        f"host port {p.host_port}/{p.proto} is already published by {holder}",
                        port=str(p),
                    )
            self._probe(p)

    def _endpoint(
        self, c: Container, net: Network, att: Attachment, iface: str, netns: str = ""
    ) -> Endpoint:
        owner = owner_of(c.id)
        v4 = v6 = None
        if net.ipv4 is not None or att.ipv4 is not None:
            v4 = self._ipam.allocate(net, owner, 4, att.ipv4)
        if net.ipv6 is not None:
            v6 = self._ipam.allocate(net, owner, 6, att.ipv6)
        elif att.ipv6 is not None:
            raise InvalidArgument(f"network {net.name} has no IPv6 subnet", network=net.name)
        eid = secrets.token_hex(16)
        # The MAC follows the IPv4 address (as Docker's 02:42:<ip>): when an
        # address is reused, neighbours' ARP caches stay right.
        tail = v4.packed if isinstance(v4, ipaddress.IPv4Address) else secrets.token_bytes(4)
        mac = "02:42:" + ":".join(f"{b:02x}" for b in tail)
        return Endpoint(
            id=eid, network=net.name, container_id=c.id, container_name=c.name,
            interface=iface, host_veth=host_veth_name(eid), mac=mac,
            ipv4=v4, ipv6=v6, aliases=att.aliases, hostname=c.hostname,  # type: ignore[arg-type]
            netns=netns or str(self._netns.netns_path(c.id)), services=c.services,
            node=self.node_of(c), labels=dict(c.labels),
        )  # fmt: skip

    def _write_new(self, c: Container, endpoints: list[Endpoint]) -> None:
        # The name's claim keeps it unique in the cluster (and a record of
        # the old layout, not yet moved by its agent, still holds it).
        compares = [Compare.absent(name_key(c.name)), Compare.absent(legacy_container_key(c.name))]
        compares += [Compare.present(NETWORKS + ep.network) for ep in endpoints]
        compares += [Compare.absent(k) for p in c.ports for k in self._claim_keys(p, c.node)]
        node = self.node_of(c)
        puts = [
            Put(container_key(node, c.name), _encode(c.to_json())),
            Put(name_key(c.name), name_claim(node, c.id)),
        ]
        puts += [Put(ep.key, _encode(ep.to_json())) for ep in endpoints]
        claim = _encode({"container": c.name, "id": c.id})
        puts += [Put(self._claim_key(p, c.node), claim) for p in c.ports]
        if self._store.txn(compares, puts).succeeded:
            return
        if find_container(self._store, c.name) is not None:
            raise AlreadyExists(f"container {c.name} already exists", container=c.name)
        for ep in endpoints:
            self._network(ep.network)
        self._check_ports(c.ports)
        raise Conflict(f"container {c.name} could not be created: concurrent change")

    def _launch_spec(self, c: Container) -> LaunchSpec:
        folder = self.log_path(c.id).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, str(folder), f"cannot start container {c.name}") from exc
        argv = (self._init, "--", *c.argv) if c.init else c.argv
        return LaunchSpec(
            id=c.id, name=c.name, argv=argv, stop_signal=c.stop_signal, user=c.user, env=c.env,
            hostname=c.hostname,
            netns="" if c.host_network else str(self._netns.netns_path(c.id)),
            etc_dir=str(self._rec.etc_dir(c.id)),
            log_path=str(self.log_path(c.id)), rootfs=c.rootfs, workdir=c.workdir,
            restart=restart_text(c.restart, c.restart_max), labels=c.labels,
            caps=c.capabilities, seccomp=c.seccomp, masked=self._masked,
            mounts=self._mounts(c), read_only=c.read_only, memory=c.memory, cpus=c.cpus,
            tty=c.tty, interactive=c.interactive, console_size=c.console_size,
            **self._overlay(c),
        )  # fmt: skip

    # -- volumes and -v host directories ----------------------------------------

    def _make_sources(self, spec: RunSpec, made: _Made) -> None:
        """The -v host directories that are missing and the named volumes
        that are new, made as Docker makes them (recorded in ``made``, so a
        run that fails takes them away again)."""
        for source in spec.made_if_missing:
            path = Path(source)
            if os.path.lexists(path):
                continue
            top = path
            while not os.path.lexists(top.parent):
                top = top.parent
            try:
                path.mkdir(mode=0o755, parents=True)
                made.dirs.append(top)
                path.chmod(0o755)  # whatever the agent's umask
            except OSError as exc:
                what = f"cannot make the -v host directory {source}"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise storage_error(exc, source, what) from exc
                raise InvalidArgument(
                    f"{what}: {exc.strerror or exc} (give a directory that can exist there)",
                    mount=source,
                ) from exc
        for m in spec.mounts:
            if m.kind is Kind.VOLUME:
                labels = {ANONYMOUS: ""} if m.anonymous else None
                _, new = self._volume_store().create(m.source, labels)
                if new:
                    made.volumes.append(m.source)

    def _unmake(self, made: _Made, cid: str) -> None:
        for name in made.volumes:
            with contextlib.suppress(CoveError):  # kept while another run uses it
                self._volume_store().remove(name, lambda n: self.volume_users(n, besides=cid))
        for top in made.dirs:
            # only what is still as it was made: empty directories
            for folder in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def _volume_store(self) -> VolumeStore:
        if self._volumes is None:
            raise Unavailable("this agent has no volume store")
        return self._volumes

    def _mounts(self, c: Container) -> tuple[Mount, ...]:
        """The LaunchSpec's mounts: a named volume by its directory (made
        again if it went missing by hand)."""
        if not any(m.kind is Kind.VOLUME for m in c.mounts):
            return c.mounts
        store = self._volume_store()
        return tuple(
            replace(m, source=str(store.create(m.source)[0].mountpoint))
            if m.kind is Kind.VOLUME
            else m
            for m in c.mounts
        )

    def _remove_anonymous(self, c: Container) -> None:
        """Remove the anonymous volumes of the removed container ``c`` (as
        ``docker rm -v``), but one another container mounts too."""
        for m in c.mounts:
            if m.kind is Kind.VOLUME and m.anonymous and self._volumes is not None:
                try:
                    self._volumes.remove(m.source, lambda n: self.volume_users(n, c.id))
                except NotFound:
                    pass
                except CoveError as exc:
                    log.warning("volume %s of %s kept: %s", m.source[:12], c.name, exc.message)

    def volume_users(self, name: str, besides: str = "") -> list[str]:
        """Names of this node's containers (running or not, or being run)
        that mount volume ``name``, but for the container ``besides``."""
        snap = read_snapshot(self._store, self._node)
        users = {
            c.name
            for c in snap.containers.values()
            if c.id != besides
            and self.owns(c)
            and any(m.kind is Kind.VOLUME and m.source == name for m in c.mounts)
        }
        users.update(n for cid, (n, vols) in list(self._starting.items())
                     if cid != besides and name in vols)  # fmt: skip
        return sorted(users)

    # -- images ----------------------------------------------------------------

    def _image(self, ref: str) -> Image:
        if self._images is None:
            raise Unavailable("this agent has no image store")
        return self._images.get(ref)

    def _user(self, image: Image) -> tuple[int, int] | None:
        if not image.config.user or self._images is None:
            return None
        return runconfig.resolve_user(
            image.config.user,
            self._images.find_file(image, "etc/passwd"),
            self._images.find_file(image, "etc/group"),
        )

    def _overlay(self, c: Container) -> dict[str, Any]:
        """The LaunchSpec fields of a container from an image."""
        if not c.image_id:
            return {}
        try:
            image = self._image(c.image_id)
        except NotFound:
            raise Conflict(
                f"image {c.image} of container {c.name} has been removed", container=c.name
            ) from None
        assert self._images is not None
        return {
            "layers": self._images.layer_dirs(image),
            "overlay_dir": str(self._images.container_dir(c.id)),
        }

    def image_users(self, image_id: str) -> list[str]:
        """Names of this node's containers made from the image ``image_id``."""
        snap = read_snapshot(self._store, self._node)
        return sorted(c.name for c in snap.containers.values() if c.image_id == image_id)

    # -- lifecycle -------------------------------------------------------------

    # After the supervisor has acted, the answer is built without the
    # store: a store that fails then must not turn a change that happened
    # into an error.

    def _ask_owner(
        self, op: str, name: str, args: dict[str, Any] | None = None, wait: float = 0.0
    ) -> ContainerView | None:
        """Carry out ``op`` through the owner's agent when ``name`` runs on
        another node (its view afterwards); None when it runs here."""
        c = self.get(name)
        if self.owns(c):
            return None
        answer = self._remote.ask(c.node, op, name, c.id, args, extra_wait=wait)
        if op == REMOVE:
            return self._inspect(c, [])
        c = self.get(name)
        state = answer.get("state")
        view = self._inspect(c)
        if isinstance(state, dict):
            view = replace(view, state=ProcessState.from_json(state))
        return view

    def _own(self, name: str, cid: str) -> Container:
        """The container a request from another node names, if it is still
        the one it meant and runs here."""
        c = self.get(name)
        if c.id != cid:
            raise NotFound(f"container {name} not found", container=name)
        if not self.owns(c):
            raise Conflict(f"container {name} runs on node {c.node}, not here", container=name)
        return c

    def handlers(self) -> dict[str, Callable[[str, str, Any], dict[str, Any]]]:
        """What this node does for requests from other nodes
        (``cove.cluster.requests.RequestServer``)."""

        def stop(name: str, cid: str, args: Any) -> dict[str, Any]:
            self._own(name, cid)
            view = self.stop(name, float(args.get("timeout", 10.0)))
            return {"state": view.state.to_json()}

        def start(name: str, cid: str, args: Any) -> dict[str, Any]:
            self._own(name, cid)
            return {"state": self.start(name).state.to_json()}

        def remove(name: str, cid: str, args: Any) -> dict[str, Any]:
            self._own(name, cid)
            self.remove(
                name, force=bool(args.get("force", False)), volumes=bool(args.get("volumes"))
            )
            return {}

        return {STOP: stop, START: start, REMOVE: remove}

    def stop(self, ref: str, timeout: float = 10.0) -> ContainerView:
        name = self.resolve(ref)
        remote = self._ask_owner(STOP, name, {"timeout": timeout}, wait=timeout)
        if remote is not None:
            return remote
        c = self._set_desired(name, Desired.STOPPED)
        endpoints = self.endpoints(c)
        self._sup.stop(c.id, timeout)
        self._fault("stop:stopped")
        self._publish_one(c.id)
        return self._inspect(c, endpoints)

    def start(self, ref: str) -> ContainerView:
        name = self.resolve(ref)
        remote = self._ask_owner(START, name)
        if remote is not None:
            return remote
        c = self._set_desired(name, Desired.RUNNING)
        self._rec.sync(only=c.id, name=name)
        endpoints = self.endpoints(c)
        self._sup.ensure_running()
        if c.id not in self._sup.states():
            self._sup.create(self._launch_spec(c))
        self._sup.start(c.id)
        self._fault("start:started")
        self._publish_one(c.id)
        return self._inspect(c, endpoints)

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        """Remove the container; with ``volumes`` (``rm -v``), its
        anonymous volumes too (never named ones)."""
        name = self.resolve(ref)
        args = {"force": force, "volumes": True} if volumes else {"force": force}
        if self._ask_owner(REMOVE, name, args) is not None:
            log.info("container %s removed by its node", name)
            return
        c = self.get(name)
        state = self._sup.states().get(c.id)
        if not force and state is not None and state.status is Status.RUNNING:
            raise Conflict(
                f"container {name} is running: stop it first or use rm -f", container=name
            )
        self._destroy(c, self.endpoints(c))
        if volumes or c.auto_remove:
            self._remove_anonymous(c)
        log.info("container %s removed", name)

    def _destroy(
        self, c: Container, endpoints: list[Endpoint], *, process_gone: bool = False
    ) -> None:
        """Delete the store records, then everything derived from them
        (the process too, unless the caller has removed it already)."""
        ops = [op for ep in endpoints for op in _ep_deletes(ep)]
        # Only its own claims: a run that failed on a taken port must not
        # free it for the container that holds it.
        ops += [
            Delete(key)
            for p in c.ports
            for key in self._claim_keys(p, self.node_of(c))
            if self._claimed_by(key, c.id)
        ]
        ops.append(Delete(status_key(self._node if self.owns(c) else c.node, c.id)))
        kv = find_container(self._store, c.name)
        if kv is not None and Container.from_json(json.loads(kv.value)).id == c.id:
            ops.append(Delete(kv.key))
            if kv.key != legacy_container_key(c.name):
                ops.append(Delete(name_key(c.name)))
        # Under the publish lock: no state of it is published once deleted.
        with self._publishing:
            self._store.txn([], ops)
            if self._published is not None:
                self._published.pop(c.id, None)
            self._name_by_id.pop(c.id, None)
            self._gone.append(c.id)
        for net in {ep.network for ep in endpoints} | set(c.networks):
            self._ipam.release_owner(net, owner_of(c.id))

        def process_and_files() -> None:
            if not process_gone:
                with contextlib.suppress(CoveError):
                    self._sup.remove(c.id)
            if c.image_id and self._images is not None:
                self._images.remove_container_dir(c.id)  # unmounted with its process

        # The process and its files on a thread of their own, the kernel's
        # side here: each mostly waits (on the supervisor, the disk, the
        # kernel's RCU for a veth), so both take about as long as the longer.
        # Both are done when this returns.
        wait = _in_background(process_and_files)
        try:
            with self._rec.lock:
                self._rec.reap_now()
                for ep in endpoints:
                    self._netns.delete_link(ep.host_veth)
                self._netns.delete_netns(c.id)
                self._rec.forget(c.id)
        finally:
            wait()
        if c.memory or c.cpus:
            resources.remove(c.id)
        if c.ports:
            self._rec.sync_ports()

    def _claimed_by(self, key: str, cid: str) -> bool:
        kv = self._store.get(key)
        return kv is not None and json.loads(kv.value).get("id") == cid

    def _set_desired(self, name: str, desired: Desired) -> Container:
        for _ in range(_ATTEMPTS):
            kv = find_container(self._store, name)
            if kv is None:
                raise NotFound(f"container {name} not found", container=name)
            c = replace(Container.from_json(json.loads(kv.value)), desired=desired)
            ok = self._store.txn(
                [Compare.mod_is(kv.key, kv.mod_revision)],
                [Put(kv.key, _encode(c.to_json()))],
            ).succeeded
            if ok:
                return c
        raise Conflict(f"container {name} is changing too fast")

    # -- services of a container ---------------------------------------------

    def add_service(self, ref: str, text: str) -> ContainerView:
        """Register the container as an instance of a service, as ``--service
        NAME:PORT[:TAGS]`` would have: on its address (followed when it
        changes), with the same TCP check, gone when the container goes."""
        spec = ServiceSpec.parse(text)
        if spec is None:
            raise InvalidArgument(f"invalid service {text!r}: expected NAME:PORT[:TAG,...]")
        return self._change_services(ref, spec.name, text)

    def remove_service(self, ref: str, service: str) -> ContainerView:
        return self._change_services(ref, service.lower(), None)

    def _change_services(self, ref: str, service: str, text: str | None) -> ContainerView:
        name = self.resolve(ref)
        for _ in range(_ATTEMPTS):
            kv = find_container(self._store, name)
            if kv is None:
                raise NotFound(f"container {ref} not found", container=ref)
            c = Container.from_json(json.loads(kv.value))
            if c.host_network and text is not None:
                raise InvalidArgument(
                    f"container {c.name} uses the host's network and has no address of its own"
                    " to register: register the host's address with the Consul API instead",
                    container=c.name,
                )
            kept = tuple(s for s in c.services if _service_name(s) != service)
            if text is None and len(kept) == len(c.services):
                raise NotFound(f"container {c.name} has no service {service}", container=c.name)
            services = kept if text is None else (*kept, text)
            c2 = replace(c, services=services)
            node = self.node_of(c)
            eps = [
                replace(ep, services=services, labels=dict(c.labels), node=ep.node or node)
                for ep in self.endpoints(c)
            ]
            # A record its node's agent has not moved yet moves with the change.
            ok = self._store.txn(
                [Compare.mod_is(kv.key, kv.mod_revision)],
                [Put(kv.key, _encode(c2.to_json()))]
                + [Delete(legacy_endpoint_key(ep.network, ep.id)) for ep in eps]
                + [Put(ep.key, _encode(ep.to_json())) for ep in eps],
            ).succeeded
            if ok:
                return self._inspect(c2, eps)
        raise Conflict(f"container {name} is changing too fast")

    # -- networks of a running container -----------------------------------

    def connect(
        self, network: str, ref: str, aliases: tuple[str, ...] = (), ip: str = ""
    ) -> ContainerView:
        for a in aliases:
            check_label(a.lower(), "alias")
        requested = _parse_ip(ip) if ip else None
        net = self._network(network)
        network = net.name
        name = self.resolve(ref)
        for _ in range(_ATTEMPTS):
            kv = find_container(self._store, name)
            if kv is None:
                raise NotFound(f"container {name} not found", container=name)
            c = Container.from_json(json.loads(kv.value))
            if c.host_network:
                raise Conflict(
                    f"container {name} uses the host's network and cannot be connected to"
                    f" {network}: run it again with --network {network}", container=name,
                )  # fmt: skip
            if network in c.networks:
                raise Conflict(f"container {name} is already on network {network}")
            current = self.endpoints(c)
            used = {ep.interface for ep in current}
            iface = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
            v4 = requested if isinstance(requested, ipaddress.IPv4Address) else None
            v6 = requested if isinstance(requested, ipaddress.IPv6Address) else None
            att = Attachment(network, ipv4=v4, ipv6=v6, aliases=aliases)
            with self._rec.claim(c.id, name):
                netns = current[0].netns if current and not self.owns(c) else ""
                ep = self._endpoint(c, net, att, iface, netns)
                c2 = replace(c, networks=(*c.networks, network))
                key = kv.key
                ok = self._store.txn(
                    [Compare.mod_is(key, kv.mod_revision), Compare.present(NETWORKS + network)],
                    [Put(key, _encode(c2.to_json())), Put(ep.key, _encode(ep.to_json()))],
                ).succeeded
                if not ok:
                    self._release(ep)
                    continue
                try:
                    self._rec.attach(c.id, name, ep.id)
                except BaseException:
                    with contextlib.suppress(CoveError):
                        self._detach(name, network)
                        self._rec.sync(only=c.id, name=name)
                    raise
            # Its endpoints are known: no second scan of the network's.
            return self._inspect(c2, [*current, ep])
        raise Conflict(f"container {name} is changing too fast")

    def disconnect(self, network: str, ref: str) -> ContainerView:
        c = self.get(ref)
        name = c.name
        if network not in c.networks:
            with contextlib.suppress(NotFound):
                network = self._network(network).name
        if network not in c.networks:
            raise NotFound(f"container {name} is not on network {network}")
        left = [ep for ep in self.endpoints(c) if ep.network != network]
        with self._rec.claim(c.id, name):
            gone = self._detach(name, network)
            self._rec.detach(c.id, name, [ep.host_veth for ep in gone])
        return self._inspect(
            replace(c, networks=tuple(n for n in c.networks if n != network)), left
        )

    def _detach(self, name: str, network: str) -> list[Endpoint]:
        """Take ``name`` off ``network`` in the store; the endpoints removed."""
        for _ in range(_ATTEMPTS):
            kv = find_container(self._store, name)
            if kv is None:
                return []
            c = Container.from_json(json.loads(kv.value))
            eps = [ep for ep in self.endpoints(c) if ep.network == network]
            c2 = replace(c, networks=tuple(n for n in c.networks if n != network))
            ok = self._store.txn(
                [Compare.mod_is(kv.key, kv.mod_revision)],
                [Put(kv.key, _encode(c2.to_json()))] + [op for ep in eps for op in _ep_deletes(ep)],
            ).succeeded
            if ok:
                for ep in eps:
                    self._release(ep)
                return eps
        raise Conflict(f"container {name} is changing too fast")

    def _release(self, ep: Endpoint) -> None:
        for addr in ep.addresses:
            self._ipam.release(ep.network, addr)

    def remove_exited(self) -> None:
        """Remove the ``--rm`` containers that have exited (a periodic pass;
        nothing to do, no supervisor round trip, while there are none)."""
        if not self._auto:
            return
        states = self._sup.states()
        for cid, name in list(self._auto.items()):
            state = states.get(cid)
            if state is not None and state.status is not Status.EXITED:
                continue
            try:
                c = self._current(cid, name)
                if c is not None:
                    self._destroy(c, self.endpoints(c))
                    self._remove_anonymous(c)
                    log.info("container %s removed: it exited (--rm)", name)
            except CoveError as exc:
                log.warning("cannot remove %s (--rm) yet: %s", name, exc.message)
                continue
            self._auto.pop(cid, None)

    # -- after an agent restart --------------------------------------------

    def retry_unfinished(self) -> None:
        """The periodic pass: finish what failed runs could not undo, and
        the starts ``adopt`` could not finish."""
        self.finish_intents()
        self._finish_starts()
        self._release_orphans()
        self.publish_states()

    def _finish_starts(self) -> None:
        # No lock against ``rm`` and ``stop``: both change the store before
        # the supervisor, so a start that raced with one is seen in the
        # store right after it, and undone.
        for cid, name in list(self._unstarted.items()):
            c = self._current(cid, name)
            if c is None or c.desired is not Desired.RUNNING:
                del self._unstarted[cid]
                continue
            state = self._sup.state(cid)
            # Not yet running: never created, only created, or its launch
            # failed (its /etc files could not be written, say).
            if state is None or state.status not in (Status.RUNNING, Status.RESTARTING):
                try:
                    self._sup.create(self._launch_spec(c))
                    self._sup.start(cid)
                except CoveError as exc:
                    log.debug("container %s still cannot start: %s", name, exc.message)
                    continue
                log.info("container %s started: its start after the restart is finished", name)
            del self._unstarted[cid]
            c = self._current(cid, name)
            with contextlib.suppress(CoveError):
                if c is None:
                    self._sup.remove(cid)
                elif c.desired is Desired.STOPPED:
                    self._sup.stop(cid, 10.0)

    def _current(self, cid: str, name: str) -> Container | None:
        """The container ``name`` if it is still the one with id ``cid``."""
        kv = find_container(self._store, name)
        if kv is None:
            return None
        c = Container.from_json(json.loads(kv.value))
        return c if c.id == cid else None

    def adopt(self) -> None:
        """Reconcile the supervisor with the store after a restart: settle
        the runs a crash interrupted, forget what the store no longer has,
        finish every start and stop that was under way (a container the
        supervisor never ran or only created is started when its desired
        state is running; a running one whose desired state is stopped is
        stopped), and release addresses of containers that no longer exist."""
        self._sup.ensure_running()
        try:
            self.finish_intents(after_restart=True)
        except CoveError as exc:
            log.error("cannot finish the interrupted runs yet: %s", exc.message)
        aborting = {i.id for i in self._intents.all()}
        snap = read_snapshot(self._store)
        states = self._sup.states()
        for cid in set(states) - set(snap.containers):
            log.info("removing leftover container %s", cid[:12])
            self._sup.remove(cid)
        for c in snap.containers.values():
            if not self.owns(c):
                continue  # its own node's agent runs it
            state = states.get(c.id)
            if c.auto_remove:
                self._auto[c.id] = c.name
            try:
                if c.id in aborting:
                    continue
                unstarted = state is None or state.status is Status.CREATED
                running = state is not None and state.status in (
                    Status.RUNNING,
                    Status.RESTARTING,
                )
                if c.desired is Desired.RUNNING and unstarted:
                    log.info("starting container %s: its start was interrupted", c.name)
                    self._unstarted[c.id] = c.name
                    self._sup.create(self._launch_spec(c))
                    self._sup.start(c.id)
                    del self._unstarted[c.id]
                elif c.desired is Desired.STOPPED and running:
                    log.info("stopping container %s: its stop was interrupted", c.name)
                    self._sup.stop(c.id, 10.0)
            except CoveError as exc:
                log.error("cannot bring container %s to %s yet: %s", c.name, c.desired, exc.message)
        now = time.monotonic()
        for kv in self._store.range(IPAM).kvs:
            owner = json.loads(kv.value).get("owner", "")
            if owner.startswith("container:") and owner[10:] not in snap.containers:
                if self._shared:
                    self._orphans[kv.key] = (kv.mod_revision, now)
                else:
                    self._store.delete(kv.key)

    def remove_orphans(self) -> list[str]:
        """Remove the processes whose containers the store no longer has:
        this node was removed from the cluster (``cove members rm``) while
        its agent ran, so other hosts reuse their addresses and names. The
        supervisor is read before the store: a run writes the store first,
        so a container started meanwhile is in the store read after."""
        states = self._sup.states()
        known = set(read_snapshot(self._store, self._node).containers)
        gone = sorted(set(states) - known)
        for cid in gone:
            log.warning("removing container %s: the store no longer has it", cid[:12])
            with contextlib.suppress(CoveError):
                self._sup.remove(cid)
        if gone:
            self._rec.kick()  # its namespace and veths
        return gone

    def _release_orphans(self) -> None:
        """Release the addresses ``adopt`` found without a container, once
        they have stayed so for ``_ORPHAN_GRACE`` (a shared store: a run on
        another host allocates before it writes its container)."""
        now = time.monotonic()
        for key, (rev, seen) in list(self._orphans.items()):
            if now - seen < _ORPHAN_GRACE:
                continue
            del self._orphans[key]
            kv = self._store.get(key)
            if kv is None or kv.mod_revision != rev:
                continue
            owner = str(json.loads(kv.value).get("owner", ""))
            cid = owner.removeprefix("container:")
            if any(c.id == cid for c in read_snapshot(self._store).containers.values()):
                continue
            self._store.txn([Compare.mod_is(key, rev)], [Delete(key)])


def _anonymous_named(mounts: tuple[Mount, ...], image: Image | None) -> tuple[Mount, ...]:
    """``mounts`` with a volume of its own, of a new 64-hex name, for each
    ``-v /path`` and each VOLUME of the image that no mount covers (as
    Docker's: a mount at the same path replaces the image's volume)."""
    covered = {m.target for m in mounts}
    wanted = list(mounts)
    if image is not None:
        wanted += [
            Mount(Kind.VOLUME, path, anonymous=True)
            for path in image.config.volumes
            if path not in covered
        ]
    return tuple(
        replace(m, source=secrets.token_hex(32)) if m.kind is Kind.VOLUME and not m.source else m
        for m in wanted
    )


@dataclass(slots=True)
class _Made:
    """What a run made on the host before its container: undone if it fails."""

    dirs: list[Path] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)


def _in_background(fn: Callable[[], None]) -> Callable[[], None]:
    """Starts ``fn`` on a thread of its own; the function returned waits
    for it to end and raises what it raised."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="cove-rm", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise failed[0]

    return wait


def _service_name(text: str) -> str:
    return text.partition(":")[0].lower()


def _ep_deletes(ep: Endpoint) -> list[Delete]:
    """Deleting ``ep``'s record wherever it lies: at its key, and at the key
    of before the per-node layout (a record its node's agent has not moved
    yet: a node not yet restarted since the upgrade)."""
    ops = [Delete(legacy_endpoint_key(ep.network, ep.id))]
    return [Delete(ep.key), *ops] if ep.node else ops


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def _parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid --ip {text!r}: not an IP address") from None


def _check_command(cmd: str, path: str, rootfs: str | None) -> None:
    root = rootfs or "/"

    def ok(p: str) -> bool:
        full = os.path.join(root, p.lstrip("/"))
        return os.path.isfile(full) and os.access(full, os.X_OK)

    if "/" in cmd:
        if ok(cmd):
            return
    elif any(ok(os.path.join(d, cmd)) for d in path.split(":") if d):
        return
    raise InvalidArgument(f"command {cmd!r} not found" + ("" if "/" in cmd else " in PATH"))
