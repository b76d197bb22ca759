"""The attach relay, detach keys and the supervisor's held stdio, without
root: a pseudo-terminal pair plays the container's terminal, a socket pair
the supervisor's connection."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import termios
import threading
import time

import pytest

from cove.cli.main import main
from cove.errors import InvalidArgument
from cove.runtime import attach
from cove.runtime.launch import LaunchSpec
from cove.runtime.spec import Container, RunSpec
from cove.runtime.stdio import HeldStdio, Plan


def _size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.mark.parametrize(
    ("reads", "forwarded", "detached"),
    [
        ([b"ls\r"], b"ls\r", False),
        ([b"a\x10\x11b"], b"a", True),
        ([b"a\x10", b"\x11"], b"a", True),  # split across reads
        ([b"a\x10", b"b"], b"a\x10b", False),  # a lone ctrl-p reaches the container
        ([b"\x11\x10"], b"\x11", False),  # the other order is no sequence
    ],
)
def test_detach_keys(reads: list[bytes], forwarded: bytes, detached: bool) -> None:
    keys = attach._DetachKeys()
    out, gone = b"", False
    for data in reads:
        part, gone = keys.feed(data)
        out += part
        if gone:
            break
    assert (out, gone) == (forwarded, detached)


def test_held_stdin_is_given_away_once_and_a_master_to_every_attacher() -> None:
    r, w = os.pipe()
    held = HeldStdio(tty=False, stdin=w)
    (given,) = held.handover()
    assert held.handover() == [] and held.stdin == -1
    os.write(given, b"x")
    os.close(given)
    assert os.read(r, 10) == b"x" and os.read(r, 10) == b""  # the container sees EOF
    os.close(r)
    master, slave = os.openpty()
    held = HeldStdio(tty=True, master=master)
    a, b = held.handover() + held.handover()
    assert len({a, b, master}) == 3
    for fd in (a, b):
        os.close(fd)
    held.close()
    assert held.master == -1
    os.close(slave)


def test_a_plan_without_t_or_i_makes_nothing() -> None:
    plan = Plan.open(tty=False, interactive=False)
    assert plan.report_channel() is None
    assert (plan.stdin_r, plan.stdin_w, plan.master) == (-1, -1, -1)
    plan = Plan.open(tty=False, interactive=True)
    held = HeldStdio(tty=False)
    plan.close_child_ends()
    plan.hand_to(held)
    assert plan.stdin_w == -1 and held.stdin >= 0
    held.close()


def test_run_specs_carry_t_i_and_the_terminal_size() -> None:
    spec = RunSpec.from_json(
        {"command": ["sh"], "tty": True, "interactive": True, "console_size": [30, 100]}
    )
    assert (spec.tty, spec.interactive, spec.console_size) == (True, True, (30, 100))
    for bad in ([30], [-1, 5], "30x100", [1, 70000]):
        with pytest.raises(InvalidArgument, match="console_size"):
            RunSpec.from_json({"command": ["sh"], "tty": True, "console_size": bad})
    with pytest.raises(InvalidArgument, match="'tty' must be true or false"):
        RunSpec.from_json({"command": ["sh"], "tty": "yes"})
    c = Container(id="c1", name="c", argv=("sh",), hostname="c", tty=True, console_size=(3, 4))
    assert Container.from_json(c.to_json()) == c
    plain = Container(id="c1", name="c", argv=("sh",), hostname="c")
    assert "tty" not in plain.to_json()  # others' records stay as they were
    launch = LaunchSpec(
        id="c1", name="c", argv=("sh",), env={}, hostname="c", netns="/n", etc_dir="/e",
        log_path="/l", tty=True, interactive=True, console_size=(3, 4),
    )  # fmt: skip
    assert LaunchSpec.from_json(launch.to_json()) == launch


def test_relay_copies_both_ways_resizes_and_ends_with_the_state() -> None:
    """The caller's terminal and the container's are both pseudo-terminals
    here; the output arrives on the supervisor's channel (it alone reads
    the master), the state line on its socket. The relay runs in the main
    thread (it installs signal handlers), the two ends in another."""
    caller, caller_slave = os.openpty()  # the user's terminal: the test types on caller
    ctr_master, ctr_slave = os.openpty()  # the container's terminal
    _set_size(caller_slave, 33, 77)
    ours, theirs = socket.socketpair()
    out_ours, out_theirs = socket.socketpair()
    session = attach.Session(ours, tty=True, fd=ctr_master, out=out_ours.detach())
    seen: dict[str, object] = {}

    def both_ends() -> None:
        os.write(caller, b"hello\r")
        seen["typed"] = _read_until(ctr_slave, b"hello")
        seen["size"] = _size(ctr_slave)  # the caller's, at once
        seen["raw"] = not termios.tcgetattr(caller_slave)[3] & termios.ICANON
        out_theirs.sendall(b"from the container")
        seen["shown"] = _read_until(caller, b"container")
        theirs.sendall(json.dumps({"ok": True, "state": {"exit_code": 3}}).encode() + b"\n")
        time.sleep(0.2)  # the state first: the output that follows is still shown
        out_theirs.sendall(b" last words")
        out_theirs.close()  # the supervisor closes the channel after the last output

    helper = threading.Thread(target=both_ends, daemon=True)
    helper.start()
    try:
        state = session.relay(caller_slave, caller_slave, True)
        helper.join(10)
        assert state == {"exit_code": 3}
        assert seen["typed"] == b"hello\n" and seen["size"] == (33, 77) and seen["raw"]
        assert b"from the container" in bytes(seen["shown"])  # type: ignore[arg-type]
        assert b"last words" in _read_until(caller, b"words")
        assert termios.tcgetattr(caller_slave)[3] & termios.ICANON  # restored
    finally:
        theirs.close()
        session.close()
        for fd in (caller, caller_slave, ctr_slave):
            os.close(fd)


def _read_until(fd: int, marker: bytes) -> bytes:
    out = b""
    while marker not in out:
        out += os.read(fd, 4096)
    return out


def test_terminal_size_of_no_terminal_is_zero() -> None:
    r, w = os.pipe()
    try:
        assert attach.terminal_size(r, w) == [0, 0]
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    "args", [["attach", "web"], ["run", "-it", "--rm", "img", "sh"], ["run", "-i", "img", "cat"]]
)
def test_attaching_over_tcp_is_refused_before_anything_is_made(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The terminal is handed over on the agent's host: over TCP the CLI
    says so before it asks the agent for anything (port 9 would refuse)."""
    assert main(["--host", "http://127.0.0.1:9", *args]) == 2
    assert "needs the agent's local socket" in capsys.readouterr().err
