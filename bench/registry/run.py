"""Registry benchmark: cove's Consul API side by side with a single-member etcd.

    .venv/bin/python bench/registry/run.py [--registrations 10000]

Starts, on free loopback ports, cove's /v1 API in a subprocess (SQLite
store, uvloop) and /usr/bin/etcd (temp data dir, stopped by PID), then:

1. registrations/s from 16 concurrent HTTP clients: PUT
   /v1/agent/service/register (one instance with a TTL check, 10 services)
   against PUT /v3/kv/put of the same JSON to etcd's gateway, same client;
2. GET /v1/health/service/svc0?passing (1,000 instances among 10,000)
   p50/p99, beside an etcd range over a 1,000-key prefix; then the same
   query right after a TTL update of another service each time (a new store
   revision, so no answer cached whole);
3. TTL updates/s from 16 concurrent clients: PUT /v1/agent/check/pass/:id
   with a new ?note each round, so every update is a store write (Consul has
   no etcd peer for this; the nearest is a lease keep-alive, POST
   /v3/lease/keepalive through etcd's gateway, one lease per instance);
4. blocking-query wake-up: a write to one service's check until the client
   blocked on it returns, p50/p99, with 100 blocked queries on unrelated
   services counted for spurious wake-ups; beside an etcd watch (put to
   event).

The cove side runs as the agent runs it: uvloop, ``tune_interpreter()``.
With ``--acl`` it enforces ACLs (default deny) and every client request
carries a token whose policy grants ``service_prefix "" write`` and
``node_prefix "" read``, so each request resolves a token and judges rules.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

CONCURRENCY = 16
ETCD = "/usr/bin/etcd"
BENCH_TOKEN = "6a1f0e2c-3b4d-4e5f-8a9b-0c1d2e3f4a5b"


# -- the cove side, in its own process ------------------------------------------


def serve(port: int, db: str) -> None:
    import uvloop

    from cove.agent.consul import ConsulServer
    from cove.agent.tuning import tune_interpreter, tune_malloc
    from cove.api.http import limits_for
    from cove.clock import SystemClock
    from cove.store.sqlite import SqliteStore

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    store = SqliteStore(db, SystemClock())
    acl = None
    if os.environ.get("COVE_BENCH_ACL"):
        from cove.acl import AclService

        acl = AclService(
            store, SystemClock(), enabled=True, default_policy="deny", node_name="bench"
        )
        acl.setup()
        rules = 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }'
        acl.objects.policy_create({"Name": "bench", "Rules": rules})
        acl.objects.token_create({"SecretID": BENCH_TOKEN, "Policies": [{"Name": "bench"}]})
    # The agent's connection caps and malloc setting, as it sizes them.
    tune_malloc()
    limits = limits_for(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    server = ConsulServer(
        store, SystemClock(), node_name="bench", port=port, acl=acl, limits=limits
    ).start()
    tune_interpreter()
    print("ready", flush=True)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    while not stop[0]:
        time.sleep(0.2)
    server.stop()
    store.close()


# -- helpers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


@contextlib.contextmanager
def process(args: list[str], ready: Any, what: str) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not ready(proc):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{what} did not start:\n{log.read().decode()[-3000:]}")
                time.sleep(0.1)
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)  # our own child, by PID
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()


def etcd_healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except OSError:
        return False


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


async def hammer(session: aiohttp.ClientSession, requests: list[tuple[str, str, bytes]]) -> float:
    """Send every request from CONCURRENCY clients; requests per second."""
    queue = iter(requests)

    async def worker() -> None:
        for method, url, body in queue:
            async with session.request(method, url, data=body) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{method} {url}: {resp.status}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(requests) / (time.perf_counter() - start)


# -- the benchmark -------------------------------------------------------------------


def registration(i: int) -> dict[str, Any]:
    name = f"svc{i % 10}"
    return {
        "Name": name,
        "ID": f"{name}-{i}",
        "Address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
        "Port": 8080,
        "Tags": ["bench", f"shard{i % 4}"],
        "Check": {"CheckID": f"c-{i}", "TTL": "1h", "Status": "passing"},
    }


async def bench(cove: str, etcd: str, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    conn = aiohttp.TCPConnector(limit=CONCURRENCY * 2 + 200)
    timeout = aiohttp.ClientTimeout(total=300)
    headers = {"X-Consul-Token": BENCH_TOKEN} if os.environ.get("COVE_BENCH_ACL") else None
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, headers=headers) as s:
        bodies = [json.dumps(registration(i)).encode() for i in range(count)]
        cove_reqs = [("PUT", f"{cove}/v1/agent/service/register", b) for b in bodies]
        etcd_reqs = [
            (
                "POST",
                f"{etcd}/v3/kv/put",
                json.dumps({"key": b64(f"bench/{i}"), "value": b64(b)}).encode(),
            )
            for i, b in enumerate(bodies)
        ]
        out["cove_regs"] = await hammer(s, cove_reqs)
        out["etcd_puts"] = await hammer(s, etcd_reqs)

        # 2. health query latency
        async def health(samples: int, write_first: bool) -> list[float]:
            lat = []
            for n in range(samples):
                if write_first:  # another service's check: a new store revision
                    await (await s.put(f"{cove}/v1/agent/check/pass/c-1?note=w{n}")).read()
                t0 = time.perf_counter()
                async with s.get(f"{cove}/v1/health/service/svc0?passing") as r:
                    data = await r.json()
                lat.append(time.perf_counter() - t0)
                assert len(data) == count // 10, len(data)
            return lat

        out["health"] = await health(200, write_first=False)
        # After a write elsewhere each time, the answer is read again (only
        # the instances that changed are rendered again).
        out["health_written"] = await health(100, write_first=True)
        start, end = b64("bench/1"), b64("bench/2")  # bench/1, bench/1xxx...: ~1,111 keys
        elat = []
        for _ in range(200):
            t0 = time.perf_counter()
            async with s.post(f"{etcd}/v3/kv/range", json={"key": start, "range_end": end}) as r:
                got = await r.json()
            elat.append(time.perf_counter() - t0)
        out["etcd_range"] = (elat, len(got.get("kvs", [])))

        # 3. TTL updates, each a write (a new note every round)
        rounds = 2
        ttl_reqs = [
            ("PUT", f"{cove}/v1/agent/check/pass/c-{i}?note=round{r}", b"")
            for r in range(rounds)
            for i in range(count)
        ]
        out["cove_ttl"] = await hammer(s, ttl_reqs)
        leases = []
        for _ in range(min(count, 1000)):
            async with s.post(f"{etcd}/v3/lease/grant", json={"TTL": 3600}) as r:
                leases.append((await r.json())["ID"])
        keepalives = [
            (
                "POST",
                f"{etcd}/v3/lease/keepalive",
                json.dumps({"ID": leases[i % len(leases)]}).encode(),
            )
            for i in range(count * rounds)
        ]
        out["etcd_keepalive"] = await hammer(s, keepalives)

        # 4. blocking-query wake-up
        reg = f"{cove}/v1/agent/service/register"
        await (
            await s.put(reg, json={"Name": "target", "Check": {"CheckID": "tgt", "TTL": "1h"}})
        ).read()
        idle_tasks = []
        for k in range(100):
            await (await s.put(reg, json={"Name": f"idle{k}", "Check": {"TTL": "1h"}})).read()
        for k in range(100):
            async with s.get(f"{cove}/v1/health/service/idle{k}") as r:
                idx = r.headers["X-Consul-Index"]
            idle_tasks.append(
                asyncio.create_task(
                    s.get(f"{cove}/v1/health/service/idle{k}?index={idx}&wait=120s")
                )
            )
        await asyncio.sleep(0.5)
        wake = []
        for n in range(100):
            async with s.get(f"{cove}/v1/health/service/target") as r:
                idx = r.headers["X-Consul-Index"]
            blocked = asyncio.create_task(
                s.get(f"{cove}/v1/health/service/target?index={idx}&wait=60s")
            )
            await asyncio.sleep(0.03)  # let it park
            verb = "pass" if n % 2 == 0 else "fail"
            t0 = time.perf_counter()
            await (await s.put(f"{cove}/v1/agent/check/{verb}/tgt")).read()
            resp = await blocked
            await resp.read()
            wake.append(time.perf_counter() - t0)
            assert int(resp.headers["X-Consul-Index"]) > int(idx)
        out["wake"] = wake
        out["spurious"] = sum(t.done() for t in idle_tasks)
        for t in idle_tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await asyncio.gather(*idle_tasks, return_exceptions=True)
        out["etcd_wake"] = await etcd_watch_latency(s, etcd)
    return out


async def etcd_watch_latency(s: aiohttp.ClientSession, etcd: str) -> list[float]:
    key = b64("watched")
    lat: list[float] = []
    async with s.post(f"{etcd}/v3/watch", json={"create_request": {"key": key}}) as stream:
        await stream.content.readline()  # "created"
        for n in range(100):
            t0 = time.perf_counter()
            await (
                await s.post(f"{etcd}/v3/kv/put", json={"key": key, "value": b64(str(n))})
            ).read()
            while True:
                line = await stream.content.readline()
                if b'"events"' in line:
                    break
            lat.append(time.perf_counter() - t0)
    return lat


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--registrations", type=int, default=10_000)
    ap.add_argument("--serve", nargs=2, metavar=("PORT", "DB"), help=argparse.SUPPRESS)
    ap.add_argument("--acl", action="store_true", help="enforce ACLs; clients send a token")
    args = ap.parse_args(argv)
    if args.acl:
        os.environ["COVE_BENCH_ACL"] = "1"  # read by the server child and the clients
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return 0
    if not Path(ETCD).exists():
        print(f"{ETCD} is missing (apt-get install etcd-server)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-"))
    cove_port, etcd_port, peer_port = free_port(), free_port(), free_port()
    cove_args = [
        sys.executable,
        os.environ.get("COVE_BENCH_SERVER", __file__),
        "--serve",
        str(cove_port),
        str(tmp / "cove.db"),
    ]
    etcd_args = [
        ETCD, "--name", f"bench{os.getpid()}", "--data-dir", str(tmp / "etcd"),
        "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"bench{os.getpid()}=http://127.0.0.1:{peer_port}",
        "--log-level", "error",
    ]  # fmt: skip
    try:
        with (
            process(cove_args, lambda p: p.stdout.readline().strip() == b"ready", "cove"),
            process(etcd_args, lambda p: etcd_healthy(etcd_port), "etcd"),
        ):
            r = asyncio.run(
                bench(f"http://127.0.0.1:{cove_port}", f"http://127.0.0.1:{etcd_port}",
                      args.registrations)
            )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(r, args.registrations)
    return 0


def report(r: dict[str, Any], count: int) -> None:
    elat, ekeys = r["etcd_range"]
    print(f"registrations ({count}, {CONCURRENCY} concurrent HTTP clients)")
    print(f"  cove  PUT /v1/agent/service/register : {r['cove_regs']:8.0f} /s"
          "   (SQLite WAL, synchronous=NORMAL, group commit: no fsync per commit)")  # fmt: skip
    print(f"  etcd  POST /v3/kv/put (same JSON)     : {r['etcd_puts']:8.0f} /s"
          "   (single member, WAL fsync per batch)")  # fmt: skip
    print(f"  ratio cove/etcd                       : {r['cove_regs'] / r['etcd_puts']:8.2f}")
    print(f"health ?passing, {count // 10} instances among {count}")
    print(f"  cove  p50 {ms(pct(r['health'], 0.5))}  p99 {ms(pct(r['health'], 0.99))}")
    hw = r["health_written"]
    print(f"  cove  after a write elsewhere: p50 {ms(pct(hw, 0.5))}  p99 {ms(pct(hw, 0.99))}")
    print(f"  etcd  range of {ekeys} keys: p50 {ms(pct(elat, 0.5))}  p99 {ms(pct(elat, 0.99))}")
    print(f"TTL updates ({count * 2}, {CONCURRENCY} concurrent HTTP clients, each a write)")
    print(f"  cove  PUT /v1/agent/check/pass/:id    : {r['cove_ttl']:8.0f} /s")
    print(f"  etcd  POST /v3/lease/keepalive        : {r['etcd_keepalive']:8.0f} /s"
          "   (no write: a lease renewal is not logged)")  # fmt: skip
    print(f"  ratio cove/etcd                       : {r['cove_ttl'] / r['etcd_keepalive']:8.2f}")
    print("blocking-query wake-up (write sent -> blocked client returns), 100 samples")
    print(f"  cove  p50 {ms(pct(r['wake'], 0.5))}  p99 {ms(pct(r['wake'], 0.99))}"
          f"  mean {ms(statistics.mean(r['wake']))}")  # fmt: skip
    print(f"  etcd  watch p50 {ms(pct(r['etcd_wake'], 0.5))}  p99 {ms(pct(r['etcd_wake'], 0.99))}")
    print(f"  ratio p99 cove/etcd: {pct(r['wake'], 0.99) / pct(r['etcd_wake'], 0.99):.2f}")
    print(f"  unrelated blocked queries woken: {r['spurious']} of 100")


if __name__ == "__main__":
    sys.exit(main())
