"""The lean start-up of a container's daily commands: ``cove run``, ``rm``,
``ps``... parse with the same definitions as the full CLI but import none
of the other commands' code (the registry, CNI, policy, ...)."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys

import pytest

from cove.cli.main import LEAN_COMMANDS, _command_word, build_parser, lean_parser


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["run", "--rm", "img", "true"], "run"),
        (["--socket", "/x.sock", "rm", "-f", "a"], "rm"),
        (["--socket=/x.sock", "ps"], "ps"),
        (["--host", "https://h:1", "--token", "t", "logs", "a"], "logs"),
        (["network", "ls"], "network"),
        (["--version"], None),
        (["-h", "run"], None),
        (["--unknown", "run"], None),
        ([], None),
    ],
)
def test_the_command_word_is_found_past_the_global_options(
    argv: list[str], word: str | None
) -> None:
    assert _command_word(argv) == word


def test_the_lean_parser_defines_the_lean_commands_as_the_full_one_does() -> None:
    full = build_parser()
    for cmd in LEAN_COMMANDS:
        argv = [cmd, "--help"]
        assert _help(full, argv) == _help(lean_parser(cmd), argv), cmd
    assert _help(full, ["image", "load", "-h"]) == _help(
        lean_parser("image"), ["image", "load", "-h"]
    )
    args = lean_parser("run").parse_args(
        ["--socket", "/s", "run", "--rm", "--network", "n", "img", "true"]
    )
    assert (args.rm, args.network, args.command) == (True, ["n"], ["img", "true"])


def _help(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args(argv)
    return out.getvalue()


@pytest.mark.parametrize(("command", "module"), [("run", "containers"), ("images", "image")])
def test_lean_commands_import_no_other_commands_code(command: str, module: str) -> None:
    """What `cove run --help` loads, in a fresh interpreter: none of the
    modules only other commands need (they cost ~100 ms a command)."""
    code = (
        "import sys\n"
        "from cove.cli.main import main\n"
        "try:\n"
        f"    main([{command!r}, '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('cove'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(out.split())
    assert f"cove.cli.{module}" in loaded
    heavy = {
        m
        for m in loaded
        if m.startswith(("cove.registry", "cove.cni", "cove.policy", "cove.lb", "cove.store"))
        or m in {"cove.agent.config", "cove.runtime.spec", "cove.cli.registry", "cove.image.store"}
    }
    assert not heavy
