"""Kernel settings cove depends on, read from /proc/sys (the datapath is the
only code that looks at the kernel)."""

from __future__ import annotations

from pathlib import Path

BR_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def bridge_filtering_problem(path: Path = BR_NF) -> str | None:
    """Why traffic inside one bridge would bypass policy, or None when
    br_netfilter hands it to the inet forward hook as needed."""
    try:
        value = path.read_text().strip()
    except OSError:
        return (
            "br_netfilter is not loaded: policy cannot filter traffic between containers "
            "of the same network (run `modprobe br_netfilter`)"
        )
    if value != "1":
        return (
            "net.bridge.bridge-nf-call-iptables is 0: policy cannot filter traffic between "
            "containers of the same network (set it to 1)"
        )
    return None
