"""cove's embedded DNS: container names, services and forwarding.

Modules, from pure to I/O: ``wire`` (codec), ``view`` (records from the
store), ``services`` (what DNS needs from the registry), ``answer`` (what to
answer), ``cache`` (encoded responses), ``responder`` (the slow path),
``forward`` (upstreams), ``server`` (sockets and threads) and ``service``
(``DnsService``, what the agent owns).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cove.dns.forward import ResolvConfUpstreams, Upstream
    from cove.dns.service import DnsConfig, DnsService
    from cove.dns.services import (
        EndpointServices,
        Node,
        ServiceChange,
        ServiceInstance,
        ServiceSource,
    )

# Loaded on first use: the supervisor's stand-in answerer (``standby``) needs
# the pure modules only, not the server, the forwarder and the store.
_LAZY = {
    "ResolvConfUpstreams": "cove.dns.forward",
    "Upstream": "cove.dns.forward",
    "DnsConfig": "cove.dns.service",
    "DnsService": "cove.dns.service",
    "EndpointServices": "cove.dns.services",
    "Node": "cove.dns.services",
    "ServiceChange": "cove.dns.services",
    "ServiceInstance": "cove.dns.services",
    "ServiceSource": "cove.dns.services",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DnsConfig",
    "DnsService",
    "EndpointServices",
    "Node",
    "ResolvConfUpstreams",
    "ServiceChange",
    "ServiceInstance",
    "ServiceSource",
    "Upstream",
]
