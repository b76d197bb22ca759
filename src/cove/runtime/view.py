"""How a container looks to API clients (``inspect`` and ``ps``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cove.model import Endpoint
from cove.runtime.spec import Container
from cove.runtime.state import ProcessState


def inspect(
    c: Container, endpoints: Sequence[Endpoint], state: ProcessState, log_path: Path
) -> dict[str, Any]:
    body = c.to_json()
    body["short_id"] = c.id[:12]
    body["capabilities"] = sorted(f"CAP_{name}" for name in c.capabilities)
    body["state"] = {
        "status": state.status.value,
        "pid": state.pid,
        "exit_code": state.exit_code,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "restart_count": state.restart_count,
        "error": state.error,
    }
    body["endpoints"] = {
        ep.network: {
            "endpoint_id": ep.id,
            "interface": ep.interface,
            "host_veth": ep.host_veth,
            "mac": ep.mac,
            "ipv4": str(ep.ipv4) if ep.ipv4 else None,
            "ipv6": str(ep.ipv6) if ep.ipv6 else None,
            "aliases": list(ep.aliases),
        }
        for ep in endpoints
    }
    body["netns"] = endpoints[0].netns if endpoints else ""
    body["log_path"] = str(log_path)
    return body


def status_text(state: dict[str, Any]) -> str:
    status = str(state.get("status", "?"))
    if status == "exited":
        return f"exited ({state.get('exit_code')})"
    return status
