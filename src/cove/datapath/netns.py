"""Container network namespaces and their veth pairs, on a real kernel.

Each container's network namespace is a bind mount of an nsfs file under the
agent's run directory (``<run>/netns/<container id>``), not ``/run/netns``, so
several agents side by side never see each other's namespaces. Host-side veth
names are ``cv`` + 10 hex digits of the endpoint id (12 bytes, and never
``cv-``, which is the bridges' prefix); the container side is ``eth0``,
``eth1``, ...

Work inside a namespace uses a netlink socket opened while the calling thread
is switched into it (a socket stays bound to the namespace it was created
in), then the thread is switched straight back: cheaper than forking.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cove import linux
from cove.datapath import rtnl
from cove.datapath.base import (
    HostVeth,
    InsideLink,
    Interface,
    NetnsState,
    ObservedContainers,
    is_host_veth,
)
from cove.errors import DatapathError, DatapathGone, Unavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

_AF_INET = 2
_AF_INET6 = 10
_IFF_UP = 1
_IFA_F_NODAD = 0x02
# Link group of retired host veths (ASCII "cove"), deleted together later.
RETIRED_GROUP = 0x636F7665


class NetnsDatapath:
    """Namespaces, veth pairs, addresses and routes for containers."""

    def __init__(
        self, netns_dir: Path, prepare_bridge: Callable[[str], None] | None = None
    ) -> None:
        """``prepare_bridge(name)`` runs before a veth is plugged into bridge
        ``name``: an overlay network's bridge exists only on hosts with an
        endpoint on it, and is made for the first."""
        self._prepare_bridge = prepare_bridge
        self.netns_dir = netns_dir
        netns_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._ipr = IPRoute()
        except OSError as exc:
            raise Unavailable(f"netlink is not available: {exc}") from exc
        self._lock = threading.Lock()
        self._local = threading.local()
        self._rtnl = rtnl.Rtnl()
        self._rtnl_lock = threading.Lock()
        self._bridges: dict[str, int] = {}  # name -> index, refreshed on failure

    def close(self) -> None:
        self._ipr.close()
        self._rtnl.close()

    def has_netns(self, container_id: str) -> bool:
        return _is_nsfs(self.netns_path(container_id))

    # -- namespaces ----------------------------------------------------------

    def netns_path(self, container_id: str) -> Path:
        return self.netns_dir / container_id

    def list_netns(self) -> list[str]:
        return sorted(p.name for p in self.netns_dir.iterdir() if not p.name.startswith("."))

    def create_netns(self, container_id: str, existing: Path | None = None) -> Path:
        """Create the container's namespace file; an existing one is kept.
        With ``existing`` (a namespace file another runtime owns, such as
        ``/run/netns/x``), that namespace is bind-mounted there instead, so
        everything else addresses it the same way; ``delete_netns`` then
        removes only cove's mount, never the other runtime's file."""
        path = self.netns_path(container_id)
        if path.exists() and _is_nsfs(path):
            return path
        # A crash between touch and mount leaves a plain file: not a
        # namespace (``_is_nsfs``), so the next call mounts over it.
        path.touch(mode=0o600)
        if existing is not None:
            if not _is_nsfs(existing):
                raise DatapathError(f"{existing} is not a network namespace")
            try:
                linux.mount(str(existing), str(path), None, linux.MS_BIND)
            except OSError as exc:
                raise DatapathError(f"cannot bind namespace {existing}: {exc}") from exc
            return path
        with _in_thread_ns():
            try:
                linux.unshare(linux.CLONE_NEWNET)
                linux.mount("/proc/thread-self/ns/net", str(path), None, linux.MS_BIND)
            except OSError as exc:
                raise DatapathError(f"cannot create a network namespace: {exc}") from exc
        with self.inside(container_id) as ipr:
            _set_up(ipr, "lo")
        return path

    def delete_netns(self, container_id: str) -> None:
        """Unmount and remove the namespace file. The namespace itself, and the
        veth pairs in it, go when no process uses it any more."""
        remove_ns_file(self.netns_path(container_id))

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Within the block, this thread reuses one socket per container
        namespace instead of opening one for every operation."""
        cache: dict[str, Any] = {}
        self._local.cache = cache
        try:
            yield
        finally:
            self._local.cache = None
            for ipr in cache.values():
                ipr.close()

    @contextlib.contextmanager
    def inside(self, container_id: str) -> Iterator[Any]:
        """A netlink socket bound to the container's namespace."""
        cache: dict[str, Any] | None = getattr(self._local, "cache", None)
        if cache is not None:
            if container_id not in cache:
                cache[container_id] = self._open_inside(container_id)
            yield cache[container_id]
            return
        ipr = self._open_inside(container_id)
        try:
            yield ipr
        finally:
            ipr.close()

    def _open_inside(self, container_id: str) -> Any:
        return self._made_inside(container_id, IPRoute)

    def _made_inside(self, container_id: str, make: Callable[[], T]) -> T:
        """``make()`` called inside the container's network namespace (a
        netlink socket made there stays bound to it)."""
        path = self.netns_path(container_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise DatapathGone(f"namespace of container {container_id} is gone") from exc
        try:
            with _in_thread_ns():
                try:
                    linux.setns(fd, linux.CLONE_NEWNET)
                except OSError as exc:
                    raise DatapathError(f"cannot enter namespace {path}: {exc}") from exc
                return make()
        finally:
            os.close(fd)

    # -- observe -------------------------------------------------------------

    def observe(
        self, container_ids: Sequence[str] | None = None, veths: Sequence[str] | None = None
    ) -> ObservedContainers:
        """Everything cove owns, or with ``container_ids`` and ``veths`` only
        those namespaces and host links (cheap enough for every ``run``)."""
        ids = self.list_netns() if container_ids is None else list(container_ids)
        netns: dict[str, NetnsState] = {}
        for cid in ids:
            if not _is_nsfs(self.netns_path(cid)):
                continue
            try:
                with self.inside(cid) as ipr:
                    netns[cid] = _observe_inside(ipr)
            except DatapathError:
                continue
        with self._lock:
            if veths is None:
                links = list(self._ipr.get_links())
            else:
                links = []
                for name in veths:
                    found = self._ipr.link_lookup(ifname=name)
                    if found:
                        links.extend(self._ipr.get_links(found[0]))
            masters = {link.get_attr("IFLA_MASTER") for link in links} - {None}
            names = {i: self._name(i) for i in masters}
        host: dict[str, HostVeth] = {}
        for link in links:
            name = link.get_attr("IFLA_IFNAME") or ""
            if veths is None and not is_host_veth(name):
                continue  # asked by name (a CNI veth too), else cove's own
            master = link.get_attr("IFLA_MASTER")
            host[name] = HostVeth(
                name=name,
                master=names.get(master) if master else None,
                up=bool(link["flags"] & _IFF_UP),
                mtu=int(link.get_attr("IFLA_MTU")),
            )
        return ObservedContainers(netns=netns, veths=host)

    def _name(self, index: int) -> str | None:
        try:
            return str(self._ipr.get_links(index)[0].get_attr("IFLA_IFNAME"))
        except (NetlinkError, IndexError):
            return None

    # -- change --------------------------------------------------------------

    def attach(
        self,
        container_id: str,
        host: str,
        inside: str,
        mac: str,
        mtu: int,
        bridge: str,
        addresses: Sequence[Interface],
        gateways: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    ) -> None:
        """Create and configure a new veth pair in two netlink round trips,
        without reading anything back: ``host`` on ``bridge`` with hairpin
        on, ``inside`` in the container with ``addresses`` and default
        routes via ``gateways``. On failure the pair is deleted again (so
        nothing leaks) and ``DatapathError`` raised; the caller's full pass
        then finds out why."""
        if self._prepare_bridge is not None:
            self._prepare_bridge(bridge)
        try:
            fd = os.open(self.netns_path(container_id), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise DatapathGone(f"namespace of container {container_id} is gone") from exc
        created = False
        try:
            with self._rtnl_lock:
                for attempt in range(2):
                    master = self._bridge_index(bridge, fresh=attempt > 0)
                    veth = rtnl.new_veth(host, inside, mac, mtu, master, fd)
                    made, hairpin, link = self._rtnl.request(
                        [veth, rtnl.hairpin(host), rtnl.get_link(host)]
                    )
                    if not made.error or attempt or made.error == errno.EEXIST:
                        break
                rtnl.check([made], f"add veth {host} to {bridge}")
                created = True
                # Hairpin: a container that is a backend of a VIP may be sent
                # to itself; the DNATed packet must go back out its own port.
                rtnl.check([hairpin, link], f"set hairpin on {host}")
            msgs = [rtnl.set_up(link.peer)]
            msgs += [rtnl.new_address(link.peer, a) for a in addresses]
            msgs += [rtnl.default_route(gw) for gw in gateways]
            with _in_thread_ns():
                try:
                    linux.setns(fd, linux.CLONE_NEWNET)
                except OSError as exc:
                    raise DatapathError(f"cannot enter namespace of {container_id}: {exc}") from exc
                sock = rtnl.Rtnl()
            with sock:
                rtnl.check(sock.request(msgs), f"configure {inside} in {container_id[:12]}")
        except BaseException:
            if created:
                with contextlib.suppress(DatapathError):
                    self.delete_link(host)
            raise
        finally:
            os.close(fd)

    def _bridge_index(self, name: str, fresh: bool) -> int:
        if fresh or name not in self._bridges:
            reply = self._rtnl.request([rtnl.get_link(name)])[0]
            if reply.error:
                self._bridges.pop(name, None)
                raise DatapathGone(f"bridge {name} does not exist", bridge=name)
            self._bridges[name] = reply.index
        return self._bridges[name]

    def set_up(self, name: str) -> None:
        with self._lock:
            try:
                self._ipr.link("set", ifname=name, state="up")
            except NetlinkError as exc:
                raise DatapathError(f"cannot set {name} up: {exc}", link=name) from exc

    def delete_inside(self, container_id: str, name: str) -> None:
        """Delete a link inside the container (its veth peer goes with it)."""
        with self.inside(container_id) as ipr:
            try:
                ipr.link("del", ifname=name)
            except NetlinkError as exc:
                if exc.code not in (errno.ENODEV, errno.ENOENT):
                    raise DatapathError(f"cannot delete {name}: {exc}", link=name) from exc

    def set_sysctl(self, path: str, value: str) -> None:
        """Write a host sysctl, e.g. ``net/ipv4/conf/<bridge>/route_localnet``."""
        try:
            with open(f"/proc/sys/{path}", "w") as f:
                f.write(value)
        except OSError as exc:
            raise DatapathError(f"cannot set sysctl {path}: {exc}") from exc

    def delete_veth(self, name: str) -> None:
        """Delete a host-side veth (its peer in the container goes with it)
        in one netlink round trip; a link already gone is fine."""
        with self._rtnl_lock:
            replies = self._rtnl.request([rtnl.del_link(name)])
        rtnl.check(replies, f"delete link {name}", ignore=rtnl.NOT_FOUND)

    def retire_veth(self, container_id: str, host: str) -> None:
        """Take a veth pair out of service at once, for ``reap`` to delete
        later: deleting a link waits 15-40 ms for the kernel (RCU), one
        batch of many costs about the same as one. The container's end is
        set down and renamed to ``host`` (so its interface name is free
        again and the container no longer shows it), the host end is set
        down and put in ``RETIRED_GROUP``. A crash before ``reap`` leaves
        links that the next full pass deletes (nothing wants them)."""
        with self._rtnl_lock:
            link, retired = self._rtnl.request(
                [rtnl.get_link(host), rtnl.retire(host, RETIRED_GROUP)]
            )
        if link.error in rtnl.NOT_FOUND:
            return
        rtnl.check([link, retired], f"retire {host}")
        try:
            with self._raw_inside(container_id) as sock:
                replies = sock.request([rtnl.set_down(link.peer), rtnl.rename(link.peer, host)])
            rtnl.check(replies, f"retire the peer of {host}", ignore=rtnl.NOT_FOUND)
        except DatapathError as exc:
            log.info("%s; deleting %s now", exc.message, host)
            self.delete_veth(host)

    def reap(self) -> None:
        """Delete every retired veth pair, in one batch."""
        # Its own socket: the foreground need not wait behind the kernel.
        with rtnl.Rtnl() as sock:
            replies = sock.request([rtnl.del_group(RETIRED_GROUP)])
        rtnl.check(replies, "delete retired links", ignore=rtnl.NOT_FOUND)

    @contextlib.contextmanager
    def _raw_inside(self, container_id: str) -> Iterator[rtnl.Rtnl]:
        sock = self._made_inside(container_id, rtnl.Rtnl)
        with sock:
            yield sock

    def delete_link(self, name: str) -> None:
        """Delete a link by name; one already gone is fine. One netlink
        round trip (pyroute2 would first dump every link to find its index)."""
        self.delete_veth(name)

    def configure(
        self,
        container_id: str,
        name: str,
        addresses: Sequence[Interface],
        mtu: int,
    ) -> None:
        """Make ``name`` in the container up, with exactly ``addresses``."""
        with self.inside(container_id) as ipr:
            try:
                found = ipr.link_lookup(ifname=name)
                if not found:
                    raise DatapathGone(f"{name} missing in container {container_id}")
                index = found[0]
                ipr.link("set", index=index, mtu=mtu, state="up")
                have = _addresses(ipr, index)
                for addr in have - set(addresses):
                    ipr.addr(
                        "del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen
                    )
                for addr in addresses:
                    if addr in have:
                        continue
                    extra = {"flags": _IFA_F_NODAD} if addr.version == 6 else {}
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(addr.ip),
                        prefixlen=addr.network.prefixlen,
                        **extra,
                    )
            except NetlinkError as exc:
                raise DatapathError(f"cannot configure {name}: {exc}") from exc

    def set_default_routes(
        self,
        container_id: str,
        gateway4: ipaddress.IPv4Address | None,
        gateway6: ipaddress.IPv6Address | None,
    ) -> None:
        with self.inside(container_id) as ipr:
            for family, gw in ((_AF_INET, gateway4), (_AF_INET6, gateway6)):
                try:
                    if gw is None:
                        with contextlib.suppress(NetlinkError):
                            ipr.route("del", family=family, dst="default")
                    else:
                        ipr.route("replace", family=family, dst="default", gateway=str(gw))
                except NetlinkError as exc:
                    raise DatapathError(f"cannot set default route via {gw}: {exc}") from exc


@contextlib.contextmanager
def _in_thread_ns() -> Iterator[None]:
    """Run the block with this thread free to change its network namespace,
    and put it back where it was afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield
    finally:
        try:
            linux.setns(home, linux.CLONE_NEWNET)
        finally:
            os.close(home)


def _is_nsfs(path: Path) -> bool:
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def remove_ns_file(path: Path) -> None:
    while _is_nsfs(path):
        try:
            linux.umount(str(path))
        except OSError as exc:
            raise DatapathError(f"cannot unmount namespace {path}: {exc}") from exc
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _set_up(ipr: Any, name: str) -> None:
    found = ipr.link_lookup(ifname=name)
    if found:
        ipr.link("set", index=found[0], state="up")


def _addresses(ipr: Any, index: int) -> set[Interface]:
    out: set[Interface] = set()
    for a in ipr.get_addr(index=index):
        addr = a.get_attr("IFA_ADDRESS")
        if addr is None or (a["family"] == _AF_INET6 and addr.startswith("fe80")):
            continue
        out.add(ipaddress.ip_interface(f"{addr}/{a['prefixlen']}"))
    return out


def _observe_inside(ipr: Any) -> NetnsState:
    links: dict[str, InsideLink] = {}
    by_index: dict[int, set[Interface]] = {}
    for a in ipr.get_addr():
        addr = a.get_attr("IFA_ADDRESS")
        if addr is None or (a["family"] == _AF_INET6 and addr.startswith("fe80")):
            continue
        by_index.setdefault(a["index"], set()).add(
            ipaddress.ip_interface(f"{addr}/{a['prefixlen']}")
        )
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME") or ""
        if name == "lo":
            continue
        links[name] = InsideLink(
            name=name,
            mtu=int(link.get_attr("IFLA_MTU")),
            up=bool(link["flags"] & _IFF_UP),
            mac=str(link.get_attr("IFLA_ADDRESS") or ""),
            addresses=frozenset(by_index.get(link["index"], ())),
        )
    gw4: ipaddress.IPv4Address | None = None
    gw6: ipaddress.IPv6Address | None = None
    for family in (_AF_INET, _AF_INET6):
        for r in ipr.get_routes(family=family, table=254):
            if r["dst_len"] != 0 or r.get_attr("RTA_GATEWAY") is None:
                continue
            gw = ipaddress.ip_address(r.get_attr("RTA_GATEWAY"))
            if isinstance(gw, ipaddress.IPv4Address):
                gw4 = gw
            else:
                gw6 = gw
    return NetnsState(links=links, gateway4=gw4, gateway6=gw6)
