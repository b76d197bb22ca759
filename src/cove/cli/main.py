"""The `cove` command. Errors print one line naming the problem and exit with
the code the exception tree assigns (see cove.errors)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cove import __version__
from cove.cli.client import AgentClient, Remote
from cove.errors import CoveError

# A container's and an image's daily commands, and the CLI module that
# defines each: parsed by a parser of that module alone, so that they import
# only what they use (not the registry, CNI, policy, ... code the other
# commands need): ~100 ms less start-up on every `cove run`.
LEAN_COMMANDS = {
    **dict.fromkeys(
        ("run", "ps", "inspect", "logs", "exec", "stop", "start", "rm", "attach"), "containers"
    ),
    **dict.fromkeys(("image", "images", "rmi", "pull"), "image"),
}
_VALUED = frozenset({"--socket", "--host", "--tls-ca", "--tls-cert", "--tls-key", "--token"})


def build_parser() -> argparse.ArgumentParser:
    from cove.cli import agent as agent_cli
    from cove.cli import cni as cni_cli
    from cove.cli import containers as containers_cli
    from cove.cli import events as events_cli
    from cove.cli import image as image_cli
    from cove.cli import lb as lb_cli
    from cove.cli import network as network_cli
    from cove.cli import nodes as nodes_cli
    from cove.cli import policy as policy_cli
    from cove.cli import registry as registry_cli
    from cove.cli import snapshot as snapshot_cli
    from cove.cli import stats as stats_cli
    from cove.cli import volume as volume_cli

    parser, sub = _base_parser()
    agent_cli.add_parsers(sub)
    network_sub = network_cli.add_parsers(sub)
    containers_cli.add_parsers(sub)
    containers_cli.add_network_parsers(network_sub)  # type: ignore[arg-type]
    registry_cli.add_parsers(sub)
    lb_cli.add_vip_commands(_subcommands(sub.choices["service"]))
    policy_cli.add_parsers(sub)
    cni_cli.add_parsers(sub)
    snapshot_cli.add_parsers(sub)
    events_cli.add_parsers(sub)
    stats_cli.add_parsers(sub)
    image_cli.add_parsers(sub)
    nodes_cli.add_parsers(sub)
    volume_cli.add_parsers(sub)
    return parser


def lean_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``command``'s module alone (``LEAN_COMMANDS``), with
    the same definitions as the full one."""
    parser, sub = _base_parser()
    if LEAN_COMMANDS[command] == "image":
        from cove.cli import image as image_cli

        image_cli.add_parsers(sub)
    else:
        from cove.cli import containers as containers_cli

        containers_cli.add_parsers(sub)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, past the global options; None when it
    cannot tell (help, an unknown option: the full parser decides)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif word.startswith("--") and word.partition("=")[0] in _VALUED:
            continue
        elif word.startswith("-"):
            return None
        else:
            return word
    return None


def _base_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[Any]]:
    parser = argparse.ArgumentParser(prog="cove", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cove {__version__}")
    parser.add_argument(
        "--socket",
        type=Path,
        default=None,
        help="agent socket (default $COVE_SOCKET or /run/cove/agent.sock)",
    )
    parser.add_argument(
        "--host",
        default=None,
        help="reach the agent over TCP instead: http://HOST:PORT or https://HOST:PORT "
        "(default $COVE_HOST; the native API needs --https and an operator token)",
    )
    parser.add_argument("--tls-ca", type=Path, help="PEM CA that signed the agent's certificate")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate, if the agent asks")
    parser.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    parser.add_argument(
        "--token", default=None, help="ACL token (default $COVE_TOKEN or $CONSUL_HTTP_TOKEN)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    """The subcommand set of ``parser``, so a second module can add to it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError(f"{parser.prog} has no subcommands")


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    word = _command_word(words)
    parser = lean_parser(word) if word in LEAN_COMMANDS else build_parser()
    args, extra = parser.parse_known_args(words)
    if extra:
        parser.exit(2, f"cove: error: {_unknown(parser, words, extra)}\n")
    socket_path = args.socket or _default_socket()
    host = args.host or os.environ.get("COVE_HOST") or None
    token = (
        args.token or os.environ.get("COVE_TOKEN") or os.environ.get("CONSUL_HTTP_TOKEN") or None
    )
    try:
        if getattr(args, "no_client", False):
            return int(args.func(args))
        remote = None
        if host is not None:
            remote = Remote(host, args.tls_ca, args.tls_cert, args.tls_key, token)
        return int(args.func(args, AgentClient(socket_path, remote=remote, token=token)))
    except CoveError as exc:
        print(f"cove: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _default_socket() -> Path:
    if "COVE_SOCKET" in os.environ:
        return Path(os.environ["COVE_SOCKET"])
    from cove.agent.config import DEFAULT_SOCKET

    return DEFAULT_SOCKET


def _unknown(parser: argparse.ArgumentParser, argv: Sequence[str], extra: Sequence[str]) -> str:
    """What argparse left over, named: the first unknown flag, else the
    unexpected arguments; with the help to read."""
    words = ["cove"]
    current: argparse.ArgumentParser | None = parser
    for token in argv:
        if current is None:
            break
        try:
            choices = _subcommands(current).choices
        except LookupError:
            break
        if token in choices:
            words.append(token)
            current = choices[token]
    cmd = " ".join(words)
    flag = next((e for e in extra if e.startswith("-") and e != "-"), None)
    if flag is not None:
        return f"unknown flag {flag.split('=', 1)[0]} for '{cmd}': see '{cmd} --help'"
    return f"unexpected argument(s) {' '.join(extra)} for '{cmd}': see '{cmd} --help'"


if __name__ == "__main__":
    sys.exit(main())
