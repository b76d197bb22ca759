"""Consul's ``?filter`` expressions (go-bexpr), the common subset, pure.

Supported: ``==``, ``!=``, ``in``, ``not in``, ``contains``, ``not contains``,
``is empty``, ``is not empty``, ``matches``, ``not matches``, ``and``, ``or``,
``not`` and parentheses; selectors are dotted paths (``Service.Meta.env``,
``Node.Meta["rack"]``); values are "double", `back` quoted or bare words.
``compile_filter`` raises ``InvalidArgument`` for anything else, as Consul
answers a bad filter with 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from cove.errors import InvalidArgument

Predicate = Callable[[Any], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<op>==|!=|\(|\)|\[|\])
      | (?P<word>[A-Za-z0-9_.\-/:*@]+)
    )""",
    re.VERBOSE,
)

_MISSING = object()


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise InvalidArgument(
                f"Failed to create boolean expression evaluator: bad filter "
                f"near {text[pos : pos + 20]!r}"
            )
        pos = m.end()
        if m.group("str") is not None:
            out.append(("value", bytes(m.group("str")[1:-1], "utf-8").decode("unicode_escape")))
        elif m.group("raw") is not None:
            out.append(("value", m.group("raw")[1:-1]))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            out.append(("word", m.group("word")))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self, n: int = 0) -> tuple[str, str] | None:
        j = self.i + n
        return self.toks[j] if j < len(self.toks) else None

    def word_is(self, *words: str) -> bool:
        for n, w in enumerate(words):
            tok = self.peek(n)
            if tok is None or tok[0] != "word" or tok[1].lower() != w:
                return False
        return True

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _error("unexpected end of filter")
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        pred = self.or_()
        if self.peek() is not None:
            raise _error(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def or_(self) -> Predicate:
        left = self.and_()
        while self.word_is("or"):
            self.i += 1
            right = self.and_()
            left = _or(left, right)
        return left

    def and_(self) -> Predicate:
        left = self.not_()
        while self.word_is("and"):
            self.i += 1
            right = self.not_()
            left = _and(left, right)
        return left

    def not_(self) -> Predicate:
        if self.word_is("not"):
            self.i += 1
            inner = self.not_()
            return lambda obj: not inner(obj)
        return self.primary()

    def primary(self) -> Predicate:
        if self.peek() == ("op", "("):
            self.i += 1
            inner = self.or_()
            if self.take() != ("op", ")"):
                raise _error("missing )")
            return inner
        # value in/not in selector
        if self.word_is_value() and (self._kw_at(1, "in") or self._kw_at(1, "not", "in")):
            value = self.take()[1]
            negate = self.word_is("not")
            self.i += 2 if negate else 1
            path = self.selector()
            return _negate(negate, lambda obj: _contains(_resolve(obj, path), value))
        path = self.selector()
        if self.word_is("is", "empty"):
            self.i += 2
            return lambda obj: _empty(_resolve(obj, path))
        if self.word_is("is", "not", "empty"):
            self.i += 3
            return lambda obj: not _empty(_resolve(obj, path))
        negate = False
        if self.word_is("not"):
            negate = True
            self.i += 1
        tok = self.take()
        op = tok[1].lower()
        value = self.value()
        if op == "==" and not negate:
            return lambda obj: _equal(_resolve(obj, path), value)
        if op == "!=" and not negate:
            return lambda obj: not _equal(_resolve(obj, path), value)
        if op == "contains":
            return _negate(negate, lambda obj: _contains(_resolve(obj, path), value))
        if op == "matches":
            try:
                rx = re.compile(value)
            except re.error as exc:
                raise _error(f"bad regular expression {value!r}") from exc
            return _negate(negate, lambda obj: _matches(_resolve(obj, path), rx))
        raise _error(f"unknown operator {tok[1]!r}")

    def _kw_at(self, n: int, *words: str) -> bool:
        for k, w in enumerate(words):
            tok = self.peek(n + k)
            if tok is None or tok[0] != "word" or tok[1].lower() != w:
                return False
        return True

    def word_is_value(self) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] in ("value", "word")

    def value(self) -> str:
        kind, text = self.take()
        if kind == "op":
            raise _error(f"expected a value, got {text!r}")
        return text

    def selector(self) -> list[str]:
        kind, text = self.take()
        if kind != "word":
            raise _error(f"expected a selector, got {text!r}")
        path = [p for p in text.split(".") if p]
        while self.peek() == ("op", "["):
            self.i += 1
            path.append(self.value())
            if self.take() != ("op", "]"):
                raise _error("missing ]")
        return path


def compile_filter(text: str) -> Predicate:
    """A predicate over one JSON object (a Consul answer's list item)."""
    return _Parser(text).parse()


def apply_filter(text: str | None, data: Any) -> Any:
    """Filter a list, or the values of a map (as /v1/agent/services)."""
    if not text:
        return data
    pred = compile_filter(text)
    if isinstance(data, Mapping):
        return {k: v for k, v in data.items() if pred(v)}
    if isinstance(data, list):
        return [x for x in data if pred(x)]
    return data


def _error(msg: str) -> InvalidArgument:
    return InvalidArgument(f"Failed to create boolean expression evaluator: {msg}")


def _and(a: Predicate, b: Predicate) -> Predicate:
    return lambda obj: a(obj) and b(obj)


def _or(a: Predicate, b: Predicate) -> Predicate:
    return lambda obj: a(obj) or b(obj)


def _negate(negate: bool, pred: Predicate) -> Predicate:
    return (lambda obj: not pred(obj)) if negate else pred


def _resolve(obj: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(obj, Mapping):
            if part in obj:
                obj = obj[part]
                continue
            lower = {str(k).lower(): v for k, v in obj.items()}
            obj = lower.get(part.lower(), _MISSING)
            if obj is _MISSING:
                return _MISSING
        else:
            return _MISSING
    return obj


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _equal(v: Any, want: str) -> bool:
    if v is _MISSING or isinstance(v, list | Mapping):
        return False
    return _scalar(v) == want


def _contains(v: Any, want: str) -> bool:
    if isinstance(v, str):
        return want in v
    if isinstance(v, list):
        return any(_scalar(x) == want for x in v)
    if isinstance(v, Mapping):
        return want in v
    return False


def _empty(v: Any) -> bool:
    return v is _MISSING or v is None or (isinstance(v, str | list | Mapping) and len(v) == 0)


def _matches(v: Any, rx: re.Pattern[str]) -> bool:
    if v is _MISSING or isinstance(v, list | Mapping) or v is None:
        return False
    return rx.search(_scalar(v)) is not None
