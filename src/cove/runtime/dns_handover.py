"""The agent's side of DNS across restarts: a ``ListenerKeeper`` (see
``cove.dns.standby``) that shares the DNS listening sockets with the
supervisor, takes them back after a restart and leaves the supervisor a
snapshot to answer from (the protocol is in ``cove.runtime.dns_keeper``).

Without a supervisor that speaks it (none running, or one from before), the
keeper keeps nothing and says so once: DNS then works as before, with a
pause while the agent restarts. When the supervisor goes away while the
agent runs (it crashed, or was restarted), a thread connects to the next one
and hands it every listener again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import threading
from pathlib import Path
from typing import Any

from cove.dns.standby import write_atomically
from cove.model import IPAddress
from cove.runtime.dns_keeper import SNAPSHOT, Channel, adopt, close_fds
from cove.runtime.supervisor import DNS_KEEP_OP, SOCKET

log = logging.getLogger(__name__)

_Key = tuple[IPAddress, int]


class SupervisorKeeper:
    """Thread-safe: the DNS service calls it from the threads that change
    listeners."""

    def __init__(self, root: Path, timeout: float = 5.0, retry: float = 1.0) -> None:
        self.root = root
        self._timeout = timeout
        self._retry = retry
        self._lock = threading.Lock()
        self._ch: Channel | None = None
        self._taken: dict[_Key, tuple[socket.socket, socket.socket]] = {}
        # What the supervisor holds, so a pair taken back is not sent again.
        self._kept: dict[_Key, str | None] = {}
        # The listeners of this agent, to hand to a supervisor that restarted.
        self._listeners: dict[_Key, tuple[str | None, socket.socket, socket.socket]] = {}
        self._serving = False
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    def open(self) -> bool:
        """Connect and take back the pairs the supervisor keeps; False when
        the supervisor does not keep listeners."""
        with self._lock:
            if self._ch is not None:
                return True
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ch = Channel(sock)
            try:
                sock.settimeout(self._timeout)
                sock.connect(str(self.root / SOCKET))
                sock.sendall(json.dumps({"op": DNS_KEEP_OP}).encode() + b"\n")
                self._receive_held(ch)
            except (OSError, ValueError, KeyError) as exc:
                log.warning(
                    "DNS will pause while the agent restarts: "
                    "the supervisor does not keep its listeners (%s)",
                    exc,
                )
                ch.close()
                self._close_taken()
                return False
            self._ch = ch
            log.info("DNS listeners shared with the supervisor (%d taken back)", len(self._taken))
        self._watcher = threading.Thread(target=self._watch, name="cove-dns-keeper", daemon=True)
        self._watcher.start()
        return True

    def _watch(self) -> None:
        """Wait for the supervisor's end of the connection to close (it
        sends nothing after ``ready``), then connect to its successor."""
        while not self._closed.is_set():
            ch = self._ch
            if ch is not None:
                try:
                    ch.sock.settimeout(None)
                    gone = not ch.sock.recv(4096)  # nothing comes but the end
                except OSError:
                    gone = True
                if self._closed.is_set() or not gone:
                    continue
                with self._lock:
                    if self._ch is ch:
                        log.warning("the supervisor closed the DNS connection")
                        self._lost()
            if self._closed.wait(self._retry):
                return
            self._reconnect()

    def _reconnect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ch = Channel(sock)
        with self._lock:
            if self._closed.is_set() or self._ch is not None:
                ch.close()
                return
            try:
                sock.settimeout(self._timeout)
                sock.connect(str(self.root / SOCKET))
                sock.sendall(json.dumps({"op": DNS_KEEP_OP}).encode() + b"\n")
                self._receive_held(ch)
            except (OSError, ValueError, KeyError):
                ch.close()
                self._close_taken()
                return
            self._ch = ch
            # A supervisor that restarted holds nothing of ours: all again.
            for key in list(self._taken):
                self._drop_locked(key)
            self._close_taken()
            for key, (network, udp, tcp) in self._listeners.items():
                msg = {"op": "keep", "address": str(key[0]), "port": key[1], "network": network}
                if self._send(msg, [udp.fileno(), tcp.fileno()]):
                    self._kept[key] = network
            if self._serving:
                self._send({"op": "serving"})
            log.info("DNS listeners shared with the supervisor again (%d)", len(self._listeners))

    def _receive_held(self, ch: Channel) -> None:
        while True:
            msgs = ch.receive()
            if msgs is None:
                raise OSError("the supervisor closed the connection")
            for msg, fds in msgs:
                op = msg.get("op")
                if op == "held" and len(fds) == 2:
                    key = (ipaddress.ip_address(msg["address"]), int(msg["port"]))
                    udp, tcp = adopt(fds[0]), adopt(fds[1])
                    self._taken[key] = (udp, tcp)
                    net = msg.get("network")
                    self._kept[key] = None if net is None else str(net)
                elif op == "ready":
                    return
                else:
                    close_fds(fds)
                    if not msg.get("ok", True):
                        raise OSError(str(msg.get("error", "refused")))

    def take(self, address: IPAddress, port: int) -> tuple[socket.socket, socket.socket] | None:
        with self._lock:
            return self._taken.pop((address, port), None)

    def keep(
        self,
        address: IPAddress,
        port: int,
        network: str | None,
        udp: socket.socket,
        tcp: socket.socket,
    ) -> None:
        key = (address, port)
        with self._lock:
            self._listeners[key] = (network, udp, tcp)
            if key in self._kept and self._kept[key] == network:
                return
            msg = {"op": "keep", "address": str(address), "port": port, "network": network}
            if self._send(msg, [udp.fileno(), tcp.fileno()]):
                self._kept[key] = network

    def drop(self, address: IPAddress, port: int) -> None:
        with self._lock:
            self._drop_locked((address, port))

    def _drop_locked(self, key: _Key) -> None:
        self._kept.pop(key, None)
        self._listeners.pop(key, None)
        self._send({"op": "drop", "address": str(key[0]), "port": key[1]})

    def unclaimed(self) -> None:
        """Close the pairs taken back that no listener wants any more (their
        network went away while no agent ran) and have the supervisor drop
        them too."""
        with self._lock:
            for key in list(self._taken):
                self._drop_locked(key)
            self._close_taken()

    def serving(self) -> None:
        with self._lock:
            self._serving = True
            self._send({"op": "serving"})

    def save(self, snapshot: bytes) -> None:
        """Raises ``OSError``."""
        write_atomically(self.root / SNAPSHOT, snapshot)

    def release(self) -> None:
        """Close the connection: the supervisor answers from now on."""
        self._closed.set()
        with self._lock:
            if self._ch is not None:
                self._ch.close()
                self._ch = None
            self._close_taken()
            self._listeners = {}

    def _close_taken(self) -> None:
        for udp, tcp in self._taken.values():
            udp.close()
            tcp.close()
        self._taken = {}

    def _send(self, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
        if self._ch is None:
            return False
        try:
            self._ch.send(msg, fds or ())
            return True
        except OSError as exc:
            # The supervisor died: this agent serves on, and the watcher
            # hands everything to the next supervisor.
            log.warning("lost the supervisor's DNS connection: %s", exc)
            self._lost()
            return False

    def _lost(self) -> None:
        if self._ch is not None:
            with contextlib.suppress(OSError):
                self._ch.close()
        self._ch = None
        self._kept = {}
