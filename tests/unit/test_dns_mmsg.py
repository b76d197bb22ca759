"""``cove.dns.mmsg.Batch`` on loopback sockets: datagrams from several
clients in one call, each answer back to its own sender with its own ID,
over IPv4 and IPv6."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from cove.dns.mmsg import HEAD, MAX_DATAGRAM, Batch, source_key

FAMILIES = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


def _batch(slots: int = 8) -> Batch:
    batch = Batch.create(slots)
    if batch is None:
        pytest.skip("no recvmmsg/sendmmsg here")
    return batch


@pytest.fixture(params=FAMILIES, ids=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest) -> tuple[int, str]:
    fam, host = request.param
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
    except OSError:
        pytest.skip(f"cannot bind {host}")
    return fam, host


@pytest.fixture
def sockets(family: tuple[int, str]) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    fam, host = family
    server = socket.socket(fam, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.setblocking(False)
    clients = [socket.socket(fam, socket.SOCK_DGRAM) for _ in range(3)]
    for c in clients:
        c.bind((host, 0))
        c.settimeout(2)
    yield server, clients
    for s in (server, *clients):
        s.close()


def _recv_all(batch: Batch, server: socket.socket, count: int) -> list[int]:
    # Datagrams on loopback are queued by the time sendto returns; still,
    # gather over a few calls rather than assume one gets them all.
    lengths: list[int] = []
    for _ in range(50):
        got = batch.recv(server.fileno())
        assert not lengths or not got, "a second call would overwrite the first"
        lengths = got or lengths
        if len(lengths) >= count:
            break
    return lengths


def test_answers_go_back_to_each_sender_with_its_id(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    server, clients = sockets
    batch = _batch()
    sent = []
    for i, c in enumerate(clients):
        query = bytes([0xA0, i]) + b"question %d" % i
        c.sendto(query, server.getsockname())
        sent.append(query)
    lengths = _recv_all(batch, server, 3)
    assert lengths == [len(q) for q in sent]
    heads = batch.heads(3)
    for i, length in enumerate(lengths):
        assert heads[i * HEAD : i * HEAD + length] == sent[i]
        assert batch.datagram(i, length) == sent[i]
        assert batch.address(i)[:2] == clients[i].getsockname()[:2]
        payload = b" answer %d" % i
        batch.out[i * MAX_DATAGRAM : i * MAX_DATAGRAM + len(payload)] = payload
        batch.out_lens[i] = len(payload)
    assert batch.send(server.fileno(), 3) == 3
    for i, c in enumerate(clients):
        data, addr = c.recvfrom(4096)
        assert data == bytes([0xA0, i]) + b" answer %d" % i
        assert addr[:2] == server.getsockname()[:2]


def test_skipped_slots_get_nothing_and_whole_replies_keep_their_bytes(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    server, clients = sockets
    batch = _batch()
    for i, c in enumerate(clients):
        c.sendto(bytes([0xB0, i]) + b"q", server.getsockname())
    assert len(_recv_all(batch, server, 3)) == 3
    assert batch.reply(0, b"whole reply 0")
    assert batch.reply(2, b"whole reply 2")
    assert not batch.reply(1, b"x" * (MAX_DATAGRAM + 1))  # the caller sends that itself
    assert batch.send(server.fileno(), 3, skip=[1]) == 2
    assert clients[0].recv(4096) == b"whole reply 0"
    assert clients[2].recv(4096) == b"whole reply 2"
    clients[1].settimeout(0.2)
    with pytest.raises(TimeoutError):
        clients[1].recv(4096)


def test_long_datagrams_are_whole_and_batches_are_bounded(
    sockets: tuple[socket.socket, list[socket.socket]],
) -> None:
    server, clients = sockets
    batch = _batch(slots=2)
    long = bytes(range(256)) * 6  # past the head: kept in the slot's overflow
    clients[0].sendto(long, server.getsockname())
    clients[1].sendto(b"short", server.getsockname())
    clients[2].sendto(b"third", server.getsockname())
    first = _recv_all(batch, server, 2)
    assert first == [len(long), 5]
    assert batch.datagram(0, first[0]) == long
    assert batch.datagram(1, first[1]) == b"short"
    assert _recv_all(batch, server, 1) == [5]
    assert batch.address(0)[:2] == clients[2].getsockname()[:2]
    assert batch.recv(server.fileno()) == []  # drained: no error, nothing


def test_source_keys_match_printed_addresses(
    sockets: tuple[socket.socket, list[socket.socket]], family: tuple[int, str]
) -> None:
    server, clients = sockets
    fam, host = family
    batch = _batch()
    clients[0].sendto(b"hi", server.getsockname())
    assert _recv_all(batch, server, 1) == [2]
    assert batch.source_keys(1, fam) == [source_key(host, fam)]
    other = socket.AF_INET if fam == socket.AF_INET6 else socket.AF_INET6
    assert source_key(host, other) is None
    assert source_key("fe80::1%lo", socket.AF_INET6) is None  # zoned: the slow path


def test_a_closed_socket_raises() -> None:
    batch = _batch()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = s.detach()
    socket.close(fd)
    with pytest.raises(OSError):
        batch.recv(fd)
