"""Run cove's DNS service alone over a memory store of N endpoints, for the
benchmark (until the agent exists, this stands in for ``cove agent``).

    python bench/dns/cove_server.py --port 5301 --names 1000
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import threading

from cove.clock import SystemClock
from cove.dns import DnsConfig, DnsService
from cove.dns.testing import put_endpoint, put_network
from cove.store.hub import WatchHub
from cove.store.memory import MemoryStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--names", type=int, default=1000)
    args = ap.parse_args()
    clock = SystemClock()
    store = MemoryStore(clock, history=args.names * 2 + 10)
    put_network(store, "bench", "10.200.0.0/16")
    for i in range(args.names):
        put_endpoint(store, "bench", f"host{i}", str(ipaddress.IPv4Address("10.200.1.0") + i))
    cfg = DnsConfig(host_address=ipaddress.ip_address(args.address), host_port=args.port)
    # No upstreams: the benchmark must never send traffic off the machine.
    hub = WatchHub(store)
    hub.start()
    svc = DnsService(store, clock, cfg, upstreams=lambda: (), hub=hub)
    svc.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    svc.stop()
    hub.stop()


if __name__ == "__main__":
    main()
