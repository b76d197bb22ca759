"""etcd failure handling and security, against real etcd processes.

The client side (``EtcdStore``): a three-member cluster that loses its
leader in the middle of a stream of writes loses no acknowledged write and
raises nothing; a hub watching through it delivers every change once; TLS
with client certificates works, and a client without one is refused.

The agent side (real agents in a host namespace, ``--store etcd://a,b,c``):
the same member failure under writes through the HTTP API, an agent started
while etcd is down, and an agent whose etcd stops and comes back.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from agentproc import AgentProc
from conftest import cleanup_agent
from cove.clock import SystemClock
from cove.errors import InvalidArgument, StoreError
from cove.store import Compare, EtcdStore, Event, Put, WatchHub, open_store
from cove.store.etcd_transport import TlsRefused
from etcd_fixture import EtcdProcess, etcd_cluster, etcd_process, etcd_tls

pytestmark = pytest.mark.etcd


# -- the client --------------------------------------------------------------


def test_cluster_member_killed_during_writes_loses_nothing() -> None:
    with etcd_cluster(3) as cluster:
        # The client starts on the leader, so killing it takes away both
        # the member the client talks to (and watches) and the leader.
        leader = cluster.leader()
        urls = sorted(cluster.urls, key=lambda u: u != leader.url)
        store = EtcdStore(urls, SystemClock())
        hub = WatchHub(store, poll=0.1)
        hub.start()
        seen: list[Event] = []
        hub.subscribe("ha/", seen.extend)
        acked: dict[str, bytes] = {}
        errors: list[BaseException] = []
        killed = threading.Event()

        def writer() -> None:
            for i in range(400):
                key, value = f"ha/{i:04d}", str(i).encode()
                try:
                    if i % 2:
                        store.put(key, value)
                    else:  # a compare-and-swap, as the registry and IPAM write
                        res = store.txn([Compare.absent(key)], [Put(key, value)])
                        assert res.succeeded, f"txn for {key} did not succeed"
                except BaseException as exc:
                    errors.append(exc)
                    return
                acked[key] = value
                if i == 100:
                    killed.wait(10)

        thread = threading.Thread(target=writer)
        thread.start()
        while len(acked) < 100 and thread.is_alive():
            time.sleep(0.01)
        leader.kill()
        killed.set()
        thread.join(60)
        assert not errors, f"a write failed while one member of three died: {errors[0]!r}"
        assert len(acked) == 400
        survivor = next(m for m in cluster.members if m is not leader)
        check = EtcdStore([survivor.url], SystemClock())
        stored = {kv.key: kv.value for kv in check.range("ha/").kvs}
        check.close()
        assert stored == acked
        # The hub's watch moved to a surviving member from where it stopped:
        # every write once, in order.
        assert hub.wait_for(store.revision, timeout=15)
        keys = [e.kv.key for e in seen]
        assert keys == sorted(acked), "the hub lost or repeated events across the failover"
        hub.stop()
        store.close()


def test_a_member_that_is_down_is_skipped() -> None:
    with etcd_cluster(3) as cluster:
        cluster.members[0].kill()
        store = EtcdStore(cluster.urls, SystemClock(), timeout=5)
        start = time.monotonic()
        for i in range(20):
            store.put(f"skip/{i}", b"x")
        # The dead first member is set aside after one refused connection,
        # not asked again for every request.
        assert time.monotonic() - start < 3
        assert len(store.range("skip/").kvs) == 20
        store.close()


def test_unreachable_store_fails_within_the_bound_and_names_it() -> None:
    port = _closed_port()
    store = open_store(f"etcd://127.0.0.1:{port}", SystemClock(), timeout=1.5)
    start = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.put("x", b"1")
    took = time.monotonic() - start
    assert 1.0 <= took < 4, took
    assert f"etcd at http://127.0.0.1:{port}" in info.value.message
    assert "unavailable" in info.value.message
    store.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- TLS ---------------------------------------------------------------------


def test_tls_with_client_certificates() -> None:
    with etcd_tls() as member:
        certs = member.certs
        assert certs is not None
        url = f"etcds://{member.hostport}"
        store = open_store(
            url, SystemClock(), ca=certs.ca, cert=certs.client_cert, key=certs.client_key
        )
        store.put("tls/a", b"1")
        watch = store.watch("tls/", store.revision)
        assert [e.kv.key for e in watch.next(timeout=5)] == ["tls/a"]
        watch.close()
        store.close()

        # Without a client certificate, or with one from another CA: refused,
        # at once, as something waiting will not mend.
        for cert, key in ((None, None), (certs.rogue_cert, certs.rogue_key)):
            bare = open_store(url, SystemClock(), ca=certs.ca, cert=cert, key=key, timeout=5)
            start = time.monotonic()
            with pytest.raises(TlsRefused, match="refused the TLS connection"):
                bare.get("tls/a")
            assert time.monotonic() - start < 2
            bare.close()
        # A plain-HTTP client gets nothing either.
        plain = open_store(f"etcd://{member.hostport}", SystemClock(), timeout=1)
        with pytest.raises(StoreError):
            plain.get("tls/a")
        plain.close()


def test_tls_files_are_checked_when_the_store_opens(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    clock = SystemClock()
    with pytest.raises(InvalidArgument, match="cannot read --store-ca"):
        open_store("etcds://127.0.0.1:2379", clock, ca=missing)
    with pytest.raises(InvalidArgument, match="--store-ca .* is not a PEM CA"):
        open_store("etcds://127.0.0.1:2379", clock, ca=junk)
    with pytest.raises(InvalidArgument, match="go together"):
        open_store("etcds://127.0.0.1:2379", clock, cert=junk)
    with pytest.raises(InvalidArgument, match="not a matching"):
        open_store("etcds://127.0.0.1:2379", clock, cert=junk, key=junk)
    with pytest.raises(InvalidArgument, match="etcds://"):
        open_store("etcd://127.0.0.1:2379", clock, ca=junk)


# -- the agent ---------------------------------------------------------------


def _kv_put(port: int, key: str, value: str, timeout: float = 30) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("PUT", f"/v1/kv/{key}", body=value.encode())
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _kv_get(port: int, key: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/kv/{key}?raw", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.mark.root
def test_agent_keeps_every_acknowledged_write_when_a_member_dies(
    hostns: str, tmp_path: Path
) -> None:
    with etcd_cluster(3) as cluster:
        # The agent starts on the leader: killing it takes the member the
        # agent talks to and watches, and the cluster's leader.
        leader = cluster.leader()
        members = sorted(cluster.members, key=lambda m: m is not leader)
        store_url = "etcd://" + ",".join(m.hostport for m in members)
        agent = AgentProc(hostns, tmp_path, "--store", store_url)
        try:
            agent.start()
            statuses: list[tuple[str, int]] = []
            for i in range(150):
                if i == 50:
                    leader.kill()
                key = f"ha/{i:04d}"
                statuses.append((key, _kv_put(agent.http_port, key, str(i))))
            failed = [(k, s) for k, s in statuses if s != 200]
            assert not failed, f"writes failed while one member of three died: {failed[:5]}"
            survivor = next(m for m in cluster.members if m is not leader)
            check = EtcdStore([survivor.url], SystemClock())
            stored = {kv.key for kv in check.range("kv/ha/").kvs} | {
                kv.key for kv in check.range("registry/kv/ha/").kvs
            }
            check.close()
            got = {k.rsplit("/", 1)[-1] for k in stored}
            assert got == {k.rsplit("/", 1)[-1] for k, _ in statuses}
            # The agent keeps serving reads and writes on two members, and
            # its watch moved: a new service reaches DNS.
            assert _kv_get(agent.http_port, "ha/0149") == (200, "149")
            body = {"Name": "after", "ID": "after1", "Address": "10.1.2.9", "Port": 80}
            assert agent.api("PUT", "/v1/agent/service/register", body)[0] == 200
            deadline = time.monotonic() + 5
            while _dig(agent, "after.service.cove") != ["10.1.2.9"]:
                assert time.monotonic() < deadline, agent.log_text()
                time.sleep(0.2)
        finally:
            cleanup_agent(agent)


@pytest.mark.root
def test_agent_started_while_etcd_is_down_waits_for_it(hostns: str, tmp_path: Path) -> None:
    member = EtcdProcess()
    store_url = f"etcd://{member.hostport}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # SIGTERM while waiting: a clean exit, nothing started.
    quitter = AgentProc(hostns, tmp_path / "a", "--store", store_url)
    waiter = AgentProc(hostns, tmp_path / "b", "--store", store_url)
    waiter.http_port, waiter.dns_port = 8510, 8610
    try:
        for proc in (quitter, waiter):
            _spawn(proc)
        _wait_for_log(quitter, f"waiting for etcd at {member.hostport}")
        _wait_for_log(waiter, f"waiting for etcd at {member.hostport}")
        assert quitter.stop(timeout=10) == 0
        assert waiter.proc is not None and waiter.proc.poll() is None
        member.start()
        deadline = time.monotonic() + 20
        while waiter.cli("network", "ls", "-q").returncode != 0:
            assert waiter.proc.poll() is None, waiter.log_text()
            assert time.monotonic() < deadline, waiter.log_text()
            time.sleep(0.2)
        assert _kv_put(waiter.http_port, "late", "1") == 200
        assert "answers; starting" in waiter.log_text()
    finally:
        cleanup_agent(waiter)
        quitter.stop()
        member.stop()
        import shutil

        shutil.rmtree(member.data_dir, ignore_errors=True)


def _spawn(proc: AgentProc) -> None:
    """Start an agent process without waiting for it to be ready."""
    proc.start_args = ()  # type: ignore[attr-defined]
    args = [
        *__import__("agentproc").COVE,
        "agent",
        "--state-dir", str(proc.state_dir),
        "--socket", str(proc.socket),
        "--http", f"127.0.0.1:{proc.http_port}",
        "--dns", f"127.0.0.1:{proc.dns_port}",
        "--upstream", "127.0.0.1:5399",
        "--log-level", "debug",
        *proc.extra,
    ]  # fmt: skip
    with open(proc.log, "ab") as log:
        proc.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)


def _wait_for_log(proc: AgentProc, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log_text():
        assert proc.proc is not None and proc.proc.poll() is None, proc.log_text()
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{proc.log_text()}"
        time.sleep(0.1)


@pytest.mark.root
def test_agent_without_etcd_answers_dns_and_fails_writes_in_bound(
    hostns: str, tmp_path: Path
) -> None:
    member = EtcdProcess()
    member.start()
    agent = AgentProc(
        hostns, tmp_path, "--store", f"etcd://{member.hostport}", "--store-timeout", "2"
    )
    try:
        agent.start()
        body = {"Name": "web", "ID": "web1", "Address": "10.1.2.3", "Port": 80}
        status, _ = agent.api("PUT", "/v1/agent/service/register", body)
        assert status == 200
        assert _dig(agent, "web.service.cove") == ["10.1.2.3"]

        member.stop()
        # Reads served from the agent's caches keep working.
        for _ in range(3):
            assert _dig(agent, "web.service.cove") == ["10.1.2.3"]
        # A write fails with a 503 that names the store, within the bound.
        start = time.monotonic()
        status, answer = agent.api(
            "POST", "/api/networks", {"name": "n1", "subnet": "10.89.76.0/24"}
        )
        took = time.monotonic() - start
        assert status == 503, answer
        assert took < 5, took
        assert f"etcd at http://{member.hostport}" in json.dumps(answer)
        res = agent.cli("network", "create", "n2", "--subnet", "10.89.77.0/24")
        assert res.returncode == 9 and "etcd at" in res.stderr, (res.returncode, res.stderr)

        member.start()
        # Everything converges within seconds of etcd's return.
        deadline = time.monotonic() + 10
        while _kv_put(agent.http_port, "back", "1", timeout=10) != 200:
            assert time.monotonic() < deadline, agent.log_text()
            time.sleep(0.2)
        body = {"Name": "api", "ID": "api1", "Address": "10.1.2.4", "Port": 80}
        status, _ = agent.api("PUT", "/v1/agent/service/register", body)
        assert status == 200
        deadline = time.monotonic() + 5
        while _dig(agent, "api.service.cove") != ["10.1.2.4"]:
            assert time.monotonic() < deadline, agent.log_text()
            time.sleep(0.2)
    finally:
        cleanup_agent(agent)
        member.stop()
        import shutil

        shutil.rmtree(member.data_dir, ignore_errors=True)


def _dig(agent: AgentProc, name: str) -> list[str]:
    res = subprocess.run(
        ["dig", "+short", "+time=2", "+tries=1", "-p", str(agent.dns_port), "@127.0.0.1", name],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return sorted(res.stdout.split())


# -- scale: a steady health check costs etcd nothing ---------------------------


def test_a_steady_health_check_costs_no_etcd_traffic() -> None:
    import consul

    from cove.agent.consul import ConsulServer

    with etcd_process() as member, socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(64)
        store = EtcdStore([member.url], SystemClock())
        server = ConsulServer(store, SystemClock(), node_name="steady")
        server.start()
        try:
            client = consul.Consul(port=server.port)
            time.sleep(0.5)
            before = member.metrics()
            time.sleep(3)  # the agent's own background reads, without a check
            baseline = member.metrics() - before
            port = target.getsockname()[1]
            check = {"TCP": f"127.0.0.1:{port}", "Interval": "100ms"}
            client.agent.service.register("db", service_id="db1", port=port, check=check)
            deadline = time.monotonic() + 10
            while not client.health.service("db", passing=True)[1]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(0.5)
            before = member.metrics()
            time.sleep(3)  # about 30 probes, every one passing
            load = member.metrics() - before
            # Nothing beyond the agent's background (its session sweep, the
            # node's lease keep-alive); before, every probe read its check.
            for method in ("Range", "Txn", "Put"):
                extra = load.calls.get(method, 0) - baseline.calls.get(method, 0)
                assert extra <= 2, f"a steady check costs etcd {method}s: {load.calls} {baseline}"
            assert client.health.service("db", passing=True)[1]
        finally:
            server.stop()
            store.close()


def test_a_hung_member_is_skipped_within_the_bound() -> None:
    """A member that accepts connections but answers nothing (stopped, or cut
    off): requests move on to the others instead of waiting on it, and so
    does a watch, whose stream on it just goes silent."""
    import signal

    with etcd_cluster(3) as cluster:
        leader = cluster.leader()
        urls = sorted(cluster.urls, key=lambda u: u != leader.url)
        # The first put waits out the hung leader's attempt and the others'
        # election (2-3 s on an idle machine; a full CI run's load once made
        # it miss a 5 s budget): what is bounded is the ten puts together.
        store = EtcdStore(urls, SystemClock(), timeout=8)
        hub = WatchHub(store, poll=0.1)
        hub.start()
        seen: list[str] = []
        hub.subscribe("hung/", lambda events: seen.extend(e.kv.key for e in events))
        store.put("hung/before", b"1")
        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            for i in range(10):
                store.put(f"hung/{i}", b"x")
            took = time.monotonic() - start
            assert took < 10, took
            assert len(store.range("hung/").kvs) == 11
            assert hub.wait_for(store.revision, timeout=10), (
                "the hub's watch stayed on the hung member"
            )
            # A put whose answer the hung member never sent is sent again to
            # another member (a put is idempotent); if the first did commit,
            # etcd holds two revisions of that key: two events, same value.
            assert list(dict.fromkeys(seen)) == ["hung/before", *(f"hung/{i}" for i in range(10))]
        finally:
            leader.proc.send_signal(signal.SIGCONT)
            hub.stop()
            store.close()


def test_a_watch_that_moves_past_a_compaction_rereads() -> None:
    """The hub's member hangs while the others change and compact the
    history it would resume from: it re-reads and delivers the difference."""
    import signal

    with etcd_cluster(3) as cluster:
        leader = cluster.leader()
        others = [m.url for m in cluster.members if m is not leader]
        store = EtcdStore([leader.url, *others], SystemClock(), timeout=5)
        writer = EtcdStore(others, SystemClock(), timeout=5)
        hub = WatchHub(store, poll=0.1)
        hub.start()
        state: dict[str, bytes] = {}

        def follow(events: list[Event]) -> None:
            for e in events:
                if e.type.value == "put":
                    state[e.kv.key] = e.kv.value
                else:
                    state.pop(e.kv.key, None)

        hub.subscribe("comp/", follow)
        assert hub.wait_for(writer.put("comp/a", b"1"), timeout=10)
        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGSTOP)
        try:
            writer.put("comp/b", b"2")
            writer.delete("comp/a")
            writer.compact(writer.put("comp/c", b"3"))
            # The next request of the hub's store finds the member hung.
            assert store.get("comp/c") is not None
            assert hub.wait_for(writer.revision, timeout=15)
            assert state == {"comp/b": b"2", "comp/c": b"3"}
        finally:
            leader.proc.send_signal(signal.SIGCONT)
            hub.stop()
            store.close()
            writer.close()


@pytest.mark.root
def test_agent_over_tls_with_client_certificates(hostns: str, tmp_path: Path) -> None:
    with etcd_tls() as member:
        certs = member.certs
        assert certs is not None
        url = f"etcds://{member.hostport}"
        (tmp_path / "good").mkdir()
        agent = AgentProc(
            hostns, tmp_path / "good", "--store", url, "--store-ca", str(certs.ca),
            "--store-cert", str(certs.client_cert), "--store-key", str(certs.client_key),
        )  # fmt: skip
        try:
            agent.start()
            agent.ok("network", "create", "tlsnet", "--subnet", "10.89.78.0/24")
            store = open_store(
                url, SystemClock(), ca=certs.ca, cert=certs.client_cert, key=certs.client_key
            )
            assert store.get("networks/tlsnet") is not None
            store.close()
        finally:
            cleanup_agent(agent)
        # Refused without a client certificate: the agent says so and exits
        # (waiting would not mend it) instead of waiting forever.
        res = _agent_run(tmp_path / "bare", "--store", url, "--store-ca", str(certs.ca))
        assert res.returncode == 9, res.stderr
        assert f"etcd at https://{member.hostport} refused the TLS connection" in res.stderr


@pytest.mark.root
def test_agent_with_bad_store_files_exits_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    cases = [
        (("--store-ca", str(tmp_path / "missing.pem")), "cannot read --store-ca"),
        (("--store-ca", str(junk)), "is not a PEM CA certificate"),
        (("--store-cert", str(junk)), "--store-cert and --store-key go together"),
    ]
    for i, (flags, message) in enumerate(cases):
        res = _agent_run(tmp_path / str(i), "--store", "etcds://127.0.0.1:1", *flags)
        assert res.returncode == 2, res.stderr
        assert message in res.stderr
    res = _agent_run(tmp_path / "plain", "--store", "etcd://127.0.0.1:1", "--store-ca", str(junk))
    assert res.returncode == 2 and "etcds://" in res.stderr, res.stderr


def _agent_run(work: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run `cove agent` to its exit (it must exit by itself, quickly)."""
    work.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [
            *__import__("agentproc").COVE, "agent", "--state-dir", str(work / "state"),
            "--socket", str(work / "agent.sock"), "--http", "off", "--dns", "off", *flags,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip


# -- a transaction whose answer is lost ----------------------------------------


class _LossyProxy:
    """An HTTP proxy in front of one etcd member that, for the next
    ``drops`` transactions, either forwards the request and loses the answer
    (``after=True``: applied, outcome unknown to the client) or loses the
    request itself (``after=False``)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.drops = 0
        self.after = True
        self.txns = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=10)
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := reader.readline()) not in (b"\r\n", b""):
                    name, value = h.decode().split(":", 1)
                    headers[name.strip()] = value.strip()
                body = reader.read(int(headers.get("Content-Length", "0")))
                drop = path == "/v3/kv/txn" and self.drops > 0
                if path == "/v3/kv/txn":
                    self.txns += 1
                if drop:
                    self.drops -= 1
                    if not self.after:
                        return  # the request never reaches etcd
                upstream.request(method, path, body=body, headers=headers)
                resp = upstream.getresponse()
                data = resp.read()
                if drop:
                    return  # applied, and the answer is lost
                head = (
                    f"HTTP/1.1 {resp.status} {resp.reason}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                )
                conn.sendall(head.encode() + data)
        except OSError:
            return
        finally:
            reader.close()
            conn.close()
            upstream.close()


def test_a_transaction_whose_answer_is_lost_is_checked_not_repeated() -> None:
    with etcd_process() as member:
        proxy = _LossyProxy(member.client)
        store = EtcdStore([f"http://127.0.0.1:{proxy.port}"], SystemClock(), timeout=5)
        try:
            store.put("lost/seen", b"0")  # the client knows a revision
            # Applied, answer lost: the client finds its write and says so,
            # where sending it again would fail its compare.
            proxy.drops, proxy.after = 1, True
            res = store.txn([Compare.absent("lost/a")], [Put("lost/a", b"1")])
            assert res.succeeded
            kv = store.get("lost/a")
            assert kv is not None and kv.value == b"1" and kv.version == 1
            assert res.revision == kv.mod_revision
            assert proxy.txns == 1  # checked, not sent again
            # Lost before etcd saw it: the client finds nothing and sends it again.
            proxy.drops, proxy.after = 1, False
            res = store.txn([Compare.absent("lost/b")], [Put("lost/b", b"2")])
            assert res.succeeded
            kv = store.get("lost/b")
            assert kv is not None and kv.version == 1
            assert proxy.txns == 3
            # A compare that fails stays a failure, answer lost or not.
            proxy.drops, proxy.after = 1, True
            res = store.txn([Compare.absent("lost/a")], [Put("lost/a", b"3")])
            assert not res.succeeded
            assert store.get("lost/a").value == b"1"  # type: ignore[union-attr]
        finally:
            store.close()
            proxy.close()


@pytest.mark.root
def test_agent_stops_promptly_while_etcd_is_down(hostns: str, tmp_path: Path) -> None:
    member = EtcdProcess()
    member.start()
    agent = AgentProc(hostns, tmp_path, "--store", f"etcd://{member.hostport}")
    try:
        agent.start()
        member.stop()
        time.sleep(1)
        start = time.monotonic()
        assert agent.stop(timeout=30) == 0, agent.log_text()
        # At most a store timeout or two (5 s each) for what shutdown writes.
        assert time.monotonic() - start < 12, agent.log_text()
    finally:
        cleanup_agent(agent)
        member.stop()
        import shutil

        shutil.rmtree(member.data_dir, ignore_errors=True)
