"""Pure registry logic: filters, durations, check status bookkeeping, the
gRPC wire format, blocking-query bookkeeping."""

from __future__ import annotations

import asyncio

import pytest

from cove.errors import InvalidArgument
from cove.registry import grpc_health
from cove.registry.blocking import Interests, blocking_read, key_prefixes, parse_wait
from cove.registry.filter import apply_filter, compile_filter
from cove.registry.probes import Tracker, cut
from cove.registry.queries import Answer
from cove.registry.types import GrpcProbe, Status, format_duration, parse_duration
from cove.store.base import Event, EventType, KeyValue

ENTRY = {
    "Service": {"ID": "web-1", "Tags": ["v1", "blue"], "Meta": {"env": "prod"}, "Port": 80},
    "Node": {"Node": "n1", "Meta": {"rack": "r1"}},
    "Checks": [],
}


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ('Service.ID == "web-1"', True),
        ("Service.ID == web-2", False),
        ("Service.ID != web-2", True),
        ("v1 in Service.Tags", True),
        ('"green" not in Service.Tags', True),
        ("Service.Tags contains blue", True),
        ("Service.Tags not contains blue", False),
        ("Service.Meta.env == prod and Node.Meta.rack == r1", True),
        ('Node.Meta["rack"] == r2 or Service.Port == 80', True),
        ("not (Service.Port == 80)", False),
        ("Checks is empty", True),
        ("Service.Meta is not empty", True),
        ("Service.Meta.missing is empty", True),
        ('Service.ID matches "^web-[0-9]+$"', True),
        ("Service.ID not matches `^db`", True),
        ("service.id == web-1", True),  # Consul's selectors ignore case
    ],
)
def test_filter(expr: str, want: bool) -> None:
    assert compile_filter(expr)(ENTRY) is want


@pytest.mark.parametrize("expr", ["Service.ID ==", "(a == b", "Service.ID ~ x", "a == b c"])
def test_bad_filter(expr: str) -> None:
    with pytest.raises(InvalidArgument):
        compile_filter(expr)


def test_filter_map_values() -> None:
    data = {"a": {"Tags": ["x"]}, "b": {"Tags": []}}
    assert apply_filter("x in Tags", data) == {"a": {"Tags": ["x"]}}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("1m30s", 90), ("250ms", 0.25), ("1h", 3600), ("0", 0), (5_000_000_000, 5)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "soon", "1x", "s", True, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(text, "x")


def test_format_duration() -> None:
    assert [format_duration(s) for s in (10, 90, 0.5, 3600)] == ["10s", "1m30s", "500ms", "1h0m0s"]


def test_tracker_counts_like_consul() -> None:
    tr = Tracker(Status.CRITICAL, success_before_passing=2, failures_before_critical=3)
    assert tr.observe(Status.PASSING) is Status.CRITICAL
    assert tr.observe(Status.PASSING) is Status.PASSING
    assert tr.observe(Status.CRITICAL) is Status.PASSING
    assert tr.observe(Status.CRITICAL) is Status.PASSING
    assert tr.observe(Status.PASSING) is Status.PASSING  # a success resets failures
    assert [tr.observe(Status.CRITICAL) for _ in range(3)][-1] is Status.CRITICAL
    zero = Tracker(Status.CRITICAL)
    assert zero.observe(Status.WARNING) is Status.WARNING


def test_output_cut_keeps_utf8_valid() -> None:
    out = cut("é" * 3000)
    assert len(out.encode()) <= 4096 and out.encode().decode() == out


def test_grpc_wire_format() -> None:
    msg = grpc_health.encode_request("app")
    assert msg == b"\x00\x00\x00\x00\x05\x0a\x03app"
    assert grpc_health.encode_request("") == b"\x00\x00\x00\x00\x00"
    assert grpc_health.decode_status(b"\x00\x00\x00\x00\x02\x08\x01") == 1
    assert grpc_health.decode_status(b"\x00\x00\x00\x00\x00") == 0  # UNKNOWN is not sent
    assert grpc_health.decode_status(b"") is None
    assert grpc_health.hpack_int(10, 5) == b"\x0a"
    assert grpc_health.hpack_int(1337, 5) == b"\x1f\x9a\x0a"  # RFC 7541 C.1.2
    frame = grpc_health.frame(grpc_health.DATA, 1, 1, b"ab")
    assert frame == b"\x00\x00\x02\x00\x01\x00\x00\x00\x01ab"


def test_wait_limits() -> None:
    assert parse_wait(None) == 300
    assert parse_wait("1h") == 600
    assert parse_wait("30") == 30
    with pytest.raises(InvalidArgument):
        parse_wait("later")


def test_key_prefixes() -> None:
    assert key_prefixes("registry/svc/web/n1/w1") == [
        "registry/svc/web/n1/w1", "registry/", "registry/svc/", "registry/svc/web/",
        "registry/svc/web/n1/",
    ]  # fmt: skip
    assert "registry/kv/fo" in key_prefixes("registry/kv/foo")


def _event(key: str, rev: int, kind: EventType = EventType.PUT) -> Event:
    return Event(kind, KeyValue(key, b"", rev, rev, 1))


def test_interests_wake_only_matching_prefixes() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        interests = Interests(asyncio.get_running_loop())
        web = asyncio.create_task(interests.wait(["registry/svc/web/"], 5))
        db = asyncio.create_task(interests.wait(["registry/svc/db/"], 0.3))
        await asyncio.sleep(0)
        interests.on_events([_event("registry/svc/web/n1/w1", 7, EventType.DELETE)])
        return await web, await db, interests.changed_since(["registry/svc/web/"])

    woke_web, woke_db, rev = asyncio.run(scenario())
    assert (woke_web, woke_db, rev) == (True, False, 7)


def test_a_reclaimed_blocking_read_answers_early_with_the_current_index() -> None:
    async def scenario() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        interests = Interests(loop)
        reclaimed: asyncio.Future[None] = loop.create_future()

        async def read() -> Answer:
            return Answer(data=["v"], index=42, revision=42, prefixes=("registry/kv/x",))

        loop.call_later(0.05, reclaimed.set_result, None)
        start = loop.time()
        answer = await blocking_read(interests, read, 42, 10, reclaimed=reclaimed)
        return answer.index, loop.time() - start

    index, took = asyncio.run(scenario())
    assert index == 42 and took < 5


def test_decode_accepts_go_and_snake_case_spellings() -> None:
    from cove.registry.decode import service_from_json
    from cove.registry.types import CheckKind

    go_style = {
        "ID": "w1", "Name": "web", "Port": 80, "Tags": None, "Meta": None,
        "Check": {"CheckID": "", "HTTP": "http://127.0.0.1:1/", "Interval": "10s",
                  "TTL": "", "Timeout": "", "DeregisterCriticalServiceAfter": ""},
    }  # fmt: skip
    inst, [(check, status)] = service_from_json(go_style, "n1")
    assert (inst.id, check.kind, check.id, status) == (
        "w1",
        CheckKind.HTTP,
        "service:w1",
        "critical",
    )
    snake = {"name": "db", "check": {"grpc": "h:1", "interval": "500ms", "tls_skip_verify": True}}
    _, [(check, _)] = service_from_json(snake, "n1")
    assert (check.interval, check.spec) == (1.0, GrpcProbe("h:1", tls_skip_verify=True))
    two = {"Name": "x", "Checks": [{"TTL": "5s"}, {"TTL": "6s", "Status": "passing"}]}
    _, checks = service_from_json(two, "n1")
    assert [(c.id, s) for c, s in checks] == [
        ("service:x:1", "critical"),
        ("service:x:2", "passing"),
    ]
