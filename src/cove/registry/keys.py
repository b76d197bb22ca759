"""Where the registry keeps things in the store.

Store keys (all under ``registry/``; path segments are percent-quoted so a
``/`` inside a name cannot forge another key):

- ``registry/nodes/<node>``                          Node
- ``registry/svc/<service>/<node>/<service id>``     ServiceInstance
- ``registry/chk/<service>/<node>/<check id>``       HealthCheck of an instance
- ``registry/nodechk/<node>/<check id>``             HealthCheck of a node
- ``registry/agent/<node>/svc/<service id>``         service name (id lookup)
- ``registry/agent/<node>/chk/<check id>``           CheckDefinition (what the
  node's agent runs)
- ``registry/kv/<key>``                              KVEntry
- ``registry/sessions/<id>``                         Session
- ``registry/events/<ns since epoch>-<id>``          a user event (the last 256)
- ``registry/config/<kind>/<name>``                  a config entry
- ``registry/coord/<node>/<segment>``                a node's network coordinate
- ``registry/query/<id>``                            a prepared query

Keeping a service's instances and checks under one name lets a blocking query
on that service watch only its own prefixes.
"""

from __future__ import annotations

ROOT = "registry/"
NODES = "registry/nodes/"
SERVICES = "registry/svc/"
CHECKS = "registry/chk/"
NODE_CHECKS = "registry/nodechk/"
AGENT = "registry/agent/"
KV = "registry/kv/"
SESSIONS = "registry/sessions/"
EVENTS = "registry/events/"
CONFIG = "registry/config/"
COORDS = "registry/coord/"
QUERIES = "registry/query/"


def seg(name: str) -> str:
    """One key path segment: ``%`` and ``/`` percent-escaped (reversible
    with ``urllib.parse.unquote``), so a name cannot forge another key."""
    if "%" in name or "/" in name:
        return name.replace("%", "%25").replace("/", "%2F")
    return name


def node_key(node: str) -> str:
    return f"{NODES}{seg(node)}"


def service_prefix(service: str) -> str:
    return f"{SERVICES}{seg(service)}/"


def service_key(service: str, node: str, service_id: str) -> str:
    return f"{SERVICES}{seg(service)}/{seg(node)}/{seg(service_id)}"


def check_prefix(service: str) -> str:
    return f"{CHECKS}{seg(service)}/"


def check_key(service: str, node: str, check_id: str) -> str:
    if not service:
        return f"{NODE_CHECKS}{seg(node)}/{seg(check_id)}"
    return f"{CHECKS}{seg(service)}/{seg(node)}/{seg(check_id)}"


def agent_service_key(node: str, service_id: str) -> str:
    return f"{AGENT}{seg(node)}/svc/{seg(service_id)}"


def agent_check_key(node: str, check_id: str) -> str:
    return f"{AGENT}{seg(node)}/chk/{seg(check_id)}"


def kv_key(key: str) -> str:
    # KV keys are kept verbatim: prefix queries must match Consul's plain
    # string prefixes, which quoting would break.
    return f"{KV}{key}"


def session_key(session_id: str) -> str:
    return f"{SESSIONS}{seg(session_id)}"
