"""``cove-cni``: the CNI plugin (spec 1.1) that puts a runtime's container on
a cove network by asking the local agent over its Unix socket.

Standard library only, and no other cove module: the runtime starts it
three times per attachment (two VERSION calls and the ADD), so its cold
start is the cost of an attach. ``cove cni install`` copies this file as
the plugin itself, run by ``python3 -I -S``; the ``cove-cni`` console
script runs the same ``main``. ``http.client`` is imported only by the
verbs that talk to the agent: VERSION answers without it.

Verbs: ADD, DEL, CHECK, GC, STATUS, VERSION. Results in the asked
``cniVersion`` (0.3.0 to 1.1.0). Errors are CNI error JSON on stdout with
a non-zero exit: 1 incompatible version, 2 unsupported field, 4 a missing
or bad environment variable (named), 6 undecodable input, 7 invalid
configuration (an unknown network too: never 3, which would tell the
runtime that nothing needs cleaning up), 11 try again later (the agent is
down), 50/51 from STATUS, 999 anything else the agent refused.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself costs 3 ms of every start
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_SOCKET = "/run/cove/agent.sock"
TIMEOUT = 120.0
# CNI_ARGS keys this plugin reads; others need IgnoreUnknown=1.
KNOWN_ARGS = frozenset(
    {
        "IgnoreUnknown",
        "IP",
        "MAC",
        "K8S_POD_NAME",
        "K8S_POD_NAMESPACE",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
        "COVE_SERVICE",
    }
)
# Pod annotation (containerd's io.kubernetes.cri.pod-annotations) and
# CNI_ARGS key that register the container as a Consul service.
SERVICE_ANNOTATION = "cove.service"


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def _env(name: str, environ: Mapping[str, str]) -> str:
    value = environ.get(name, "")
    if not value:
        raise CniError(4, f"environment variable {name} is not set", f"the runtime must set {name}")
    return value


def _valid_container_id(cid: str) -> bool:
    return (
        cid[:1].isascii()
        and cid[:1].isalnum()
        and all(c.isascii() and (c.isalnum() or c in "_.-") for c in cid)
        and len(cid) <= 256
    )


def _valid_ifname(name: str) -> bool:
    return (
        0 < len(name) <= 15
        and name not in (".", "..")
        and all(c.isascii() and c.isprintable() and c not in "/: " for c in name)
    )


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K=V``. Unknown keys are an error (2) unless
    ``IgnoreUnknown`` is true; a pair without ``=`` is a bad variable (4)."""
    out: dict[str, str] = {}
    if not text:
        return out
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(4, f"CNI_ARGS has a malformed pair {pair!r}", "expected KEY=VALUE;...")
        out[key] = value
    ignore = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(out) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(
            2, f"CNI_ARGS has unknown key(s) {', '.join(unknown)}", "set IgnoreUnknown=1"
        )
    return out


def _version(conf: dict[str, Any]) -> str:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(7, "the network configuration has no cniVersion")
    if version not in SUPPORTED:
        raise CniError(
            1,
            f"cniVersion {version} is not supported",
            f"cove-cni supports {', '.join(SUPPORTED)}",
        )
    return version


def _netconf(conf: dict[str, Any]) -> tuple[str, str]:
    """(network, agent socket) from the plugin's configuration."""
    network = conf.get("network", conf.get("name"))
    if not isinstance(network, str) or not network:
        raise CniError(7, "the network configuration names no cove network (key 'network')")
    sock = conf.get("agentSocket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise CniError(7, "agentSocket must be an absolute path to the cove agent's socket")
    return network, sock


def _requested_ips(conf: dict[str, Any], args: dict[str, str]) -> list[str]:
    """Static addresses from ``args.cni.ips``, ``runtimeConfig.ips`` and
    ``CNI_ARGS IP=`` in that order, without duplicates or prefixes."""
    found: list[str] = []
    cni_args = conf.get("args")
    sources: list[Any] = []
    if isinstance(cni_args, dict) and isinstance(cni_args.get("cni"), dict):
        sources.append(cni_args["cni"].get("ips"))
    rc = conf.get("runtimeConfig")
    if isinstance(rc, dict):
        sources.append(rc.get("ips"))
    if args.get("IP"):
        sources.append(args["IP"].split(","))
    for src in sources:
        if src is None:
            continue
        if not isinstance(src, list) or not all(isinstance(i, str) for i in src):
            raise CniError(7, "ips must be a list of addresses")
        for ip in src:
            ip = ip.split("/", 1)[0].strip()
            if ip and ip not in found:
                found.append(ip)
    return found


def _label_services(conf: dict[str, Any]) -> list[str]:
    """``cove.service`` labels from ``args.cni.labels`` (CONVENTIONS.md)."""
    cni_args = conf.get("args")
    cni = cni_args.get("cni") if isinstance(cni_args, dict) else None
    labels = cni.get("labels") if isinstance(cni, dict) else None
    out: list[str] = []
    for label in labels if isinstance(labels, list) else []:
        if isinstance(label, dict) and label.get("key") == SERVICE_ANNOTATION:
            out.extend(s for s in str(label.get("value", "")).split(",") if s)
    return out


def _runtime_config(conf: dict[str, Any], network: str) -> dict[str, Any]:
    rc = conf.get("runtimeConfig")
    if rc is None:
        return {}
    if not isinstance(rc, dict):
        raise CniError(7, "runtimeConfig must be an object")
    out: dict[str, Any] = {}
    aliases = rc.get("aliases")
    if isinstance(aliases, dict):
        names = aliases.get(network, aliases.get(conf.get("name", ""), []))
        if isinstance(names, list):
            out["aliases"] = [a for a in names if isinstance(a, str)]
    maps = rc.get("portMappings")
    if maps is not None:
        if not isinstance(maps, list) or not all(isinstance(m, dict) for m in maps):
            raise CniError(7, "runtimeConfig.portMappings must be a list of objects")
        out["portMappings"] = maps
    ann = rc.get("io.kubernetes.cri.pod-annotations")
    if isinstance(ann, dict) and isinstance(ann.get(SERVICE_ANNOTATION), str):
        out["services"] = [s for s in ann[SERVICE_ANNOTATION].split(",") if s]
    return out


# -- the agent ---------------------------------------------------------------


class _JsonContext:
    """What ``_json``'s scanner reads from ``json.JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """``json.loads``, through ``_json``'s C scanner (the one ``json``
    itself uses) without importing ``json``: that import (``re``, ``enum``)
    costs 10 ms of every start. Anything the scanner does not take whole
    goes to ``json.loads``, for its error message."""
    s = text.decode() if isinstance(text, bytes) else text
    stripped = s.strip(" \t\n\r")
    try:
        from _json import make_scanner

        obj, end = make_scanner(_JsonContext)(stripped, 0)  # type: ignore[arg-type]
        if end == len(stripped):
            return obj
    except Exception:  # json.loads below says what is wrong
        pass
    import json

    return json.loads(s)


def _unencodable(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """``json.dumps(obj)``, by ``_json``'s C encoder when it is there."""
    try:
        from _json import encode_basestring_ascii, make_encoder
    except ImportError:
        import json

        return json.dumps(obj)
    enc = make_encoder(
        None, _unencodable, encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    return "".join(enc(obj, 0))


def _call_socket(sock_path: str, method: str, path: str, body: Any = None) -> Any:
    """One request to the agent's native API (HTTP/1.1 over its Unix
    socket); its JSON answer. Raises ``CniError`` 11 when the agent cannot
    be reached, and the code the agent gives when it refuses.

    A plain request on ``_socket`` rather than ``http.client``, whose
    import (``email``, ``ssl``...) would triple the plugin's start."""
    import _socket

    data = dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(sock_path)
        sock.sendall(head.encode() + data)
        status, raw = _read_response(sock)
    except OSError as exc:
        raise CniError(
            11,
            f"the cove agent is not reachable on {sock_path}: {exc}",
            "start it (cove agent) or fix agentSocket; try again later",
        ) from exc
    finally:
        sock.close()
    try:
        answer = loads(raw) if raw.strip() else None
    except ValueError as exc:
        raise CniError(999, f"the cove agent answered {status} with no JSON") from exc
    if status >= 400:
        answer = answer if isinstance(answer, dict) else {}
        code = answer.get("cni_code")
        raise CniError(
            int(code) if isinstance(code, int) else 999,
            str(answer.get("error") or f"the cove agent answered {status}"),
            str(answer.get("kind") or ""),
        )
    return answer


def _read_response(sock: Any) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response: ``Content-Length`` or
    chunked framing, or up to the end of the connection."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = sock.recv(65536)
        if not more:
            raise OSError("the connection closed before the response's headers")
        buf += more
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise OSError(f"not an HTTP response: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    while True:
        if length is not None and length.isdigit() and len(rest) >= int(length):
            return int(parts[1]), rest[: int(length)]
        if chunked and (rest.endswith(b"0\r\n\r\n")):
            return int(parts[1]), _dechunk(rest)
        more = sock.recv(65536)
        if not more:
            return int(parts[1]), _dechunk(rest) if chunked else rest
        rest += more


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


# -- results -----------------------------------------------------------------


def convert(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A 1.0.0-shaped result in ``version``: 0.3.x and 0.4.0 need
    ``"version": "4"|"6"`` in each ip entry; 1.1.0 is 1.0.0's shape."""
    out = dict(result)
    out["cniVersion"] = version
    if version in ("0.3.0", "0.3.1", "0.4.0"):
        ips = []
        for ip in result.get("ips", []):
            entry = dict(ip)
            entry["version"] = "6" if ":" in str(entry.get("address", "")) else "4"
            ips.append(entry)
        out["ips"] = ips
    return out


def _chain(prev: Any, ours: dict[str, Any]) -> dict[str, Any]:
    """Ours appended to a previous plugin's result (cove-cni chained)."""
    if not isinstance(prev, dict):
        return ours
    ifaces = list(prev.get("interfaces") or [])
    shift = len(ifaces)
    ifaces.extend(ours.get("interfaces", []))
    ips = [{k: v for k, v in ip.items() if k != "version"} for ip in prev.get("ips") or []]
    for ip in ours.get("ips", []):
        entry = dict(ip)
        if "interface" in entry:
            entry["interface"] = entry["interface"] + shift
        ips.append(entry)
    out = dict(prev)
    out.update(ours)
    out["interfaces"] = ifaces
    out["ips"] = ips
    out["routes"] = list(prev.get("routes") or []) + list(ours.get("routes", []))
    return out


# -- verbs -------------------------------------------------------------------


def _attachment(conf: dict[str, Any], environ: Mapping[str, str], netns: bool) -> dict[str, Any]:
    cid = _env("CNI_CONTAINERID", environ)
    if not _valid_container_id(cid):
        raise CniError(4, f"CNI_CONTAINERID {cid!r} is not a valid container id")
    ifname = _env("CNI_IFNAME", environ)
    if not _valid_ifname(ifname):
        raise CniError(4, f"CNI_IFNAME {ifname!r} is not a valid interface name")
    body: dict[str, Any] = {"containerID": cid, "ifname": ifname}
    path = environ.get("CNI_NETNS", "")
    if netns:
        path = _env("CNI_NETNS", environ)
    if path:
        if not path.startswith("/"):
            raise CniError(4, f"CNI_NETNS {path!r} is not an absolute path")
        body["netns"] = path
    return body


def run(
    command: str,
    conf: dict[str, Any],
    environ: Mapping[str, str],
    call: Callable[[str, str, str, Any], Any] | None = None,
) -> dict[str, Any] | None:
    """One verb; its result (None for verbs without output). ``call``
    reaches the agent (``_call``: over its socket; the agent passes its
    own when the compiled shim hands it a whole call)."""
    _call = call or _call_socket
    version = _version(conf)
    network, sock = _netconf(conf)
    if command == "ADD":
        body = _attachment(conf, environ, netns=True)
        args = parse_args(environ.get("CNI_ARGS", ""))
        body["network"] = network
        body["ips"] = _requested_ips(conf, args)
        if args.get("MAC"):
            body["mac"] = args["MAC"]
        body["podName"] = args.get("K8S_POD_NAME", "")
        body["podNamespace"] = args.get("K8S_POD_NAMESPACE", "")
        body.update(_runtime_config(conf, network))
        services = [*body.get("services", []), *_label_services(conf)]
        if args.get("COVE_SERVICE"):
            services += args["COVE_SERVICE"].split(",")
        if services:
            body["services"] = list(dict.fromkeys(services))
        result = _call(sock, "POST", "/api/cni/attach", body)
        return convert(_chain(conf.get("prevResult"), result), version)
    if command == "DEL":
        body = _attachment(conf, environ, netns=False)
        parse_args(environ.get("CNI_ARGS", ""))
        body["network"] = network
        _call(sock, "POST", "/api/cni/detach", body)
        return None
    if command == "CHECK":
        body = _attachment(conf, environ, netns=True)
        parse_args(environ.get("CNI_ARGS", ""))
        if version in ("0.3.0", "0.3.1"):
            raise CniError(1, f"CHECK needs cniVersion 0.4.0 or later, not {version}")
        prev = conf.get("prevResult")
        if not isinstance(prev, dict):
            raise CniError(7, "CHECK needs prevResult (the result of ADD)")
        body["network"] = network
        body["prevResult"] = prev
        _call(sock, "POST", "/api/cni/check", body)
        return None
    if command == "GC":
        valid = conf.get("cni.dev/valid-attachments", [])
        if not isinstance(valid, list) or not all(
            isinstance(v, dict)
            and isinstance(v.get("containerID"), str)
            and isinstance(v.get("ifname"), str)
            for v in valid
        ):
            raise CniError(
                7, "cni.dev/valid-attachments must be a list of {containerID, ifname} objects"
            )
        _call(sock, "POST", "/api/cni/gc", {"network": network, "valid": valid})
        return None
    if command == "STATUS":
        try:
            answer = _call(sock, "POST", "/api/cni/status", {"network": network})
        except CniError as exc:
            raise CniError(50, exc.msg, exc.details) from exc
        if isinstance(answer, dict) and answer.get("code"):
            raise CniError(int(answer["code"]), str(answer.get("msg", "")))
        return None
    raise CniError(4, f"CNI_COMMAND {command!r} is not a CNI verb", "ADD, DEL, CHECK, GC, STATUS")


def execute(
    raw: bytes,
    environ: Mapping[str, str],
    call: Callable[[str, str, str, Any], Any] | None = None,
) -> tuple[int, str]:
    """One whole plugin call: (exit status, what goes to stdout)."""
    version = "1.1.0"
    try:
        command = environ.get("CNI_COMMAND", "")
        if not command:
            raise CniError(4, "environment variable CNI_COMMAND is not set", "run by a runtime")
        try:
            conf = loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise CniError(6, f"the network configuration on stdin is not JSON: {exc}") from exc
        if not isinstance(conf, dict):
            raise CniError(6, "the network configuration on stdin is not a JSON object")
        asked = conf.get("cniVersion")
        if isinstance(asked, str) and asked in SUPPORTED:
            version = asked
        if command == "VERSION":
            return 0, dumps({"cniVersion": asked or "1.1.0", "supportedVersions": list(SUPPORTED)})
        result = run(command, conf, environ, call)
        return 0, dumps(result) if result is not None else ""
    except CniError as exc:
        err: dict[str, Any] = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
        if exc.details:
            err["details"] = exc.details
        return 1, dumps(err)


def main(argv: list[str] | None = None) -> int:
    rc, out = execute(sys.stdin.buffer.read(), os.environ)
    sys.stdout.write(out)
    if rc:
        sys.stderr.write(f"cove-cni: {loads(out).get('msg')}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
