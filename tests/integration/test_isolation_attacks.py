"""An attacker inside a container, against a real agent in a host namespace
of its own: forged source addresses, forged MACs, ARP poisoning, taking
another container's or another network's address, internal networks
against VIPs and published ports that point outside, and the host's
loopback. Every attack has a control beside it that shows the same probe
gets through where it is allowed, so a test cannot pass by probing
nothing."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    eventually,
    inspect,
    need_containers,
    run_echo,
    runtime_cleanup_fixture,
    scripts_fixture,
    tcp,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]

# A server that writes down what reached it: "<proto> <source> <payload>".
RECORDER = """\
import selectors, socket, sys
port = int(sys.argv[1])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port)); t.listen(64)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
sel = selectors.DefaultSelector()
sel.register(t, selectors.EVENT_READ); sel.register(u, selectors.EVENT_READ)
print("listening on", port, flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is t:
            c, peer = t.accept(); c.settimeout(2)
            try:
                data = c.recv(4096)
                print("tcp", peer[0], data.decode(errors="replace"), flush=True)
                c.sendall(b"ok:" + data)
            except OSError:
                pass
            c.close()
        else:
            data, peer = u.recvfrom(4096)
            print("udp", peer[0], data.decode(errors="replace"), flush=True)
            u.sendto(b"ok:" + data, peer)
"""

# What the attacker runs inside a container (the host's python3, no scapy:
# raw frames through AF_PACKET).
ATTACK = r"""
import fcntl, socket, struct, subprocess, sys, time

# "+CIDR" first: (re)take that address on eth0 right before each attempt
# (the agent's reconciler takes addresses it did not give back).
TAKE = sys.argv.pop(1)[1:] if sys.argv[1].startswith("+") else None

def take():
    if TAKE:
        subprocess.run(["ip", "addr", "add", TAKE, "dev", "eth0"], capture_output=True)

def bound(kind, src):
    take()
    s = socket.socket(socket.AF_INET, kind)
    s.bind((src, 0))
    return s

def mac_bytes(text):
    return bytes(int(x, 16) for x in text.split(":"))

def own_mac(iface):
    # Not /sys/class/net: that sysfs belongs to the host's namespace.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    info = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", iface.encode()))  # SIOCGIFHWADDR
    return ":".join(f"{b:02x}" for b in info[18:24])

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def ipv4_udp(src, dst, dport, payload):
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + udp

def send_frame(iface, dst_mac, src_mac, ethertype, payload, count=3):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    frame = mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ethertype) + payload
    for _ in range(count):
        s.send(frame)
        time.sleep(0.05)

def udp(src, dst, port, payload):
    for _ in range(3):
        try:
            s = bound(socket.SOCK_DGRAM, src)
            s.settimeout(1)
            s.sendto(payload.encode(), (dst, int(port)))
            print(s.recvfrom(4096)[0].decode())
            return
        except OSError:
            time.sleep(0.2)
    print("FAIL")

def tcp(src, dst, port, payload):
    try:
        take()
        s = socket.create_connection((dst, int(port)), timeout=3, source_address=(src, 0))
        s.sendall(payload.encode())
        print(s.recv(4096).decode())
    except OSError as exc:
        print("FAIL", exc)

def dns(src, server, name):
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split("."))
    query += b"\0" + struct.pack("!HH", 1, 1)
    for _ in range(2):
        try:
            s = bound(socket.SOCK_DGRAM, src)
            s.settimeout(1)
            s.sendto(query, (server, 53))
            data = s.recvfrom(4096)[0]
        except OSError:
            time.sleep(0.2)
            continue
        flags, _, ancount = struct.unpack("!HHH", data[2:8])
        print("ANSWER", flags & 0xF, ancount)
        return
    print("NOANSWER")

def neighbor_advert(src, dst, target, lladdr):
    # unsolicited, override: "target is at lladdr"
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + socket.inet_pton(socket.AF_INET6, target)
    body += bytes([2, 1]) + mac_bytes(lladdr)
    s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    pseudo = s6 + d6 + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    head = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + s6 + d6
    return head + body

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "udp":
    udp(*args)
elif cmd == "send":  # src dst port payload: one datagram, no waiting
    src, dst, port, payload = args
    bound(socket.SOCK_DGRAM, src).sendto(payload.encode(), (dst, int(port)))
elif cmd == "tcp":
    tcp(*args)
elif cmd == "dns":
    dns(*args)
elif cmd == "raw-udp":  # iface dst_mac src_mac src_ip dst_ip port payload
    iface, dst_mac, src_mac, src, dst, port, payload = args
    send_frame(iface, dst_mac, src_mac, 0x0800, ipv4_udp(src, dst, int(port), payload.encode()))
elif cmd == "na":  # iface dst_mac src6 dst6 target6: "target6 is at my MAC"
    iface, dmac, src, dst, target = args
    me = own_mac(iface)
    send_frame(iface, dmac, me, 0x86DD, neighbor_advert(src, dst, target, me), count=5)
    print("sent")
elif cmd == "arp-reply":  # iface target_mac target_ip claimed_ip: "claimed_ip is at my MAC"
    iface, tmac, tip, claim = args
    me = own_mac(iface)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac_bytes(me) + socket.inet_aton(claim)
    arp += mac_bytes(tmac) + socket.inet_aton(tip)
    send_frame(iface, tmac, me, 0x0806, arp, count=5)
    print("sent")
"""

FORGED = "192.0.2.77"  # TEST-NET-1: never a cove address


def attacker_args(name: str, network: str, *command: str, cap_help: str) -> list[str]:
    """The ``cove run`` arguments of every attacker container: with
    NET_ADMIN where ``cove run`` knows ``--cap-add`` (containers that drop
    capabilities by default), as an attacker would ask for it."""
    caps = ["--cap-add", "NET_ADMIN"] if "--cap-add" in cap_help else []
    return ["run", "-d", "--name", name, "--network", network, *caps, "--", *command]


@pytest.fixture
def tools(tmp_path: Path) -> tuple[str, str]:
    rec = tmp_path / "recorder.py"
    rec.write_text(RECORDER)
    att = tmp_path / "attack.py"
    att.write_text(ATTACK)
    return str(rec), str(att)


@pytest.fixture
def cove(agent: Any) -> Any:
    need_containers(agent)
    return agent


def run_attacker(agent: Any, name: str, network: str) -> str:
    help_text = agent.cli("run", "--help").stdout
    agent.ok(*attacker_args(name, network, "sleep", "600", cap_help=help_text))
    return name


def attack(agent: Any, name: str, att: str, *args: str) -> str:
    res = agent.cli("exec", name, "--", "python3", "-S", att, *args)
    return res.stdout.strip() + res.stderr.strip()


def sh(agent: Any, name: str, *cmd: str) -> None:
    agent.ok("exec", name, "--", *cmd)


def recorded(agent: Any, name: str) -> str:
    return str(agent.ok("logs", name))


def mac(agent: Any, name: str) -> str:
    (link,) = json.loads(agent.ok("exec", name, "--", "ip", "-j", "link", "show", "eth0"))
    return str(link["address"]).lower()


def bridge_mac(agent: Any, network: str) -> str:
    info = json.loads(agent.ok("network", "inspect", network))
    info = info[0] if isinstance(info, list) else info
    links = json.loads(subprocess.run(
        ["ip", "-j", "link", "show", info["bridge"]], capture_output=True, text=True, check=True
    ).stdout)  # fmt: skip
    return str(links[0]["address"])


def start_recorder(agent: Any, name: str, network: str, rec: str, *extra: str) -> str:
    agent.ok("run", "-d", "--name", name, "--network", network, *extra,
             "--", "python3", "-S", "-u", rec, "7000")  # fmt: skip
    eventually(lambda: "listening" in recorded(agent, name))
    return address(agent, name, network)


def token(what: str) -> str:
    return f"{what}-{secrets.token_hex(4)}"


def policy_lab(agent: Any, rec: str) -> tuple[str, str]:
    """Network ``pn`` with default-deny: ``db`` records port 7000, ``web``
    may reach it, ``evil`` may not."""
    agent.ok("network", "create", "pn", "--subnet", "10.89.30.0/24")
    db = start_recorder(agent, "db", "pn", rec)
    agent.ok("run", "-d", "--name", "web", "--network", "pn", "--", "sleep", "600")
    run_attacker(agent, "evil", "pn")
    agent.ok("policy", "default-deny", "pn", "on")
    agent.ok("policy", "allow", "--network", "pn", "--from", "web", "--to", "db",
             "--port", "7000/tcp", "--port", "7000/udp")  # fmt: skip
    return db, address(agent, "web", "pn")


def test_forged_source_outside_cove_is_dropped_under_default_deny(
    cove: Any, tools: tuple[str, str]
) -> None:
    rec, att = tools
    db, web = policy_lab(cove, rec)
    evil = address(cove, "evil", "pn")
    # The control: the allowed container gets through, TCP and UDP.
    ok_tcp, ok_udp = token("web-tcp"), token("web-udp")
    assert eventually(lambda: "ok:" in attack(cove, "web", att, "tcp", web, db, "7000", ok_tcp))
    assert "ok:" in attack(cove, "web", att, "udp", web, db, "7000", ok_udp)
    # The host routes the forged address back to the attacker, so a flow
    # from it would complete (as with ARP poisoning on a real LAN).
    subprocess.run(["ip", "route", "add", f"{FORGED}/32", "via", evil], check=True)
    bad_udp, bad_tcp = token("forged-udp"), token("forged-tcp")
    take = f"+{FORGED}/32"
    out_udp = attack(cove, "evil", att, take, "udp", FORGED, db, "7000", bad_udp)
    out_tcp = attack(cove, "evil", att, take, "tcp", FORGED, db, "7000", bad_tcp)
    log = recorded(cove, "db")
    assert ok_tcp in log and ok_udp in log
    assert bad_udp not in log and out_udp == "FAIL"
    assert bad_tcp not in log and out_tcp.startswith("FAIL")


def test_arp_poisoning_and_taking_the_allowed_containers_address_fail(
    cove: Any, tools: tuple[str, str]
) -> None:
    rec, att = tools
    db, web = policy_lab(cove, rec)
    ok = token("web")
    # db learns web's MAC from a real flow; a second later (the kernel's
    # lock time) an ARP reply may override it.
    assert eventually(lambda: "ok:" in attack(cove, "web", att, "tcp", web, db, "7000", ok))
    web_mac, db_mac, evil_mac = mac(cove, "web"), mac(cove, "db"), mac(cove, "evil")
    time.sleep(1.5)
    assert attack(cove, "evil", att, "arp-reply", "eth0", db_mac, db, web) == "sent"
    neigh = cove.ok("exec", "db", "--", "ip", "neigh", "show", web)
    assert evil_mac not in neigh.lower(), f"db's ARP entry for web was poisoned: {neigh}"
    # Taking web's address: as web, over UDP and (replies follow the ARP
    # entry) TCP.
    as_udp, as_tcp = token("as-web-udp"), token("as-web-tcp")
    attack(cove, "evil", att, f"+{web}/32", "udp", web, db, "7000", as_udp)
    attack(cove, "evil", att, f"+{web}/32", "tcp", web, db, "7000", as_tcp)
    log = recorded(cove, "db")
    assert ok in log
    assert as_udp not in log and as_tcp not in log
    # web itself still gets through, as itself.
    again = token("web-again")
    assert "ok:" in attack(cove, "web", att, "tcp", web, db, "7000", again)
    assert web_mac.lower() in cove.ok("exec", "db", "--", "ip", "neigh", "show", web).lower()


def test_a_forged_mac_is_dropped(cove: Any, tools: tuple[str, str]) -> None:
    rec, att = tools
    cove.ok("network", "create", "open", "--subnet", "10.89.31.0/24")
    sink = start_recorder(cove, "sink", "open", rec)
    run_attacker(cove, "evil", "open")
    evil = address(cove, "evil", "open")
    sink_mac, evil_mac = mac(cove, "sink"), mac(cove, "evil")
    real, forged = token("real-mac"), token("forged-mac")
    # The same hand-made frame, first with its own MAC (the control) ...
    attack(cove, "evil", att, "raw-udp", "eth0", sink_mac, evil_mac, evil, sink, "7000", real)
    # ... then with another (also as the interface's own MAC).
    attack(cove, "evil", att, "raw-udp", "eth0", sink_mac, "02:66:6f:72:67:65", evil, sink,
           "7000", forged)  # fmt: skip
    log = eventually(lambda: real in recorded(cove, "sink") and recorded(cove, "sink"))
    assert forged not in log
    # Changing the interface's MAC (the agent's reconciler rebuilds the
    # link soon after, so the datagram goes at once, without retries).
    changed = token("changed-mac")
    sh(cove, "evil", "sh", "-c",
       f"ip link set eth0 address 02:66:6f:72:67:66 && python3 -S {att} send {evil} {sink} 7000 "
       f"{changed}")  # fmt: skip
    time.sleep(1)
    assert changed not in recorded(cove, "sink")


@contextlib.contextmanager
def fake_upstream(port: int = 5399) -> Iterator[list[str]]:
    """The agent's upstream resolver (127.0.0.1:5399 in the test's host
    namespace): answers every A query with 192.0.2.1 and notes its name."""
    seen: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                continue
            labels, pos = [], 12
            while data[pos]:
                labels.append(data[pos + 1 : pos + 1 + data[pos]].decode())
                pos += 1 + data[pos]
            seen.append(".".join(labels).lower())
            question = data[12 : pos + 5]
            head = data[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
            answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("192.0.2.1")
            sock.sendto(head + question + answer, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def test_another_networks_address_gets_no_answer_from_its_gateway_dns(
    cove: Any, tools: tuple[str, str]
) -> None:
    _, att = tools
    cove.ok("network", "create", "inner", "--subnet", "10.89.40.0/24", "--internal")
    cove.ok("network", "create", "outer", "--subnet", "10.89.41.0/24")
    cove.ok("run", "-d", "--name", "friend", "--network", "outer", "--", "sleep", "600")
    run_attacker(cove, "spy", "inner")
    friend, spy = address(cove, "friend", "outer"), address(cove, "spy", "inner")
    with fake_upstream() as seen:
        # The control: outer's own container is answered and forwarded.
        assert eventually(
            lambda: (
                attack(cove, "friend", att, "dns", friend, "10.89.41.1", "ok.example.")
                == "ANSWER 0 1"
            )
        )
        assert "ok.example" in seen
        # From the internal network, through its own gateway: never upstream.
        attack(cove, "spy", att, "dns", spy, "10.89.40.1", "inner-leak.example.")
        # With an address of outer taken, asking outer's gateway.
        take = "+10.89.41.200/24"
        leak = attack(cove, "spy", att, take, "dns", "10.89.41.200", "10.89.41.1", "leak.example.")
        name = attack(cove, "spy", att, take, "dns", "10.89.41.200", "10.89.41.1", "friend.")
        time.sleep(0.5)
        assert leak == "NOANSWER" and name == "NOANSWER"
        assert "leak.example" not in seen and "inner-leak.example" not in seen


def test_internal_network_reaches_no_vip_or_published_port_outside(
    cove: Any, tools: tuple[str, str], scripts: tuple[str, str]
) -> None:
    _, att = tools
    echo, client = scripts
    cove.ok("network", "create", "inner", "--subnet", "10.89.42.0/24", "--internal")
    cove.ok("network", "create", "outer", "--subnet", "10.89.43.0/24")
    run_echo(cove, "svc", echo, "--network", "outer", "--service", "svc:7")
    run_echo(cove, "pub", echo, "--network", "outer", "-p", "18090:7")
    run_echo(cove, "mate", echo, "--network", "inner")
    run_attacker(cove, "probe", "inner")
    cove.ok("run", "-d", "--name", "friend", "--network", "outer", "--", "sleep", "600")
    vip = cove.ok("service", "vip", "svc").strip()
    probe = address(cove, "probe", "inner")
    # The controls: the host and outer's own container reach both.
    assert eventually(lambda: tcp("127.0.0.1", 18090)) == "pub:ping"
    # (The VIP answers once svc's health check passes.)
    for target, port, want in ((vip, "7", "svc:ping"), ("10.89.43.1", "18090", "pub:ping")):
        got = eventually(
            lambda t=target, p=port: cove.ok(
                "exec", "friend", "--", "python3", "-S", client, "tcp", p, t
            ),
            timeout=20,
        )
        assert got.strip() == want
    # The internal network's own traffic and its gateway DNS still work.
    assert cove.ok("exec", "probe", "--", "getent", "hosts", "mate").split()[1] == "mate"
    out = cove.ok("exec", "probe", "--", "python3", "-S", client, "tcp", "7", "mate")
    assert out.strip() == "mate:ping"
    # Nothing beyond it: the VIP, the published port through either
    # gateway (host addresses), the host's other services.
    for target, port in ((vip, "7"), ("10.89.42.1", "18090"), ("10.89.43.1", "18090")):
        got = attack(cove, "probe", att, "tcp", probe, target, port, "x")
        assert got.startswith("FAIL"), f"{target}:{port} answered: {got}"
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", 17777))
        srv.listen(8)
        got = attack(cove, "probe", att, "tcp", probe, "10.89.42.1", "17777", "x")
        assert got.startswith("FAIL"), f"the host answered an internal container: {got}"


def test_host_loopback_is_unreachable_while_published_ports_hairpin(
    cove: Any, tools: tuple[str, str], scripts: tuple[str, str]
) -> None:
    _, att = tools
    echo, client = scripts
    cove.ok("network", "create", "lnet", "--subnet", "10.89.44.0/24")
    # A published port: its bridge routes loopback addresses for the host.
    run_echo(cove, "pubsrv", echo, "--network", "lnet", "-p", "18095:7")
    run_attacker(cove, "att", "lnet")
    me, gw_mac, my_mac = address(cove, "att", "lnet"), bridge_mac(cove, "lnet"), mac(cove, "att")
    assert eventually(lambda: tcp("127.0.0.1", 18095)) == "pubsrv:ping"
    out = cove.ok("exec", "att", "--", "python3", "-S", client, "tcp", "18095", "10.89.44.1")
    assert out.strip() == "pubsrv:ping"
    # A service of the host's on all addresses, loopback included.
    got: list[bytes] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 17999))
    sock.settimeout(0.2)
    try:
        via_gw, via_lo = token("gateway"), token("loopback")
        # The control: the hand-made frame to the gateway's address arrives.
        attack(cove, "att", att, "raw-udp", "eth0", gw_mac, my_mac, me, "10.89.44.1", "17999",
               via_gw)  # fmt: skip
        attack(cove, "att", att, "raw-udp", "eth0", gw_mac, my_mac, me, "127.0.0.1", "17999",
               via_lo)  # fmt: skip
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                got.append(sock.recvfrom(4096)[0])
    finally:
        sock.close()
    assert via_gw.encode() in got
    assert via_lo.encode() not in got


def guard_ports() -> set[str]:
    res = subprocess.run(
        ["nft", "-j", "list", "set", "bridge", "cove_guard", "ports"],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        return set()
    for obj in json.loads(res.stdout)["nftables"]:
        if "set" in obj:
            return {e for e in obj["set"].get("elem", []) if isinstance(e, str)}
    return set()


def test_guard_converges_after_kill_9(cove: Any, tools: tuple[str, str]) -> None:
    rec, att = tools
    cove.ok("network", "create", "gnet", "--subnet", "10.89.45.0/24")
    sink = start_recorder(cove, "sink", "gnet", rec)
    run_attacker(cove, "evil", "gnet")
    veths = {inspect(cove, n)["endpoints"]["gnet"]["host_veth"] for n in ("sink", "evil")}
    assert eventually(lambda: guard_ports() == veths)
    # connect and disconnect: the port is guarded, then its entries go
    cove.ok("network", "create", "gnet2", "--subnet", "10.89.48.0/24")
    cove.ok("network", "connect", "gnet2", "evil")
    extra = inspect(cove, "evil")["endpoints"]["gnet2"]["host_veth"]
    assert guard_ports() == veths | {extra}
    cove.ok("network", "disconnect", "gnet2", "evil")
    assert eventually(lambda: guard_ports() == veths)
    evil_veth = inspect(cove, "evil")["endpoints"]["gnet"]["host_veth"]
    cove.kill9()
    # While the agent is down, its entries hold; someone removes one and
    # adds a stale one.
    subprocess.run(["nft", "delete", "element", "bridge", "cove_guard", "ports",
                    f'{{ "{evil_veth}" }}'], check=True)  # fmt: skip
    subprocess.run(["nft", "add", "element", "bridge", "cove_guard", "ports",
                    '{ "cv00deadbeef" }'], check=True)  # fmt: skip
    cove.start()
    assert eventually(lambda: guard_ports() == veths, timeout=15)
    evil = address(cove, "evil", "gnet")
    ok = token("after-restart")
    assert "ok:" in eventually(lambda: attack(cove, "evil", att, "udp", evil, sink, "7000", ok))
    bad = token("forged-after-restart")
    attack(cove, "evil", att, f"+{FORGED}/32", "udp", FORGED, sink, "7000", bad)
    assert bad not in recorded(cove, "sink")


def test_neighbor_advertisement_for_another_containers_ipv6_does_not_poison(
    cove: Any, tools: tuple[str, str], scripts: tuple[str, str]
) -> None:
    _, att = tools
    echo, client = scripts
    cove.ok("network", "create", "six", "--ipv6", "--subnet", "10.89.46.0/24",
            "--subnet", "fd00:89:46::/64")  # fmt: skip
    run_echo(cove, "victim", echo, "--network", "six")
    cove.ok("run", "-d", "--name", "observer", "--network", "six", "--", "sleep", "600")
    run_attacker(cove, "evil", "six")

    def v6(name: str) -> str:
        return str(inspect(cove, name)["endpoints"]["six"]["ipv6"])

    victim, observer, evil = v6("victim"), v6("observer"), v6("evil")
    # The observer talks to the victim over IPv6 (ND with the gateway and
    # between containers works), so it has a neighbour entry to poison.
    out = eventually(
        lambda: cove.ok("exec", "observer", "--", "python3", "-S", client, "udp", "7", victim)
    )
    assert out.strip() == "victim:ping"
    evil_mac, observer_mac = mac(cove, "evil"), mac(cove, "observer")
    time.sleep(1.5)
    sent = attack(cove, "evil", att, "na", "eth0", observer_mac, evil, observer, victim)
    assert sent == "sent"
    neigh = cove.ok("exec", "observer", "--", "ip", "-6", "neigh", "show", victim)
    assert mac(cove, "victim") in neigh.lower()
    assert evil_mac not in neigh.lower(), f"the observer's entry was poisoned: {neigh}"


def test_gateway_dns_answers_again_after_its_bridge_is_made_anew(cove: Any) -> None:
    # Listeners are bound to their bridge: one deleted by hand and repaired
    # by the agent is a new interface, which they must follow.
    cove.ok("network", "create", "dnet", "--subnet", "10.89.47.0/24")
    cove.ok("run", "-d", "--name", "a", "--network", "dnet", "--", "sleep", "600")
    cove.ok("run", "-d", "--name", "b", "--network", "dnet", "--", "sleep", "600")
    b = address(cove, "b", "dnet")

    def resolves() -> bool:
        res = cove.cli("exec", "a", "--", "getent", "hosts", "b")
        return res.returncode == 0 and res.stdout.split()[0] == b

    assert eventually(resolves)
    info = json.loads(cove.ok("network", "inspect", "dnet"))
    bridge = (info[0] if isinstance(info, list) else info)["bridge"]
    subprocess.run(["ip", "link", "del", bridge], check=True)
    assert eventually(resolves, timeout=20)
