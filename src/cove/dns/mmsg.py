"""Batched UDP I/O for the DNS server: recvmmsg(2) and sendmmsg(2) via ctypes.

One ``Batch`` holds preallocated buffers for ``slots`` datagrams and is
reused for every socket the I/O thread drains (it is not thread-safe: one
per I/O thread). A round is::

    lengths = batch.recv(fd)          # up to ``slots`` datagrams, one syscall
    heads = batch.heads(len(lengths)) # their first ``HEAD`` bytes, slot i at i * HEAD
    ...                               # answer each slot, or skip it
    batch.send(fd, len(lengths), skipped)  # every answer, one syscall

Each slot keeps the sender's address, and its answer goes back to it
through the same sockaddr bytes the kernel wrote, so no address is parsed
or formatted on the hot path. A received datagram lands in two pieces: its
first ``HEAD`` bytes in a contiguous region (copied out in one go for the
whole batch, which is what makes per-datagram slicing cheap in Python) and
the rest, if any, in a per-slot overflow. An answer is sent as two pieces
too: the query's ID, straight from the receive buffer, and the payload the
caller wrote into ``out``.

``Batch.create`` returns ``None`` where the calls are missing (not Linux,
no libc through ctypes); the server then keeps its recvfrom/sendto loop.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable, Sequence

HEAD = 512
"""Bytes of each datagram in the contiguous region: every classic (non-EDNS)
query fits, and a longer one is reassembled by ``datagram``."""
MAX_DATAGRAM = 4096
"""Longest datagram received whole (as the recvfrom loop's ``recvfrom(4096)``)."""

_NAME = 32  # sockaddr bytes per slot: room for a sockaddr_in6 (28), aligned
_NAMELEN = 28  # told to the kernel both ways: enough for AF_INET and AF_INET6
_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
_PORT = struct.Struct("!H")
_V6 = struct.Struct("!HI16s")  # port, flow info, address
_SCOPE = struct.Struct("=I")
_FAMILY = struct.Struct("=H")


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


_MmsgCall = Callable[..., int]


def _libc_calls() -> tuple[_MmsgCall, _MmsgCall] | None:
    """recvmmsg and sendmmsg, called as (int fd, c_void_p vector, int count,
    int flags[, None]). Through ``PyDLL``, which keeps the GIL: both are
    only ever called without blocking, so releasing and taking it back
    would cost more than the call. No ``argtypes`` either: their per-call
    conversions cost more than the syscall too, and every argument is
    already an ``int`` (C int), ``None`` (NULL) or a ``c_void_p``."""
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        recvmmsg: _MmsgCall = libc.recvmmsg
        sendmmsg: _MmsgCall = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    return recvmmsg, sendmmsg


class Batch:
    """Buffers for one round of up to ``slots`` datagrams; see the module
    docstring. The hot path writes answers itself: for slot ``i``, the
    payload after the ID goes to ``out[i * MAX_DATAGRAM:]`` and its length
    to ``out_lens[i]``."""

    def __init__(self, calls: tuple[_MmsgCall, _MmsgCall], slots: int = 64) -> None:
        if slots < 1:
            raise ValueError("a batch needs at least one slot")
        self._recvmmsg, self._sendmmsg = calls
        self.slots = slots
        self._pins: list[ctypes.Array[ctypes.c_char]] = []
        self._heads = bytearray(slots * HEAD)
        self._tails = bytearray(slots * (MAX_DATAGRAM - HEAD))
        self._names = bytearray(slots * _NAME)
        self.out = bytearray(slots * MAX_DATAGRAM)
        heads, tails = self._address(self._heads), self._address(self._tails)
        names, out = self._address(self._names), self._address(self.out)

        iov_size, hdr_size = ctypes.sizeof(_Iovec), ctypes.sizeof(_Mmsghdr)
        riov = (_Iovec * (2 * slots))()
        siov = (_Iovec * (2 * slots))()
        rhdr = (_Mmsghdr * slots)()
        shdr = (_Mmsghdr * slots)()
        tail = MAX_DATAGRAM - HEAD
        for i in range(slots):
            riov[2 * i] = _Iovec(heads + i * HEAD, HEAD)
            riov[2 * i + 1] = _Iovec(tails + i * tail, tail)
            siov[2 * i] = _Iovec(heads + i * HEAD, 2)  # the query's ID
            siov[2 * i + 1] = _Iovec(out + i * MAX_DATAGRAM, 0)
            for hdr, iov in ((rhdr[i], riov), (shdr[i], siov)):
                hdr.msg_hdr.msg_name = names + i * _NAME
                hdr.msg_hdr.msg_namelen = _NAMELEN
                hdr.msg_hdr.msg_iov = ctypes.addressof(iov) + 2 * i * iov_size
                hdr.msg_hdr.msg_iovlen = 2
        self._keep = (riov, siov, rhdr, shdr)  # the kernel reads them by address
        self._rhdr_ptr = ctypes.c_void_p(ctypes.addressof(rhdr))
        # sendmmsg from any slot on (a batch with skipped slots goes in runs)
        self._shdr_ptrs = [ctypes.c_void_p(ctypes.addressof(h)) for h in shdr]
        # Reset before each round: the kernel writes lengths and flags into
        # the receive headers, and a round may zero some ID pieces.
        self._rhdr_template = bytes(rhdr)
        self._siov_template = bytes(siov)
        self._rhdr_raw = memoryview(rhdr).cast("B")
        self._siov_raw = memoryview(siov).cast("B")
        word = ctypes.sizeof(ctypes.c_ulong)  # size_t, on Linux
        lens_at = _Mmsghdr.msg_len.offset // 4
        self._msg_lens = self._rhdr_raw.cast("I")[lens_at :: hdr_size // 4]
        sizes = self._siov_raw.cast("L")
        stride = 2 * iov_size // word
        at = _Iovec.iov_len.offset // word
        self._id_lens = sizes[at::stride]
        self.out_lens = sizes[at + iov_size // word :: stride]
        self._heads_view = memoryview(self._heads)
        self._tails_view = memoryview(self._tails)

    @classmethod
    def create(cls, slots: int = 64) -> Batch | None:
        """A batch, or ``None`` where recvmmsg/sendmmsg cannot be called."""
        calls = _libc_calls()
        return None if calls is None else cls(calls, slots)

    def _address(self, buf: bytearray) -> int:
        pin = (ctypes.c_char * len(buf)).from_buffer(buf)
        self._pins.append(pin)  # also keeps ``buf`` from ever being resized
        return ctypes.addressof(pin)

    # -- receiving -----------------------------------------------------------

    def recv(self, fd: int) -> list[int]:
        """Receive what is waiting on ``fd`` (up to ``slots`` datagrams,
        without blocking); returns their lengths, empty when none. Raises
        ``OSError`` for errors other than "nothing waiting"."""
        self._rhdr_raw[:] = self._rhdr_template
        self._siov_raw[:] = self._siov_template
        n = self._recvmmsg(fd, self._rhdr_ptr, self.slots, socket.MSG_DONTWAIT, None)
        if n > 0:
            lengths: list[int] = self._msg_lens[:n].tolist()
            return lengths
        if n < 0:
            err = ctypes.get_errno()
            if err not in _AGAIN:
                raise OSError(err, os.strerror(err))
        return []

    def heads(self, n: int) -> bytes:
        """The first ``HEAD`` bytes of slots ``0..n-1``, slot i at ``i * HEAD``
        (beyond a datagram's length: stale bytes)."""
        return bytes(self._heads_view[: n * HEAD])

    def datagram(self, i: int, length: int) -> bytes:
        """Slot ``i``'s datagram, whole."""
        o = i * HEAD
        if length <= HEAD:
            return bytes(self._heads_view[o : o + length])
        t = i * (MAX_DATAGRAM - HEAD)
        rest = self._tails_view[t : t + min(length, MAX_DATAGRAM) - HEAD]
        return bytes(self._heads_view[o : o + HEAD]) + bytes(rest)

    def address(self, i: int) -> tuple[str, int] | tuple[str, int, int, int]:
        """Slot ``i``'s sender as ``socket.recvfrom`` gives it."""
        o = i * _NAME
        names = self._names
        if _FAMILY.unpack_from(names, o)[0] == socket.AF_INET6:
            port, flow, raw = _V6.unpack_from(names, o + 2)
            (scope,) = _SCOPE.unpack_from(names, o + 24)
            host = socket.inet_ntop(socket.AF_INET6, raw)
            if scope:
                try:
                    host += "%" + socket.if_indextoname(scope)
                except OSError:
                    host += f"%{scope}"
            return host, port, flow, scope
        (port,) = _PORT.unpack_from(names, o + 2)
        return socket.inet_ntop(socket.AF_INET, bytes(names[o + 4 : o + 8])), port

    def source_keys(self, n: int, family: int) -> list[bytes]:
        """A key per slot for ``source_key`` lookups: the sender's address
        bytes (and, for IPv6, its scope id)."""
        names = bytes(self._names[: n * _NAME])
        a, b = (8, 28) if family == socket.AF_INET6 else (4, 8)
        return [names[o + a : o + b] for o in range(0, n * _NAME, _NAME)]

    # -- answering -----------------------------------------------------------

    def reply(self, i: int, data: bytes) -> bool:
        """Answer slot ``i`` with ``data`` whole (ID included); ``False`` when
        it does not fit a slot (send it some other way, and skip the slot)."""
        if len(data) > MAX_DATAGRAM:
            return False
        o = i * MAX_DATAGRAM
        self.out[o : o + len(data)] = data
        self.out_lens[i] = len(data)
        self._id_lens[i] = 0
        return True

    def send(self, fd: int, n: int, skip: Sequence[int] = ()) -> int:
        """Send the answers of slots ``0..n-1`` but those in ``skip``
        (ascending); returns how many went. One that cannot go (full
        buffer, a firewall's refusal) is dropped, as a failed ``sendto``
        would be: the client retries."""
        sent = start = 0
        for stop in (*skip, n):
            if stop > start:
                sent += self._send_run(fd, start, stop - start)
            start = stop + 1
        return sent

    def _send_run(self, fd: int, start: int, count: int) -> int:
        sent = 0
        while count > 0:
            r = self._sendmmsg(fd, self._shdr_ptrs[start], count, 0)
            if r > 0:
                sent += r
            else:
                r = 1  # datagram ``start`` failed: drop it, go on with the rest
            start += r
            count -= r
        return sent


def source_key(address: str, family: int) -> bytes | None:
    """The ``source_keys`` form of a printed address (``None`` when it is not
    one of ``family``'s, or carries a zone: those take the slow path)."""
    try:
        raw = socket.inet_pton(family, address)
    except (OSError, ValueError):
        return None
    return raw + b"\0\0\0\0" if family == socket.AF_INET6 else raw
