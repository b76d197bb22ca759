"""The cove demo: the main story end to end, narrated.

It runs a real agent on the SQLite default, inside a network namespace that
plays the host, so the machine's own network is never changed, and removes
everything it made at the end (also on failure or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COVE = [sys.executable, "-m", "cove.cli.main"]


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.ns = "cvdemo" + secrets.token_hex(3)
        self.workdir = workdir
        self.socket = workdir / "agent.sock"
        self.env = {**os.environ, "COVE_SOCKET": str(self.socket)}
        self.agent: subprocess.Popen[bytes] | None = None

    def host(self, *args: str) -> list[str]:
        """A command line that runs inside the demo's host namespace."""
        return ["ip", "netns", "exec", self.ns, *args]

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
        try:
            subprocess.run(self.host("ip", "link", "set", "lo", "up"), check=True)
            self.start_agent()
            yield
        finally:
            self.stop_agent()
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

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(15)
            except subprocess.TimeoutExpired:
                self.agent.kill()


def story(d: Demo) -> None:
    say(f"An agent runs in namespace {d.ns} (playing the host), state in SQLite")
    d.cove("network", "ls")

    say("Create a virtual network: a Linux bridge (the virtual switch), IPAM, NAT")
    d.cove("network", "create", "vnet", "--subnet", "10.89.0.0/24", "--label", "app=demo")
    say("Without --subnet, cove picks a free one; --ipv6 adds an IPv6 subnet")
    d.cove("network", "create", "backend", "--ipv6")
    say("An internal network has no way out at all")
    d.cove("network", "create", "secrets", "--internal")
    d.cove("network", "ls")

    vnet = json.loads(d.cove("network", "inspect", "vnet"))[0]
    say(f"The kernel matches the store: bridge {vnet['bridge']} carries the gateway")
    d.sh("ip", "-br", "addr", "show", "dev", vnet["bridge"])
    say("Egress NAT and isolation live in cove's own nftables table")
    d.sh("nft", "list", "table", "inet", "cove")

    say("Bad input gets a clear error and changes nothing")
    d.cove("network", "create", "clash", "--subnet", "10.89.0.0/16", check=False)
    d.cove("network", "create", "Bad_Name", check=False)
    d.cove("network", "rm", "nosuch", check=False)

    say("Remove the networks; their bridges and rules go with them")
    d.cove("network", "rm", "vnet", "backend", "secrets")
    d.sh("ip", "-br", "link", "show", "type", "bridge")
    d.cove("network", "ls")
    say("Done: everything the demo made is removed")


def main() -> int:
    if os.geteuid() != 0:
        print("the demo needs root (it creates namespaces, bridges and nftables rules)")
        return 1
    with tempfile.TemporaryDirectory(prefix="cove-demo-") as tmp:
        demo = Demo(Path(tmp))
        with demo.running():
            story(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
