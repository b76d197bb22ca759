"""A container's log file (records as the supervisor writes them, read back
as ``cove logs`` shows them) and the times ``--since``/``--until`` take."""

from __future__ import annotations

import io
import json
import os
import random
import selectors
import time
from datetime import datetime
from pathlib import Path

import pytest

from cove.errors import InvalidArgument
from cove.runtime.logfile import (
    ZERO,
    LogCursor,
    LogQuery,
    Stream,
    decode,
    encode,
    frame,
    tail_offset,
)
from cove.runtime.logpipe import LogPipes
from cove.timefmt import parse_go_duration_ns, parse_time_ns, rfc3339_nano

S = 1_000_000_000
T0 = 1796569445 * S  # 2026-12-06T15:04:05Z


def _read_all(data: bytes, query: LogQuery, size: int = 7) -> list[tuple[Stream, bytes]]:
    cursor = LogCursor(io.BytesIO(data), query)
    cursor.start()
    out = []
    while (frames := cursor.read(size)) is not None:  # small reads: lines cut anywhere
        out.extend(frames)
    out.extend(cursor.rest())
    merged: list[tuple[Stream, bytes]] = []
    for stream, chunk in out:
        if merged and merged[-1][0] is stream:
            merged[-1] = (stream, merged[-1][1] + chunk)
        else:
            merged.append((stream, chunk))
    return merged


def _text(frames: list[tuple[Stream, bytes]], stream: Stream | None = None) -> bytes:
    return b"".join(d for s, d in frames if stream is None or s is stream)


def test_rfc3339_nano_is_fixed_width_utc() -> None:
    assert rfc3339_nano(T0) == "2026-12-06T15:04:05.000000000Z"
    assert rfc3339_nano(T0 + 1) == "2026-12-06T15:04:05.000000001Z"
    assert rfc3339_nano(T0 + 123_456_789) == "2026-12-06T15:04:05.123456789Z"


def test_go_durations() -> None:
    assert parse_go_duration_ns("10m") == 600 * S
    assert parse_go_duration_ns("1h30m") == 5400 * S
    assert parse_go_duration_ns("1.5h") == 5400 * S
    assert parse_go_duration_ns("300ms") == 300_000_000
    assert parse_go_duration_ns("2h45m10.5s") == (2 * 3600 + 45 * 60 + 10) * S + S // 2
    assert parse_go_duration_ns("-1m") == -60 * S
    assert parse_go_duration_ns("0") == 0
    for bad in ("", "10", "1d", "m", "1h 30m", "yesterday", "1.2.3s"):
        assert parse_go_duration_ns(bad) is None, bad


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", T0 - 600 * S),
        ("1h30m", T0 - 5400 * S),
        ("0s", T0),
        ("1796569445", T0),
        ("1796569445.5", T0 + S // 2),
        ("1796569445.000000001", T0 + 1),
        ("2026-12-06T15:04:05Z", T0),
        ("2026-12-06T15:04:05.123456789Z", T0 + 123_456_789),
        ("2026-12-06T16:04:05.5+01:00", T0 + S // 2),
        ("2026-12-06T15:04Z", T0 - 5 * S),
        ("2026-12-06Z", T0 - (15 * 3600 + 4 * 60 + 5) * S),
    ],
)
def test_parse_time_ns_takes_what_docker_takes(text: str, expected: int) -> None:
    assert parse_time_ns(text, T0, "--since") == expected


def test_a_time_without_a_zone_is_local_time() -> None:
    local = datetime(2026, 12, 6, 15, 4, 5).astimezone()
    assert parse_time_ns("2026-12-06T15:04:05", T0) == int(local.timestamp()) * S
    midnight = local.replace(hour=0, minute=0, second=0)
    assert parse_time_ns("2026-12-06", T0) == int(midnight.timestamp()) * S


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "1h 30m", "now", "12:00", "-5"])
def test_a_bad_time_names_the_flag_and_the_forms(bad: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_time_ns(bad, T0, "--since")
    msg = exc.value.message
    assert f"invalid --since {bad!r}" in msg
    for form in ("RFC 3339", "Unix seconds", "10m", "1h30m"):
        assert form in msg


def test_records_keep_lines_streams_times_and_bytes() -> None:
    data = b"one\ntw" + "ö".encode()[:1]  # a line, then a part cut inside a character
    out = encode(Stream.STDERR, data, T0)
    lines = out.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert lines[0] == b'{"log":"one\\n","stream":"stderr","time":"2026-12-06T15:04:05.000000000Z"}'
    first, second = decode(lines[0]), decode(lines[1])
    assert first is not None and second is not None
    assert (first.stream, first.data, first.time) == (Stream.STDERR, b"one\n", rfc3339_nano(T0))
    assert second.data == b"tw\xc3"  # kept byte for byte
    binary = bytes(range(256))
    recs = [decode(line) for line in encode(Stream.STDOUT, binary, T0).splitlines()]
    assert len(recs) == 2  # the newline in it ends the first
    assert b"".join(r.data for r in recs if r is not None) == binary


def test_lines_from_before_records_read_as_stdout_at_the_zero_time() -> None:
    old = b"old one\nold two\n"
    new = encode(Stream.STDOUT, b"new\n", T0) + encode(Stream.STDERR, b"err\n", T0 + 1)
    frames = _read_all(old + new, LogQuery(timestamps=True))
    assert _text(frames, Stream.STDOUT) == (
        f"{ZERO} old one\n{ZERO} old two\n{rfc3339_nano(T0)} new\n".encode()
    )
    assert _text(frames, Stream.STDERR) == f"{rfc3339_nano(T0 + 1)} err\n".encode()
    # --since leaves them out, --until keeps them (Docker's zero time)
    since = _read_all(old + new, LogQuery(since=rfc3339_nano(1)))
    assert _text(since) == b"new\nerr\n"
    until = _read_all(old + new, LogQuery(until=rfc3339_nano(T0)))
    assert _text(until) == b"old one\nold two\nnew\n"
    # an old file that ends without a newline keeps its last line
    assert _text(_read_all(b"a\nb", LogQuery())) == b"a\nb"


def test_parts_of_a_line_are_joined_under_the_time_of_the_first() -> None:
    log = (
        encode(Stream.STDOUT, b"abc", T0)
        + encode(Stream.STDERR, b"warn\n", T0 + 1)
        + encode(Stream.STDOUT, b"def\nnext\n", T0 + 2)
    )
    frames = _read_all(log, LogQuery(timestamps=True))
    t = [rfc3339_nano(T0 + i) for i in range(3)]
    assert _text(frames, Stream.STDOUT) == f"{t[0]} abcdef\n{t[2]} next\n".encode()
    assert _text(frames, Stream.STDERR) == f"{t[1]} warn\n".encode()
    assert _text(_read_all(log, LogQuery())) == b"abcwarn\ndef\nnext\n"


def test_since_and_until_are_inclusive_to_the_nanosecond() -> None:
    log = b"".join(encode(Stream.STDOUT, f"{i}\n".encode(), T0 + i) for i in range(5))
    t = [rfc3339_nano(T0 + i) for i in range(5)]
    assert _text(_read_all(log, LogQuery(since=t[2]))) == b"2\n3\n4\n"
    assert _text(_read_all(log, LogQuery(until=t[2]))) == b"0\n1\n2\n"
    assert _text(_read_all(log, LogQuery(since=t[1], until=t[3]))) == b"1\n2\n3\n"
    assert _text(_read_all(log, LogQuery(since=t[4], until=t[3]))) == b""


def test_tail_counts_lines_not_records() -> None:
    log = (
        b"raw old\n"
        + encode(Stream.STDOUT, b"1\n2\n", T0)
        + encode(Stream.STDOUT, b"thr", T0 + 1)
        + encode(Stream.STDERR, b"e\n", T0 + 2)
        + encode(Stream.STDOUT, b"ee\n4", T0 + 3)
    )
    got = {n: _text(_read_all(log, LogQuery(tail=n))) for n in range(8)}
    assert got[0] == b""
    assert got[1] == b"4"  # an unfinished last line counts
    # "thr" + "ee" is one stdout line: never cut; the stderr line between comes along
    assert got[2] == got[3] == b"thre\nee\n4"
    assert got[4] == b"2\nthre\nee\n4"
    assert got[5] == b"1\n2\nthre\nee\n4"
    assert got[6] == got[7] == b"raw old\n1\n2\nthre\nee\n4" == log_text(log)
    assert tail_offset(io.BytesIO(b""), 3) == 0
    simple = b"".join(encode(Stream.STDOUT, f"{i}\n".encode(), T0) for i in range(100))
    assert _text(_read_all(simple, LogQuery(tail=3))) == b"97\n98\n99\n"


def log_text(log: bytes) -> bytes:
    return _text(_read_all(log, LogQuery()))


def test_a_record_cut_short_is_skipped_and_one_being_written_waits() -> None:
    whole = encode(Stream.STDOUT, b"before\n", T0)
    torn = encode(Stream.STDOUT, b"lost line\n", T0 + 1)[:20]
    after = encode(Stream.STDOUT, b"after\n", T0 + 2)
    assert _text(_read_all(whole + torn + b"\n" + after, LogQuery())) == b"before\nafter\n"
    buf = io.BytesIO(whole + after[:10])
    cursor = LogCursor(buf, LogQuery())
    cursor.start()
    assert cursor.read() == [(Stream.STDOUT, b"before\n")]
    assert cursor.read() is None
    buf.seek(0, 2)
    buf.write(after[10:])
    buf.seek(len(whole) + 10)
    assert cursor.read() == [(Stream.STDOUT, b"after\n")]


def test_frames_carry_dockers_multiplexed_header() -> None:
    assert frame(Stream.STDERR, b"hi\n") == b"\x02\x00\x00\x00\x00\x00\x00\x03hi\n"


def test_the_pipes_log_what_a_writer_sends_until_it_goes(tmp_path: Path) -> None:
    sel = selectors.DefaultSelector()
    pipes = LogPipes(sel)
    folder = tmp_path / "c1"
    folder.mkdir()
    log_path = tmp_path / "log"
    log_path.write_bytes(b"from an older supervisor")  # no newline at its end
    out, err = pipes.open("c1", folder, str(log_path))
    try:
        before = time.time_ns()
        os.write(out, b"hello\npart")
        os.write(err, b"oops\n")
        for key, _ in sel.select(1.0):
            pipes.on_readable(key.data[1])
        os.write(out, b"ial\n\xff\n")
    finally:
        os.close(out)
        os.close(err)
    pipes.drain("c1")  # the writers are gone: everything read, the readers closed
    assert len(sel.get_map()) == 0
    frames = _read_all(log_path.read_bytes(), LogQuery())
    assert _text(frames, Stream.STDOUT) == b"from an older supervisor\nhello\npartial\n\xff\n"
    assert _text(frames, Stream.STDERR) == b"oops\n"
    lines = log_path.read_bytes().splitlines()[1:]
    times = [rec.time for rec in map(decode, lines) if rec is not None]
    assert times == sorted(times) and times[0] >= rfc3339_nano(before)


def test_a_huge_line_from_before_records_is_passed_on_not_held() -> None:
    huge = b"x" * (3 << 20)  # no newline at all: an old log of binary output
    log = huge + b"\n" + encode(Stream.STDOUT, b"new\n", T0)
    cursor = LogCursor(io.BytesIO(log), LogQuery())
    cursor.start()
    sizes = []
    while (frames := cursor.read()) is not None:
        sizes.extend(len(d) for _, d in frames)
    assert max(sizes) <= (1 << 20) + 65536 * 2
    assert sum(sizes) == len(huge) + 1 + len(b"new\n")
    assert _text(_read_all(log, LogQuery(tail=1), 65536)) == b"new\n"
    assert _text(_read_all(log, LogQuery(tail=2), 65536)).endswith(b"x\nnew\n")


def test_the_quick_decoding_agrees_with_the_json_parser() -> None:
    rnd = random.Random(7)
    samples = [b"plain\n", b'quote " here\n', b"back\\slash\n", b"a\\n\n", b"x\\", b"\n"]
    samples += [bytes(rnd.choice(b'ab\\"\n\t\xc3\xa9\xff') for _ in range(rnd.randint(1, 12)))
                for _ in range(500)]  # fmt: skip
    for stream in Stream:
        for data in samples:
            for line in encode(stream, data, T0 + 5).splitlines():
                obj = json.loads(line)
                want = (obj["stream"], obj["log"].encode(errors="surrogateescape"), obj["time"])
                rec = decode(line)
                assert rec is not None
                assert (rec.stream.name.lower(), rec.data, rec.time) == want, line


def test_the_quick_encoding_writes_what_the_json_encoder_would() -> None:
    rnd = random.Random(3)
    samples = [b"plain\n", b"a\nb", b"", b"\n\n", "\u00fcn\u2028\n".encode(), b"\x7f\n"]
    samples += [bytes(rnd.choice(b"ab\n\xc3\xa9\x7f\t\"\\") for _ in range(rnd.randint(0, 14)))
                for _ in range(1000)]  # fmt: skip
    for stream in Stream:
        for data in samples:
            slow = b"".join(
                json.dumps(
                    {"log": piece.decode(errors="surrogateescape"), "stream": stream.name.lower(),
                     "time": rfc3339_nano(T0)},
                    ensure_ascii=not _utf8(piece), separators=(",", ":"),
                ).encode() + b"\n"
                for piece in data.splitlines(keepends=True) if piece
            )  # fmt: skip
            assert encode(stream, data, T0) == slow, data


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
