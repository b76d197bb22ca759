"""cove's embedded DNS: container names, services and forwarding.

Modules, from pure to I/O: ``wire`` (codec), ``view`` (records from the
store), ``services`` (what DNS needs from the registry), ``answer`` (what to
answer), ``cache`` (encoded responses), ``responder`` (the slow path),
``forward`` (upstreams), ``server`` (sockets and threads) and ``service``
(``DnsService``, what the agent owns).
"""

from cove.dns.forward import ResolvConfUpstreams, Upstream
from cove.dns.service import DnsConfig, DnsService
from cove.dns.services import (
    EndpointServices,
    Node,
    ServiceChange,
    ServiceInstance,
    ServiceSource,
)

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
