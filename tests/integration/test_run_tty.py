"""`cove run -it`, `-i`, `-t` and `cove attach` through a real agent and
real containers, driven from a real pseudo-terminal (pexpect) as a user's
terminal would: the container's terminal has the caller's size and follows
its resizes, ^C goes to the container, the exit status is the container's,
--rm leaves nothing, and the caller's terminal is restored after."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pexpect
import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

from agentproc import COVE
from imageutil import Img, busybox_layer, oci_archive

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]

PROMPT = "tty-prompt# "


@pytest.fixture
def bb(agent: Any, tmp_path: Path) -> Any:
    need_containers(agent)
    oci_archive(tmp_path / "bb.tar", Img([busybox_layer()], cmd=["sh"]), "localhost/bb:latest")
    agent.ok("image", "load", "-i", str(tmp_path / "bb.tar"))
    return agent


def _spawn(agent: Any, *args: str, rows: int = 37, cols: int = 91) -> pexpect.spawn:
    term = pexpect.spawn(
        COVE[0], [*COVE[1:], *args], env={**agent.env, "TERM": "xterm"},
        dimensions=(rows, cols), timeout=20, encoding="utf-8", codec_errors="replace",
    )  # fmt: skip
    return term


def _ends(term: pexpect.spawn) -> int | None:
    """The exit status of what runs on ``term``, once it has ended."""
    term.expect(pexpect.EOF)
    term.close()
    return term.exitstatus


def _names(agent: Any) -> list[str]:
    return [c["name"] for c in json.loads(agent.ok("ps", "-a", "--format", "json"))]


def _shell(agent: Any, *run_args: str) -> pexpect.spawn:
    """``cove run -it ... sh`` at its first prompt."""
    term = _spawn(agent, "run", "-it", *run_args)
    term.expect_exact("# ")  # busybox sh's own, before it reads a line
    term.sendline("PS1='tty''-prompt# '")  # its echo is not the prompt
    term.expect_exact(PROMPT)
    return term


def test_run_it_is_a_terminal_of_the_callers_size_with_the_shells_status(bb: Any) -> None:
    term = _shell(bb, "--rm", "--name", "box", "bb", "sh")
    term.sendline("stty size; tty; id -u")
    term.expect(r"37 91\r\n(/dev/pts/\d+)\r\n0\r\n")
    pts = term.match.group(1)
    # the terminal is the container's own, in its /dev/pts, and owned by it
    term.sendline(f"ls -n {pts}")
    term.expect(r"crw--w---- +1 0 ")
    # ^C reaches the shell's foreground job, not the CLI
    # (a child that prints, then becomes the sleep: ^C cannot come between)
    term.sendline("sh -c 'r=start; echo ${r}ed; exec sleep 30'")
    term.expect_exact("started")
    term.sendcontrol("c")
    term.expect_exact(PROMPT, timeout=10)  # not the 30 s of the sleep
    assert term.isalive()
    term.sendline("exit 3")
    assert _ends(term) == 3
    assert "box" not in _names(bb), "--rm: the container is gone"


def test_a_resize_of_the_callers_terminal_reaches_the_container(bb: Any) -> None:
    term = _shell(bb, "--name", "resized", "bb", "sh")
    # a foreground program that prints the size it is told of by SIGWINCH
    term.sendline(
        "sh -c 'trap \"stty size; exit\" WINCH; r=ready; echo $r-now; while :; do sleep 0.1; done'"
    )
    term.expect_exact("ready-now")
    term.setwinsize(50, 132)  # the kernel sends the CLI SIGWINCH
    term.expect_exact("50 132")
    term.expect_exact(PROMPT)
    term.sendline("exit")
    assert _ends(term) == 0
    # without --rm it stays, exited with the shell's status
    assert inspect(bb, "resized")["state"]["exit_code"] == 0


def test_the_users_terminal_is_restored_after_run_it(bb: Any) -> None:
    """Through a shell on the test's terminal: cooked mode (echo, icanon)
    before and after ``cove run -it``, raw while it runs."""
    term = pexpect.spawn(
        "/bin/sh", env={**bb.env, "PS1": "host$ "}, timeout=20, encoding="utf-8",
    )  # fmt: skip
    term.expect_exact("host$ ")
    before = subprocess.run(["stty", "-g"], stdin=term.child_fd, capture_output=True, text=True)
    cmd = " ".join([*COVE, "run", "-it", "--rm", "bb", "sh", "-c", "'stty -a; exit 7'"])
    term.sendline(f"{cmd}; echo status=$?")
    term.expect(r"status=(\d+)")
    assert term.match.group(1) == "7"
    term.expect_exact("host$ ")
    after = subprocess.run(["stty", "-g"], stdin=term.child_fd, capture_output=True, text=True)
    assert after.stdout == before.stdout and before.stdout
    term.sendline("exit")
    term.expect(pexpect.EOF)
    term.close()


def test_run_i_forwards_stdin_until_it_closes(bb: Any) -> None:
    res = bb.cli("run", "-i", "--rm", "bb", "cat", input="hi\nthere\n")
    assert (res.returncode, res.stdout) == (0, "hi\nthere\n"), res.stderr
    res = bb.cli(
        "run", "-i", "bb", "sh", "-c", "read a; read b; echo $b-$a; exit 4", input="1\n2\n"
    )
    assert (res.returncode, res.stdout) == (4, "2-1\n"), res.stderr
    # the light mode (the host's tree) too
    res = bb.cli("run", "-i", "--rm", "--", "tr", "a-z", "A-Z", input="light\n")
    assert (res.returncode, res.stdout) == (0, "LIGHT\n"), res.stderr


def test_run_without_i_gives_the_container_no_stdin(bb: Any) -> None:
    res = bb.cli("run", "--rm", "bb", "cat", input="not forwarded\n")
    assert (res.returncode, res.stdout) == (0, ""), res.stderr


def test_run_t_alone_has_a_terminal_but_no_input(bb: Any) -> None:
    term = _spawn(bb, "run", "-t", "--rm", "bb", "sh", "-c", "test -t 1 && stty size; exit 5")
    term.expect_exact("37 91")
    assert _ends(term) == 5
    # the light mode (the host's tree, its /dev/pts) too
    term = _spawn(bb, "run", "-it", "--rm", "--", "sh", "-c", "stty size; exit 6", rows=12, cols=34)
    term.expect_exact("12 34")
    assert _ends(term) == 6
    # the terminal belongs to the container's user
    term = _spawn(bb, "run", "-t", "--rm", "-u", "1000", "bb", "sh", "-c", "ls -n $(tty)")
    term.expect(r"crw--w---- +1 1000 ")
    assert _ends(term) == 0


def test_attach_to_a_detached_terminal(bb: Any) -> None:
    cid = bb.ok("run", "-dit", "--name", "bg", "bb", "sh").strip()
    term = _spawn(bb, "attach", "bg", rows=24, cols=100)
    term.sendline("stty size")
    term.expect_exact("24 100")
    term.sendline("exit 9")
    assert _ends(term) == 9
    assert inspect(bb, cid)["state"]["exit_code"] == 9


def test_detach_keys_leave_it_running_and_rm_still_removes_it(bb: Any) -> None:
    term = _shell(bb, "--rm", "--name", "away", "bb", "sh")
    term.sendline("od -An -tx1")
    term.send("a\x10")  # a lone ctrl-p is held back, then sent
    term.send("b\r\x04")
    term.expect_exact("61 10 62 0a")
    term.expect_exact(PROMPT)
    term.send("\x10\x11")
    assert _ends(term) == 0
    assert "detached from away" in (term.before or "")
    assert inspect(bb, "away")["state"]["status"] == "running"
    term = _spawn(bb, "attach", "away")
    term.sendline("exit 4")
    assert _ends(term) == 4
    eventually(lambda: "away" not in _names(bb))  # --rm, though detached


def test_run_it_errors_are_dockers(bb: Any) -> None:
    term = _spawn(bb, "run", "-it", "--rm", "bb", "/no/such/program")
    assert _ends(term) == 127, term.before
    assert "/no/such/program" in (term.before or "")
    term = _spawn(bb, "run", "-it", "--rm", "no-such-image")
    assert _ends(term) == 125 and "no such image" in (term.before or "")
    # a command that is not a program: 126 (as Docker), detached too
    bad = bb.cli("run", "-d", "bb", "/etc/passwd")
    assert bad.returncode == 126 and "/etc/passwd" in bad.stderr
    bad = bb.cli("attach", "nobody")
    assert bad.returncode != 0 and "nobody" in bad.stderr
    bb.ok("run", "--name", "done", "bb", "true")
    bad = bb.cli("attach", "done")
    assert bad.returncode != 0 and "container done is not running" in bad.stderr
    bb.ok("rm", "done")
    assert _names(bb) == [], "nothing left behind"


def test_attach_needs_the_supervisors_socket_which_is_root_only(bb: Any) -> None:
    bb.ok("run", "-dit", "--name", "guarded", "bb", "sh")
    info = json.loads(bb.ok("inspect", "guarded"))[0]
    status, body = bb.api("GET", f"/api/containers/{info['id']}/attach")
    assert status == 200
    mode = os.stat(body["socket"]).st_mode & 0o777
    assert mode == 0o600 and os.stat(body["socket"]).st_uid == 0
    # an unprivileged user knowing the path still cannot ask for the terminal
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\n"
    )
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "/usr/bin/python3", "-c", probe, body["socket"]],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.stdout.strip() == "refused", res.stderr
    bb.ok("rm", "-f", "guarded")


def test_a_detached_terminals_output_is_in_its_log(bb: Any) -> None:
    """As Docker: a -t container's output is logged (stream stdout, the
    terminal's \\r\\n kept), with nobody attached."""
    bb.ok("run", "-dt", "--name", "said", "bb", "sh", "-c", "echo hi; sleep 600")

    def logs() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*COVE, "logs", "said"], env=bb.env, capture_output=True, timeout=30)

    eventually(lambda: logs().stdout == b"hi\r\n")
    assert logs().stderr == b""  # stdout, not stderr
    bb.ok("rm", "-f", "said")


def test_a_chatty_terminal_with_nobody_attached_does_not_block(bb: Any) -> None:
    """200 kB, ten times what the terminal holds: the container runs to its
    end with nobody attached, and all it wrote is in its log."""
    script = "i=0; while [ $i -lt 2000 ]; do printf '%099d\\n' $i; i=$((i+1)); done; echo all-done"
    bb.ok("run", "-dt", "--name", "chatty", "bb", "sh", "-c", script)
    eventually(lambda: inspect(bb, "chatty")["state"]["status"] == "exited", timeout=30)
    assert inspect(bb, "chatty")["state"]["exit_code"] == 0
    lines = bb.ok("logs", "chatty").split("\n")  # \r\n, as text reads it
    assert lines[-2:] == ["all-done", ""] and len(lines) == 2002
    assert lines[1999] == f"{1999:099d}"
    bb.ok("rm", "chatty")


def test_logs_f_follows_a_terminal_while_someone_is_attached(bb: Any) -> None:
    bb.ok("run", "-dit", "--name", "followed", "bb", "sh")
    follow = subprocess.Popen(
        [*COVE, "logs", "-f", "followed"], env=bb.env, stdout=subprocess.PIPE, text=True
    )
    try:
        term = _spawn(bb, "attach", "followed")
        term.sendline("echo typed-$((6*7))")
        term.expect_exact("typed-42")  # the attached client sees it...
        assert follow.stdout is not None
        line = follow.stdout.readline()
        while "typed-42" not in line or "$((" in line:  # ...and so does the log
            line = follow.stdout.readline()
        term.sendline("exit 2")
        assert _ends(term) == 2
        follow.wait(timeout=20)  # -f ends with the container
        assert follow.returncode == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    bb.ok("rm", "followed")
