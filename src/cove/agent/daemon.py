"""The agent: the composition root. It opens the store, wires the domain
services to it and to the kernel, serves the API on the Unix socket, on TCP
and on HTTPS (certificate reloaded on SIGHUP), and shuts down cleanly on
SIGTERM.

Only one agent may own a state directory at a time (an flock on
``agent.lock``); a killed agent's lock dies with it, so a restart takes over
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

from cove import __version__
from cove.acl import AclService
from cove.agent import observe
from cove.agent.cni import CniParts
from cove.agent.config import AgentConfig, socket_gid
from cove.agent.containers import ContainerRuntime
from cove.agent.faults import fault_hook
from cove.agent.following import NetworkFollowing
from cove.agent.limits import raise_open_files
from cove.agent.parts import LbParts, PolicyParts
from cove.agent.private import private_paths
from cove.agent.registry import RegistryParts
from cove.agent.store_wait import open_configured, wait_for_store
from cove.agent.tuning import tune_interpreter, tune_malloc
from cove.api import cni as cni_api
from cove.api import containers as containers_api
from cove.api import events as events_api
from cove.api import http as web
from cove.api import images as images_api
from cove.api import lb as lb_api
from cove.api import members as members_api
from cove.api import metrics as metrics_api
from cove.api import networks as networks_api
from cove.api import policy as policy_api
from cove.api import ui as ui_api
from cove.api import volumes as volumes_api
from cove.api.app import build_app
from cove.api.consul import CONSUL
from cove.api.guard import Guard
from cove.api.http.limits import limits_for
from cove.api.metrics import Metrics
from cove.api.tls import ReloadingTls, TlsFiles
from cove.clock import SystemClock
from cove.cluster.advertise import resolve as resolve_advertise
from cove.cluster.nodes import CLUSTER_NODES, NodeLease, NodeRecord, members, now_rfc3339
from cove.cluster.reaper import NodeReaper
from cove.cluster.removal import remove_node
from cove.datapath.libnft import open_nft
from cove.datapath.netlink import NetlinkDatapath
from cove.datapath.nftables import Nft
from cove.dns import DnsConfig, DnsService, Upstream
from cove.dns.registry_source import RegistryServices
from cove.errors import CoveError, Unavailable
from cove.events.log import EventLog
from cove.ipam.allocator import Ipam
from cove.lb.model import VIPS
from cove.lb.vips import parse_range
from cove.model import CONTAINERS, ENDPOINTS, IPAM, IPAM_BLOCKS, NETWORKS
from cove.network.overlay import OverlayReconciler
from cove.network.reconcile import NetworkReconciler
from cove.network.service import NetworkService
from cove.policy.model import POLICY
from cove.registry.keys import AGENT, CHECKS, NODE_CHECKS, SERVICES, agent_service_key, seg
from cove.runtime.dns_handover import SupervisorKeeper
from cove.runtime.keys import CLUSTER_STATUS, NAMES, containers_of, statuses_of
from cove.runtime.registration import ServiceRegistrar
from cove.runtime.relayout import move_to_node_layout
from cove.store import scope
from cove.store.base import local_store
from cove.store.hub import WatchHub
from cove.store.scope import KeyRange
from cove.ui import assets as ui_assets
from cove.worker import Worker

log = logging.getLogger("cove.agent")

# What this agent can do, in its node record (other nodes may ask).
FEATURES = ("containers", "consul", "dns", "policy", "vips")


def cached_prefixes(node: str) -> tuple[str, ...]:
    """What the hub keeps in memory for ``node``'s agent: the cluster-wide
    records, and of the containers only this node's (no cached reader
    reads another node's container, nor any process state)."""
    return (
        NETWORKS,
        containers_of(node),
        CLUSTER_NODES,
        POLICY,
        VIPS,
        SERVICES,
        CHECKS,
        NODE_CHECKS,
        IPAM_BLOCKS,
    )


# Held in parts on etcd: of the networks this node has endpoints on
# (``cove.agent.following``); whole on an in-process store.
FOLLOWED_IN_PARTS = (ENDPOINTS, IPAM)


def watched_ranges(node: str) -> list[KeyRange]:
    """What ``node``'s agent watches on etcd besides the networks it
    follows: the shared records; of the containers, their process states
    and the agent-local registry records only its own; not the name claims,
    which only a create reads (from the store). An in-process store's hub
    hears every commit: on one host all is its own. (Each excluded prefix
    costs a stream: the CNI attachments, few and small, are not worth one.)"""
    return scope.watched_ranges(
        exclude=(CONTAINERS, CLUSTER_STATUS, NAMES, AGENT, *FOLLOWED_IN_PARTS),
        include=(containers_of(node), statuses_of(node), f"{AGENT}{seg(node)}/"),
    )


def setup_logging(config: AgentConfig) -> None:
    stream: IO[str] = sys.stderr
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        stream = open(config.log_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the agent
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


def _lock_state_dir(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Unavailable(f"another agent is running with state directory {state_dir}") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    except OSError as exc:  # the pid is for people; the flock is the lock
        log.warning("cannot write the pid to %s: %s", state_dir / "agent.lock", exc)
    return fd


def run(config: AgentConfig) -> int:
    """Run the agent until SIGTERM or SIGINT; returns the exit status."""
    setup_logging(config)
    open_files = raise_open_files()
    try:
        lock = _lock_state_dir(config.state_dir)
    except CoveError as exc:
        log.error("%s", exc.message)
        return exc.exit_code
    try:
        import uvloop

        runner: Callable[..., None] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(_serve(config, open_files))
    except CoveError as exc:
        log.error("agent failed: %s", exc.message)
        return exc.exit_code
    finally:
        os.close(lock)
    return 0


def _secret_files(config: AgentConfig) -> list[Path]:
    """Files besides the state that hold secrets: the TLS key, and the
    config file (it may carry the initial management token)."""
    files = [p for p in (config.tls_key, config.tls_cert, config.tls_ca) if p is not None]
    files += [p for p in (config.store_key, config.store_cert, config.store_ca) if p is not None]
    if config.config_file is not None:
        files.append(config.config_file)
    return files


class Agent:
    """Every long-lived part of a running agent, wired once."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.clock = SystemClock()
        self.store = open_configured(config, self.clock)
        # Before anything is written: a taken node name or an address this
        # host does not have stops the agent with nothing changed.
        self.advertise = resolve_advertise(
            config.advertise, shared_store=local_store(self.store) is None
        )
        self.node = NodeLease(
            self.store,
            NodeRecord(config.node_name, self.advertise, __version__, FEATURES, now_rfc3339()),
            config.node_ttl,
            config.state_dir / "node.lease",
        )
        self.node.join()
        # Records of the layout before per-node keys, moved once the node's
        # name is this agent's and before anything reads or watches them.
        move_to_node_layout(self.store, config.node_name)
        # The cluster-wide records that passes re-read on another host's
        # change (policy, registrar, reconcilers) and whose previous values
        # the event stream names deletes by: kept in memory by the hub,
        # which on etcd watches everything but other nodes' containers and
        # process states. Every write goes through ``hub.writes`` from here
        # on, so that a pass can wait for what this agent wrote.
        self.hub = WatchHub(
            self.store,
            cache=cached_prefixes(config.node_name),
            partial=FOLLOWED_IN_PARTS,
            ranges=watched_ranges(config.node_name),
        )
        # On etcd: which networks' endpoints and addresses the hub follows.
        self.following = NetworkFollowing(self.hub, config.node_name) if self.hub.scoped else None
        self.store = self.hub.writes
        self.nft = Nft()
        self.datapath = NetlinkDatapath(self.nft)
        # Candidates from the hub's copy; dynamic addresses in this node's blocks.
        self.ipam = Ipam(self.store, self.hub.reads, node=config.node_name)
        self.vip_ranges = tuple(parse_range(r) for r in config.vip_ranges)
        self.networks = NetworkService(
            self.store, self.clock, self.datapath.host_networks, reserved=self.vip_ranges
        )
        self.reconciler = NetworkReconciler(
            self.store, self.datapath, interval=config.reconcile_interval
        )
        # Overlay networks: bridge, VXLAN device and entries on this host
        # while it has an endpoint on them.
        self.overlay = OverlayReconciler(
            self.store,
            self.datapath,
            config.node_name,
            self.advertise,
            port=config.vxlan_port,
            interval=config.reconcile_interval,
        )
        self.app = build_app()
        self.acl = AclService(
            self.store,
            self.clock,
            enabled=config.acl_enabled,
            default_policy=config.acl_default_policy,
            initial_management=config.acl_initial_management,
            node_name=config.node_name,
            datacenter=config.datacenter,
        )
        self.acl.setup()
        # Checked before routing: over HTTPS the native API needs a token
        # with operator rights (none when ACLs are off).
        self.guard = Guard.of(
            str(config.socket), config.http_allowed_hosts, self.acl.allows_operator
        )
        self.app.screens.append(self.guard)
        self.metrics = Metrics()
        self.metrics.add(self._core_metrics)
        self.metrics.add(self.hub.stats)
        self.registry_parts = RegistryParts(
            self.store,
            self.clock,
            self.hub,
            node_name=config.node_name,
            datacenter=config.datacenter,
            node_address=self.advertise,
            lease_ttl=config.node_ttl,
            enable_script_checks=config.enable_script_checks,
            acl=self.acl,
            node_lease=self.node,  # one lease per node: serfHealth rides on the node's
        )
        self.registry = self.registry_parts.registry
        self.registry_parts.install(self.app)
        self.runtime = ContainerRuntime(
            self.store,
            self.clock,
            self.ipam,
            self.nft,
            config.state_dir,
            config.run_dir,
            config.resolv_conf,
            config.reconcile_interval,
            masked=private_paths(config, _secret_files(config)),
            fault=fault_hook(os.environ),
            node=config.node_name,
            prepare_bridge=self.overlay.prepare_bridge,
        )
        containers_api.install(
            self.app,
            self.runtime.service,
            default_network=networks_api.default_network(self.networks, self.reconciler),
        )
        members_api.install(
            self.app,
            lambda: members(self.store, config.node_name),
            lambda name, force: remove_node(self.store, name, force=force, local=config.node_name),
        )
        # Joined again after this node was removed (or its lease ran out):
        # containers the store no longer has are orphans here.
        self.node.on_rejoin(self.runtime.service.remove_orphans)
        self.reaper: Worker | None = None
        if config.reap_after:
            reaper = NodeReaper(
                self.store, self.clock, config.node_name, lambda: self.node.lease,
                config.reap_after,
            )  # fmt: skip
            self.reaper = Worker("cove-node-reaper", lambda _k: reaper.run_once(), reaper.interval)
        self.registrar = ServiceRegistrar(
            self.store,
            self.registry,
            config.reconcile_interval,
            node=config.node_name,
            reads=self.hub.reads,
        )
        self.cni = CniParts(
            self.store,
            self.clock,
            self.ipam,
            config.run_dir,
            config.node_name,
            self.runtime.reconciler,
            config.socket,
            config.cni_conf_dir,
            lambda: self.reconciler.last_error,
            config.reconcile_interval,
        )
        cni_api.install(self.app, self.cni.service, config.dns_domain)
        images_api.install(self.app, self.runtime.images, self.runtime.service.image_users)
        volumes_api.install(self.app, self.runtime.volumes, self.runtime.service.volume_users)
        self.dns = self._dns_service()
        if self.dns is not None:
            self.metrics.add(self.dns.metrics)
            self.metrics.add(lambda: observe.dns_series(self.dns) if self.dns else [])
        self.metrics.install(self.app)
        networks_api.install(self.app, self.networks, self.reconciler)
        # VIP and policy updates are frequent and small: they go through
        # libnftables in-process rather than one nft process per change.
        self.fast_nft = open_nft()
        self.lb = LbParts(self.store, self.fast_nft, self.clock, self.vip_ranges, config.datacenter)
        self.policy = PolicyParts(self.store, self.fast_nft, self.clock, config.node_name)
        lb_api.install(self.app, self.lb.vips, self.lb.controller)
        policy_api.install(self.app, self.policy.service, self.policy.controller)
        self.metrics.add(self.lb.metrics)
        self.metrics.add(self.policy.metrics)
        self.metrics.add(lambda: policy_api.counter_series(self.policy.counts()))
        checks = self.registry_parts.checks
        # A scrape reads the hub's copy (this host's endpoints are always in
        # its view), not the store: on etcd that was every endpoint of the
        # cluster per scrape.
        self.metrics.add(
            lambda: observe.series(
                self.hub.reads, self.lb.vips, checks.durations if checks else dict
            )
        )
        metrics_api.install_stats(
            self.app,
            lambda: observe.endpoint_traffic(self.hub.reads),
            lambda: observe.check_states(self.hub.reads),
        )
        self.events = EventLog(self.store)
        self.metrics.add(
            lambda: [("cove_events_index", "The event stream's newest index.", self.events.head)]
        )
        events_api.install(self.app, self.events)
        ui_api.install_static(self.app, ui_assets())
        ui_api.install(
            self.app,
            ui_api.UiSources(
                self.acl,
                self.events,
                self.networks,
                self.runtime.service,
                self.lb.vips,
                self.policy.service,
            ),
        )

    def _dns_service(self) -> DnsService | None:
        config = self.config
        if config.dns is None:
            return None
        host, port = config.dns
        return DnsService(
            self.store,
            self.clock,
            DnsConfig(
                host_address=ipaddress.ip_address(host),
                host_port=port,
                domain=config.dns_domain,
                ttl=config.dns_ttl,
                upstreams=tuple(Upstream.parse(u) for u in config.upstreams or ()),
                resolv_conf=str(config.resolv_conf),
                node_name=config.node_name,
                listen_on_gateways=True,
            ),
            hub=self.hub,
            services=RegistryServices(
                self.registry.queries, self.hub, acl=self.acl, prepared=self.registry.prepared
            ),
            keeper=SupervisorKeeper(config.run_dir),
        )

    def _core_metrics(self) -> list[tuple[str, str, float]]:
        return [
            ("cove_store_revision", "The store's global revision.", self.store.revision),
            ("cove_networks", "Networks in the store.", len(self.hub.reads.range(NETWORKS).kvs)),
            (
                "cove_network_reconcile_errors",
                "1 if the last network reconcile pass had an error.",
                1.0 if self.reconciler.last_error else 0.0,
            ),
        ]

    def start(self) -> None:
        self.node.start()
        self.hub.subscribe(NETWORKS, lambda _events: self.reconciler.kick())
        self.reconciler.watched = True
        self.hub.start()
        if self.following is not None:
            self.following.start()
        self.events.start(self.hub)
        self.reconciler.start()
        for prefix in (NETWORKS, ENDPOINTS, CLUSTER_NODES):
            self.hub.subscribe(prefix, self.overlay.on_events)
        self.overlay.watched = True
        self.overlay.reads = self.hub.reads
        self.overlay.start()
        self.runtime.start(self.hub)  # after the first network pass: bridges exist
        for prefix in (containers_of(self.config.node_name), ENDPOINTS):
            self.hub.subscribe(prefix, self.registrar.on_events)
        self.hub.subscribe(
            agent_service_key(self.registry.node_name, ""),
            self.registrar.on_registry_events,
        )
        self.registrar.watched = True
        self.registrar.start()
        if self.dns is not None:
            self.dns.start()
        self.lb.start(self.hub)
        self.policy.start(self.hub)
        self.cni.start(self.hub)
        if self.reaper is not None:
            self.reaper.start()

    def stop(self) -> None:
        # Containers and their supervisor keep running: live restore.
        if self.reaper is not None:
            self.reaper.stop()
        self.registrar.stop()
        self.cni.stop()
        self.runtime.stop()
        self.policy.stop()
        self.lb.stop()
        if self.dns is not None:
            self.dns.stop()
        self.overlay.stop()
        self.reconciler.stop()
        self.events.stop()
        if self.following is not None:
            self.following.stop()
        self.hub.stop()
        self.datapath.close()
        self.node.stop(leave=True)
        self.store.close()


def tls_of(config: AgentConfig) -> ReloadingTls | None:
    """The HTTPS listener's certificates, checked before anything starts;
    ``InvalidArgument`` names a missing, unreadable or mismatched file."""
    if config.https is None or config.tls_cert is None or config.tls_key is None:
        return None
    return ReloadingTls(
        TlsFiles(config.tls_cert, config.tls_key, config.tls_ca, config.tls_verify_incoming)
    )


@contextlib.asynccontextmanager
async def _sites(agent: Agent, tls: ReloadingTls | None, open_files: int) -> AsyncIterator[None]:
    """``open_files``: the soft limit the agent raised itself to at start,
    which sizes the connection caps."""
    config = agent.config
    tune_malloc()  # before any request body is read
    limits = limits_for(
        open_files,
        max_conns=config.http_max_conns,
        per_client=config.http_max_conns_per_client,
    )
    log.info(
        "HTTP connections: at most %s on TCP/TLS, %s per client, %s on the socket (%s open files)",
        limits.tcp_total,
        limits.tcp_per_client or "no cap",
        limits.unix_total,
        open_files,
    )
    # Blocking queries may wait up to 10 minutes; do not let them hold
    # shutdown for long.
    server = web.HttpServer(agent.app, shutdown_timeout=2, limits=limits)
    await server.setup()
    try:
        config.socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            config.socket.unlink()  # stale from a killed agent; the flock says it is ours
        old = os.umask(0o177)
        try:
            await server.start_unix(str(config.socket))
        finally:
            os.umask(old)
        if config.socket_group is None:
            os.chmod(config.socket, 0o600)
        else:
            # As Docker's `docker` group: members may drive the agent, which
            # makes them root-equivalent; the admin chose that by naming it.
            os.chown(config.socket, 0, socket_gid(config.socket_group))
            os.chmod(config.socket, 0o660)
        if config.http is not None:
            host, port = config.http
            await server.start_tcp(host, port, reuse_address=True)
        if config.https is not None and tls is not None:
            host, port = config.https
            await server.start_tcp(host, port, reuse_address=True, ssl_context=tls.context)
        yield
    finally:
        await server.stop()
        with contextlib.suppress(FileNotFoundError):
            config.socket.unlink()


def _consul_hooks(agent: Agent, stop: asyncio.Event, tls: ReloadingTls | None) -> None:
    """What /v1/agent/metrics, /reload and /leave do in this agent."""
    state = agent.app[CONSUL]
    state.samples = agent.metrics.samples
    loop = asyncio.get_running_loop()

    async def leave() -> None:  # answer first, then shut down
        log.info("leaving: asked through /v1/agent/leave")
        loop.call_later(0.2, stop.set)

    state.leave = leave

    async def prune(name: str) -> None:  # force-leave -prune
        await asyncio.to_thread(remove_node, agent.store, name, local=agent.config.node_name)

    state.prune = prune
    if tls is not None:

        async def reload() -> None:
            tls.reload()

        state.reload = reload


async def _serve(config: AgentConfig, open_files: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tls = tls_of(config)
    if tls is not None:
        loop.add_signal_handler(signal.SIGHUP, tls.reload)
    if not await wait_for_store(config, SystemClock(), stop):
        return  # a signal while etcd was away: nothing was started
    agent = await asyncio.to_thread(Agent, config)
    _consul_hooks(agent, stop, tls)
    try:
        await asyncio.to_thread(agent.start)
        await agent.registry_parts.start()
        async with _sites(agent, tls, open_files):
            tune_interpreter()  # after start-up: what it loaded is frozen
            if agent.dns is not None:
                agent.dns.serve()  # from the supervisor, which answered meanwhile
            log.info(
                "cove agent %s ready: socket %s, http %s, https %s, store %s",
                __version__,
                config.socket,
                f"{config.http[0]}:{config.http[1]}" if config.http else "off",
                f"{config.https[0]}:{config.https[1]}" if config.https else "off",
                config.store_url,
            )
            await stop.wait()
            log.info("shutting down")
    finally:
        await agent.registry_parts.stop()
        await asyncio.to_thread(agent.stop)
