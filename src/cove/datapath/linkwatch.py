"""Hear about changes to container networking in the kernel instead of
looking for them: one rtnetlink socket that listens to link, address and
route notifications of this namespace and of every namespace that has an
id here (``NETLINK_LISTEN_ALL_NSID``).

A container's namespace gets an id in the host's the moment its veth pair
is made (the kernel names the peer's namespace in the host link's
notification), so a link, address or route changing inside any container,
or a host-side veth going away, down or off its bridge, is heard here. The
container reconciler then reads the kernel on its next tick, instead of
reading every namespace on every tick whether anything changed or not.

The socket is only read: nothing is sent, so a container cannot reach the
agent through it, and what it hears only ever starts a pass, which reads
the kernel itself. When the kernel drops notifications (the socket's
buffer overflowed), that too counts as a change.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable

from cove.datapath.base import is_host_veth
from cove.errors import DatapathError

log = logging.getLogger(__name__)

_SOL_NETLINK = 270
_NETLINK_LISTEN_ALL_NSID = 8
# RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_IFADDR,
# RTNLGRP_IPV6_ROUTE, as the legacy bind mask (group n is bit n - 1).
_GROUPS = (1 << 0) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 10)
_RTM_NEWLINK = 16
_RTM_DELLINK = 17
_IFLA_IFNAME = 3
_AF_UNSPEC = 0
_HDR = struct.Struct("=IHHII")
_IFINFO_SIZE = 16
_ATTR = struct.Struct("=HH")
_RCVBUF = 1 << 20


def _align(n: int) -> int:
    return (n + 3) & ~3


def link_name(msg: bytes) -> str | None:
    """``IFLA_IFNAME`` of one link message (header included), if there."""
    off = _HDR.size + _IFINFO_SIZE
    while off + _ATTR.size <= len(msg):
        length, kind = _ATTR.unpack_from(msg, off)
        if length < _ATTR.size:
            return None
        if kind & 0x3FFF == _IFLA_IFNAME:
            return msg[off + _ATTR.size : off + length].split(b"\0", 1)[0].decode(errors="replace")
        off += _align(length)
    return None


def concerns_containers(data: bytes, foreign: bool) -> bool:
    """Whether a batch of notifications may change what the container
    reconciler observes: anything from another namespace (a container's),
    and links of this one that are cove's host-side veths. (Addresses and
    routes of the host, and its other links, are not the container
    reconciler's.)"""
    if foreign:
        return True
    off = 0
    while off + _HDR.size <= len(data):
        length, kind = _HDR.unpack_from(data, off)[:2]
        if length < _HDR.size or off + length > len(data):
            return False
        # The bridge's own messages about its ports (family AF_BRIDGE, such
        # as a port's forwarding state) do not change what is observed.
        if (
            kind in (_RTM_NEWLINK, _RTM_DELLINK)
            and length >= _HDR.size + _IFINFO_SIZE
            and data[off + _HDR.size] == _AF_UNSPEC
        ):
            name = link_name(data[off : off + length])
            if name is not None and is_host_veth(name):
                return True
        off += _align(length)
    return False


class KernelWatch:
    """Calls ``on_change()`` (on its own thread) after each batch of kernel
    notifications that concerns containers (``concerns_containers``). The
    socket is opened in the namespace of the thread that calls ``start``."""

    def __init__(
        self, on_change: Callable[[], None], on_lost: Callable[[], None] = lambda: None
    ) -> None:
        """``on_lost()``: the socket failed and nothing more will be heard
        (the caller goes back to looking on a timer)."""
        self._on_change = on_change
        self._on_lost = on_lost
        self._sock: socket.socket | None = None
        self._wake_r = -1
        self._wake_w = -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Raises ``DatapathError`` when the socket cannot be opened (a
        kernel without ``NETLINK_LISTEN_ALL_NSID``, before 4.2)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, _GROUPS))
            sock.setsockopt(_SOL_NETLINK, _NETLINK_LISTEN_ALL_NSID, 1)
        except OSError as exc:
            sock.close()
            raise DatapathError(f"cannot listen to rtnetlink notifications: {exc}") from exc
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="cove-kernel-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=10)
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                return
            changed = False
            with contextlib.suppress(BlockingIOError):
                while True:  # everything queued, then one call for the lot
                    try:
                        data, anc, _, _ = sock.recvmsg(
                            1 << 16, socket.CMSG_SPACE(4), socket.MSG_DONTWAIT
                        )
                    except BlockingIOError:
                        raise
                    except OSError as exc:
                        if exc.errno != errno.ENOBUFS:
                            log.error("kernel notifications lost: %s", exc)
                            self._on_lost()
                            return
                        log.info("kernel notifications were dropped; checking everything")
                        changed = True
                        continue
                    # The origin's namespace id comes as ancillary data when
                    # the origin is another namespace.
                    changed = changed or concerns_containers(data, foreign=bool(anc))
            if changed:
                try:
                    self._on_change()
                except Exception:  # the watch must outlive any one bug
                    log.exception("kernel change callback failed")
