"""The cove demo: the main story end to end, narrated.

It runs a real agent on the SQLite default, inside a network namespace that
plays the host, so the machine's own network is never changed, and removes
everything it made at the end (also on failure or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cove.agent.teardown import teardown

ROOT = Path(__file__).resolve().parent.parent
COVE = [sys.executable, "-m", "cove.cli.main"]


def _setns(fd: int) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns failed")


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.ns = "cvdemo" + secrets.token_hex(3)
        self.workdir = workdir
        # a directory of its own: containers see the host tree without it
        self.socket = workdir / "sock" / "agent.sock"
        self.env = {**os.environ, "COVE_SOCKET": str(self.socket)}
        self.agent: subprocess.Popen[bytes] | None = None

    def host(self, *args: str) -> list[str]:
        """A command line; it runs inside the demo's host namespace because
        the demo's own thread has entered it (see ``running``)."""
        return list(args)

    def sh(self, *args: str, check: bool = True, show: bool = True) -> str:
        if show:
            print("$ " + " ".join(args), flush=True)
        res = subprocess.run(
            self.host(*args), env=self.env, capture_output=True, text=True, check=False
        )
        out = (res.stdout + res.stderr).rstrip()
        if show and out:
            print(out, flush=True)
        if check and res.returncode != 0:
            raise SystemExit(f"demo step failed: {' '.join(args)}")
        return res.stdout

    def cove(self, *args: str, check: bool = True) -> str:
        print("$ cove " + " ".join(args), flush=True)
        res = subprocess.run(
            self.host(*COVE, *args), env=self.env, capture_output=True, text=True, check=False
        )
        out = (res.stdout + res.stderr).rstrip()
        if out:
            print(out, flush=True)
        if check and res.returncode != 0:
            raise SystemExit(f"demo step failed: cove {' '.join(args)}")
        return res.stdout

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        # Enter the namespace with setns rather than `ip netns exec`: the
        # latter also gives each command a mount namespace of its own, and the
        # agent's container namespace mounts must live in the host's, as they
        # do when the agent runs as a service.
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        try:
            _setns(target)
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            self.start_agent()
            yield
        finally:
            self.stop_agent()
            # Whatever a failed step left: containers, their supervisor, mounts.
            teardown(self.workdir / "state" / "run")
            _setns(home)
            os.close(home)
            os.close(target)
            subprocess.run(["ip", "netns", "del", self.ns], check=False)

    def start_agent(self) -> None:
        log = open(self.workdir / "agent.log", "ab")  # noqa: SIM115 - closed with the process
        self.agent = subprocess.Popen(
            self.host(
                *COVE, "agent", "--state-dir", str(self.workdir / "state"),
                "--socket", str(self.socket), "--upstream", "127.0.0.1:5399",
            ),
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            res = subprocess.run(
                [*COVE, "network", "ls", "-q"], env=self.env, capture_output=True, check=False
            )
            if res.returncode == 0:
                return
            if self.agent.poll() is not None:
                break
            time.sleep(0.1)
        print((self.workdir / "agent.log").read_text()[-3000:])
        raise SystemExit("the agent did not start")

    def kill_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            print(f"$ kill -9 {self.agent.pid}", flush=True)
            self.agent.kill()
            self.agent.wait()

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(15)
            except subprocess.TimeoutExpired:
                self.agent.kill()


REDIS = """
import socket, socketserver, sys
class H(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"+PONG from " + socket.gethostname().encode() + b"\\r\\n")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("", int(sys.argv[1])), H).serve_forever()
"""

WEB = """
import http.server, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + socket.gethostname() + "\\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("", int(sys.argv[1])), H).serve_forever()
"""

PING = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
    s.sendall(b"PING\\n"); print(s.recv(100).decode().strip())
"""

HITS = """
import collections, sys, urllib.request
url = f"http://{sys.argv[1]}:{sys.argv[2]}/"
seen = collections.Counter(
    urllib.request.urlopen(url, timeout=3).read().decode().strip()
    for _ in range(int(sys.argv[3])))
for who, n in sorted(seen.items()): print(f"{n:3d} x {who}")
"""


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.3)


def story(d: Demo) -> None:
    py = "python3"  # the system's: a container has a private /root (pyenv, a venv there)
    for name, text in (("redis.py", REDIS), ("web.py", WEB), ("ping.py", PING), ("hits.py", HITS)):
        (d.workdir / name).write_text(text)
    redis, web, ping, hits = (
        str(d.workdir / n) for n in ("redis.py", "web.py", "ping.py", "hits.py")
    )

    say(f"An agent runs in namespace {d.ns} (playing the host), state in SQLite")
    say("Create a virtual network: a Linux bridge (the virtual switch), IPAM, egress NAT, DNS")
    d.cove("network", "create", "vnet", "--subnet", "10.89.0.0/24", "--label", "app=demo")
    d.cove("network", "create", "backend", "--ipv6")
    d.cove("network", "ls")
    vnet = json.loads(d.cove("network", "inspect", "vnet"))[0]
    say(f"The kernel matches the store: bridge {vnet['bridge']} carries the gateway")
    d.sh("ip", "-br", "addr", "show", "dev", vnet["bridge"])

    say("Run containers: a redis-like server and two web servers, registered as services")
    d.cove(
        "run",
        "-d",
        "--name",
        "redis",
        "--network",
        "vnet",
        "--service",
        "redis:6379",
        "--",
        py,
        "-S",
        redis,
        "6379",
    )
    for name in ("web", "web2"):
        d.cove(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "vnet",
            "--service",
            "web:8080",
            "--",
            py,
            "-S",
            web,
            "8080",
        )
    d.cove("run", "-d", "--name", "client", "--network", "vnet", "--", "sleep", "3600")
    d.cove("ps")

    say("Inside the network, containers find each other by name (glibc, the embedded DNS)")
    d.cove("exec", "web", "--", "getent", "hosts", "redis")
    d.cove("exec", "web", "--", py, "-S", ping, "redis", "6379")

    say("From the host: DNS on 127.0.0.1:8600, Consul's interface (services once checks pass)")

    def passing_web() -> bool:
        srv = d.sh("dig", "@127.0.0.1", "-p", "8600", "+short", "web.service.cove", "SRV",
                   show=False)  # fmt: skip
        return len(srv.split()) == 8  # two SRV records of four fields

    wait_for("both web instances to pass their TCP checks", passing_web)
    d.sh(
        "dig",
        "@127.0.0.1",
        "-p",
        "8600",
        "+noall",
        "+answer",
        "+additional",
        "web.service.cove",
        "SRV",
    )
    d.sh("dig", "@127.0.0.1", "-p", "8600", "+short", "redis.vnet.cove")
    say("The Consul HTTP API on 127.0.0.1:8500: existing Consul clients work unchanged")
    url = "127.0.0.1:8500/v1/health/service/web?passing"
    print(f"$ curl -s {url}   (summarised)")
    for entry in json.loads(d.sh("curl", "-s", url, show=False)):
        svc, checks = entry["Service"], entry["Checks"]
        states = ", ".join(f"{c['CheckID']}={c['Status']}" for c in checks)
        print(f"  {svc['ID']:14s} {svc['Address']}:{svc['Port']}  {states}")

    say("A load-balanced virtual IP for the service, in nftables (no proxy on the data path)")
    vip = d.cove("service", "vip", "web").strip()
    d.cove("exec", "client", "--", py, "-S", hits, vip, "8080", "20")
    say("web.service.cove now answers the VIP; SRV still lists the instances")
    d.sh("dig", "@127.0.0.1", "-p", "8600", "+short", "web.service.cove")

    say("Network policy: deny by default on vnet, then allow web -> redis only")
    d.cove("policy", "default-deny", "vnet", "on")
    d.cove(
        "policy",
        "allow",
        "--network",
        "vnet",
        "--from",
        "service:web",
        "--to",
        "redis",
        "--port",
        "6379/tcp",
    )
    d.cove("policy", "test", "--from", "web", "--to", "redis", "--port", "6379")
    d.cove("policy", "test", "--from", "client", "--to", "redis", "--port", "6379", check=False)
    d.cove("exec", "web", "--", py, "-S", ping, "redis", "6379")
    d.cove("exec", "client", "--", py, "-S", ping, "redis", "6379", check=False)
    d.cove("policy", "default-deny", "vnet", "off")

    say("Containers outlive the agent: kill -9 it, they keep serving; a new agent adopts them")
    d.kill_agent()
    d.sh("ip", "netns", "list", show=False)
    d.start_agent()
    d.cove("ps")
    d.cove("exec", "web", "--", py, "-S", ping, "redis", "6379")

    say("Bad input gets a clear error and changes nothing")
    d.cove("network", "create", "clash", "--subnet", "10.89.0.0/16", check=False)
    d.cove("run", "--name", "web", "--network", "vnet", "--", "true", check=False)
    d.cove("network", "rm", "vnet", check=False)

    say("Clean up: containers, then networks; their interfaces and rules go with them")
    d.cove("rm", "-f", "client", "web", "web2", "redis")
    d.cove("network", "rm", "vnet", "backend")
    d.sh("ip", "-br", "link")
    say("Done: everything the demo made is removed")


def main() -> int:
    if os.geteuid() != 0:
        print("the demo needs root (it creates namespaces, bridges and nftables rules)")
        return 1
    # not under /tmp: a container without an image has a private /tmp and
    # sees the rest of the host (these scripts) read-only
    with tempfile.TemporaryDirectory(prefix="cove-demo-", dir="/var/lib") as tmp:
        demo = Demo(Path(tmp))
        with demo.running():
            story(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
