"""``cove logs`` as ``docker logs``: times on every line (-t), --since and
--until, --tail and -f with them, stderr apart, partial lines and bytes
kept, through a real agent, its supervisor and real containers; across an
agent restart and a supervisor restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import datetime
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

from agentproc import COVE

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{9})Z (.*)$")


@pytest.fixture
def net(agent: Any) -> Any:
    need_containers(agent)
    return agent


def _ns(stamp: str) -> int:
    """RFC 3339 with nine digits, UTC, as Python reads it, in nanoseconds."""
    m = STAMP.match(stamp + " x")
    assert m is not None, f"not an RFC 3339 nanosecond time: {stamp!r}"
    base = datetime.fromisoformat(m.group(1) + "+00:00")
    return int(base.timestamp()) * 1_000_000_000 + int(m.group(2))


def _stamped(text: str) -> list[tuple[int, str, str]]:
    """(time in ns, the time as printed, the line) for each line of -t output."""
    out = []
    for line in text.splitlines():
        m = STAMP.match(line)
        assert m is not None, f"a line without an RFC 3339 time in front: {line!r}"
        stamp = line.split(" ", 1)[0]
        out.append((_ns(stamp), stamp, m.group(3)))
    return out


def _logs(agent: Any, *args: str) -> subprocess.CompletedProcess[str]:
    res = agent.cli("logs", *args)
    assert res.returncode == 0, res.stderr
    return res


def test_timestamps_since_until_tail_and_stderr_apart(net: Any) -> None:
    script = "echo one; sleep 1.2; echo two >&2; sleep 1.2; echo three; sleep 600"
    net.ok("run", "-d", "--name", "talk", "--", "sh", "-c", script)
    eventually(lambda: "three" in net.ok("logs", "talk"), timeout=15)

    plain = _logs(net, "talk")
    assert plain.stdout == "one\nthree\n"  # stderr to stderr, as docker logs
    assert plain.stderr == "two\n"

    res = _logs(net, "-t", "talk")
    out, err = _stamped(res.stdout), _stamped(res.stderr)
    assert [w for _, _, w in out] == ["one", "three"] and [w for _, _, w in err] == ["two"]
    (t1, s1, _), (t3, s3, _) = out
    ((t2, s2, _),) = err
    assert t1 < t2 < t3  # in the order written, with the sleeps between
    assert t2 - t1 > 1_000_000_000 and t3 - t2 > 1_000_000_000
    assert abs(t1 / 1e9 - time.time()) < 60

    def words(*args: str) -> list[str]:
        r = _logs(net, *args, "talk")
        return [*r.stdout.split(), "|", *r.stderr.split()]

    # RFC 3339 as -t printed it: inclusive to the nanosecond, as Docker's
    assert words("--since", s2) == ["three", "|", "two"]
    assert words("--until", s2) == ["one", "|", "two"]
    assert words("--since", s2, "--until", s2) == ["|", "two"]
    before = f"{(t2 - 1) // 10**9}.{(t2 - 1) % 10**9:09d}"  # Unix seconds
    after = f"{(t3 - 1) // 10**9}.{(t3 - 1) % 10**9:09d}"
    assert words("--since", before, "--until", after) == ["|", "two"]
    assert words("--since", "1h") == ["one", "three", "|", "two"]  # a duration before now
    assert words("--until", "1h") == ["|"]
    assert words("--since", "2026-01-01") == ["one", "three", "|", "two"]  # a date

    # --tail with -t: the same lines and times as the whole log's end
    tail = _logs(net, "--tail", "1", "-t", "talk")
    assert tail.stdout == f"{s3} three\n" and tail.stderr == ""
    tail = _logs(net, "-n", "2", "-t", "talk")
    assert (tail.stdout, tail.stderr) == (f"{s3} three\n", f"{s2} two\n")
    assert s1 not in tail.stdout

    # bad input: the flag, the accepted forms, exit 2 as for other bad flags
    for flag, value in (("--since", "yesterday"), ("--until", "2026-13-45")):
        bad = net.cli("logs", flag, value, "talk")
        assert bad.returncode == 2, bad
        assert f"invalid {flag} '{value}'" in bad.stderr
        assert "RFC 3339" in bad.stderr and "10m" in bad.stderr and "Unix seconds" in bad.stderr
        assert bad.stdout == ""
    # the API says the same to other clients, before any output
    status, body = net.api("GET", "/api/containers/talk/logs?since=yesterday")
    assert status == 400 and "invalid since 'yesterday'" in str(body), body
    status, _ = net.api("GET", f"/api/containers/talk/logs?since=0&until={s2}")
    assert status == 200


def test_run_in_the_foreground_keeps_stderr_apart(net: Any) -> None:
    res = net.cli("run", "--rm", "--", "sh", "-c", "echo out; echo err >&2; echo more; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\nmore\n", "err\n")


def test_restarts_append_to_the_same_log_in_order(net: Any) -> None:
    net.ok("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "--",
           "sh", "-c", "echo run; echo oops >&2; exit 1")  # fmt: skip
    eventually(lambda: inspect(net, "flaky")["state"]["restart_count"] == 2
               and inspect(net, "flaky")["state"]["status"] == "exited", timeout=20)  # fmt: skip
    res = _logs(net, "-t", "flaky")
    out, err = _stamped(res.stdout), _stamped(res.stderr)
    assert [w for _, _, w in out] == ["run"] * 3 and [w for _, _, w in err] == ["oops"] * 3
    starts = [t for t, _, _ in out]
    assert starts == sorted(starts) and len(set(starts)) == 3


def test_partial_lines_and_bytes_come_back_as_written(net: Any) -> None:
    script = r"printf 'abc'; sleep 0.6; printf 'def\nbin:\377\376\000\n'; printf 'no newline'"
    net.ok("run", "-d", "--name", "bytes", "--", "sh", "-c", script)
    eventually(lambda: inspect(net, "bytes")["state"]["status"] == "exited")
    raw = subprocess.run([*COVE, "logs", "bytes"], env=net.env, capture_output=True, check=True)
    assert raw.stdout == b"abcdef\nbin:\xff\xfe\x00\nno newline"
    stamped = subprocess.run([*COVE, "logs", "-t", "bytes"], env=net.env, capture_output=True,
                             check=True).stdout.decode(errors="replace").splitlines()  # fmt: skip
    # one time per line: the first part's ("abc", before the sleep)
    assert len(stamped) == 3 and stamped[0].endswith(" abcdef"), stamped
    times = [_ns(line.split(" ", 1)[0]) for line in stamped]
    assert times[0] < times[1] - 500_000_000


def test_follow_with_timestamps_ends_with_the_container(net: Any) -> None:
    net.ok("run", "-d", "--name", "count", "--", "sh", "-c",
           "sleep 1; for i in 1 2 3 4; do echo n$i; sleep 0.3; done")  # fmt: skip
    res = net.cli("logs", "-f", "-t", "count", timeout=30)
    assert res.returncode == 0, res.stderr
    lines = _stamped(res.stdout)
    assert [w for _, _, w in lines] == ["n1", "n2", "n3", "n4"]
    times = [t for t, _, _ in lines]
    assert times == sorted(times) and times[-1] - times[0] > 600_000_000
    # -f --until: it stops at the last line up to that time, running or not
    net.ok("run", "-d", "--name", "ticker", "--", "sh", "-c",
           "while true; do echo tick; sleep 0.2; done")  # fmt: skip
    eventually(lambda: net.ok("logs", "ticker").count("tick") >= 3)
    start = time.monotonic()
    res = net.cli("logs", "-f", "--until=-2s", "ticker", timeout=30)  # 2 s from now
    assert res.returncode == 0 and time.monotonic() - start < 10
    assert res.stdout.count("tick") >= 3


def test_times_survive_agent_and_supervisor_restarts(net: Any) -> None:
    net.ok("run", "-d", "--name", "steady", "--", "sh", "-c",
           "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.1; done")  # fmt: skip
    eventually(lambda: net.ok("logs", "steady").count("line") >= 5)
    follow = subprocess.Popen(
        [*COVE, "logs", "-f", "-t", "steady"],
        env=net.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        early = _stamped(net.ok("logs", "-t", "steady"))
        net.stop()  # the follower's stream ends with the agent
        followed, follow_err = follow.communicate(timeout=20)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    t_down = time.time_ns()
    # the follower says why it stopped, instead of ending as if the log had
    assert follow.returncode == 8 and "agent stopped sending the log" in follow_err
    got = _stamped(followed)
    n = min(len(got), len(early))
    assert n >= 5 and got[:n] == early[:n]  # the same lines, the same times

    # no agent for a while; then the supervisor goes too (an upgrade, say)
    time.sleep(1.5)
    t_kill = time.time_ns()
    sup = int((net.state_dir / "run" / "supervisor.pid").read_text())
    os.kill(sup, signal.SIGKILL)
    time.sleep(1.0)
    net.start()  # a new supervisor adopts the container and reads its pipes again
    eventually(lambda: inspect(net, "steady")["state"]["status"] == "running")
    mark = len(net.ok("logs", "steady").splitlines())
    eventually(lambda: len(net.ok("logs", "steady").splitlines()) > mark + 5)

    later = _stamped(net.ok("logs", "-t", "steady"))
    assert later[: len(early)] == early  # earlier lines keep their times
    words = [w for _, _, w in later]
    assert words == [f"line{i}" for i in range(len(words))]  # nothing lost, in order
    times = [t for t, _, _ in later]
    assert times == sorted(times)
    # written while no agent ran: timed then, by the supervisor (about 0.1 s
    # apart), not all at once when the agent came back
    down = [t for t, _, _ in later if t_down <= t <= t_kill]
    assert len(set(down)) >= 5, down
    assert inspect(net, "steady")["state"]["restart_count"] == 0  # no SIGPIPE, no restart


def test_a_log_from_before_timestamps_still_reads(net: Any) -> None:
    net.ok("run", "-d", "--name", "old", "--", "sh", "-c", "echo new line; sleep 600")
    eventually(lambda: "new line" in net.ok("logs", "old"))
    path = inspect(net, "old")["log_path"]
    # what a container started by an earlier cove left: its bytes as written
    with open(path, "rb") as f:
        records = f.read()
    with open(path, "wb") as f:
        f.write(b"old line 1\nold line 2\n" + records)
    assert net.ok("logs", "old") == "old line 1\nold line 2\nnew line\n"
    stamped = _stamped(net.ok("logs", "-t", "old"))
    assert [s for _, s, _ in stamped[:2]] == ["0001-01-01T00:00:00.000000000Z"] * 2
    assert net.ok("logs", "--since", "1h", "old") == "new line\n"
    assert net.ok("logs", "--tail", "2", "old") == "old line 2\nnew line\n"
