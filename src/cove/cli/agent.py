"""`cove agent`: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cove.agent import config as agent_config


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the cove agent (the daemon) in the foreground")
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--state-dir", type=Path, help="state directory (default /var/lib/cove)")
    p.add_argument(
        "--socket", dest="agent_socket", type=Path, help="API socket (default /run/cove/agent.sock)"
    )
    p.add_argument("--http", help="HTTP API ADDR:PORT, or 'off' (default 127.0.0.1:8500)")
    p.add_argument(
        "--store",
        help="sqlite:PATH | etcd://HOST:PORT[,HOST:PORT...] | etcds://... (TLS) | memory:",
    )
    p.add_argument("--dns", help="host DNS listener ADDR:PORT, or 'off' (default 127.0.0.1:8600)")
    p.add_argument(
        "--upstream", action="append", help="upstream DNS server (repeat; default resolv.conf)"
    )
    p.add_argument("--node-name")
    p.add_argument("--datacenter")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-file", type=Path)
    p.add_argument("--reconcile-interval", type=float)
    p.add_argument(
        "--vip-range", action="append", help="CIDR for service VIPs (repeat; default 10.96.0.0/16)"
    )
    p.add_argument("--enable-script-checks", action="store_true", default=None)
    p.add_argument(
        "--acl-enabled", action="store_true", default=None, help="enforce Consul's ACLs on /v1"
    )
    p.add_argument(
        "--acl-default-policy",
        choices=("allow", "deny"),
        help="what a token may do where no rule says (default allow)",
    )
    p.add_argument(
        "--acl-initial-management",
        metavar="TOKEN",
        help="SecretID of a management token created at start-up",
    )
    p.add_argument(
        "--socket-group",
        help="group that may use the API socket (mode 0660, like Docker's docker group; "
        "default root only, 0600)",
    )
    p.add_argument(
        "--http-allowed-host",
        action="append",
        metavar="NAME",
        help="a host name the HTTP listeners answer to besides their addresses (repeat)",
    )
    p.add_argument(
        "--http-max-conns",
        type=int,
        metavar="N",
        help="TCP/TLS connections at once (default: sized from the open-file limit)",
    )
    p.add_argument(
        "--http-max-conns-per-client",
        type=int,
        metavar="N",
        help="TCP/TLS connections per client address (default 200; 0: no cap)",
    )
    p.add_argument("--https", help="HTTPS API ADDR:PORT (Consul's is 8501; default off)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate for --https")
    p.add_argument("--tls-key", type=Path, help="PEM private key for --https")
    p.add_argument("--tls-ca", type=Path, help="PEM CA that signs client certificates")
    p.add_argument(
        "--tls-verify-incoming",
        action="store_true",
        default=None,
        help="require client certificates signed by --tls-ca on --https",
    )
    p.add_argument(
        "--advertise",
        metavar="ADDR",
        help="this host's address for the other hosts (default: the default route's source"
        " address with etcd, 127.0.0.1 otherwise)",
    )
    p.add_argument(
        "--vxlan-port",
        type=int,
        metavar="PORT",
        help="UDP port of overlay networks between hosts (default 4789; the same on every host)",
    )
    p.add_argument(
        "--node-ttl",
        type=int,
        metavar="SECONDS",
        help="how long a dead agent's node and services stay alive (default 10)",
    )
    p.add_argument(
        "--reap-after",
        metavar="DURATION",
        help="remove a node dead this long, with everything it owned, as `cove members rm`"
        " would (72h: Consul's reconnect_timeout; default off); one agent reaps at a time",
    )
    p.add_argument("--store-ca", type=Path, help="PEM CA of the etcd members (etcds://)")
    p.add_argument("--store-cert", type=Path, help="PEM client certificate for etcd (etcds://)")
    p.add_argument("--store-key", type=Path, help="PEM private key of --store-cert")
    p.add_argument(
        "--store-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a store request fails over and retries before it fails (default 5)",
    )
    p.add_argument(
        "--cni-conf-dir",
        type=Path,
        help="keep one cove-cni .conflist per network in this directory (default off)",
    )
    p.set_defaults(func=_run, no_client=True)


def _run(args: argparse.Namespace) -> int:
    from cove.agent.daemon import run  # imported late: the CLI's other commands stay light

    flags = {
        "state_dir": args.state_dir,
        "socket": args.agent_socket or args.socket,
        "http": args.http,
        "store": args.store,
        "dns": args.dns,
        "upstreams": tuple(args.upstream) if args.upstream else None,
        "node_name": args.node_name,
        "datacenter": args.datacenter,
        "log_level": args.log_level,
        "log_file": args.log_file,
        "reconcile_interval": args.reconcile_interval,
        "vxlan_port": args.vxlan_port,
        "enable_script_checks": args.enable_script_checks,
        "vip_ranges": tuple(args.vip_range) if args.vip_range else None,
        "acl_enabled": args.acl_enabled,
        "acl_default_policy": args.acl_default_policy,
        "acl_initial_management": args.acl_initial_management,
        "socket_group": args.socket_group,
        "http_allowed_hosts": tuple(args.http_allowed_host) if args.http_allowed_host else None,
        "http_max_conns": args.http_max_conns,
        "http_max_conns_per_client": args.http_max_conns_per_client,
        "https": args.https,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_ca": args.tls_ca,
        "tls_verify_incoming": args.tls_verify_incoming,
        "advertise": args.advertise,
        "node_ttl": args.node_ttl,
        "reap_after": args.reap_after,
        "store_ca": args.store_ca,
        "store_cert": args.store_cert,
        "store_key": args.store_key,
        "store_timeout": args.store_timeout,
        "cni_conf_dir": args.cni_conf_dir,
    }
    cfg = agent_config.load(flags, args.config, os.environ)
    return run(cfg)
