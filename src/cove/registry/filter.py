"""Consul's ``?filter`` expressions (go-bexpr), the common subset, pure.

Supported: ``==``, ``!=``, ``in``, ``not in``, ``contains``, ``not contains``,
``is empty``, ``is not empty``, ``matches``, ``not matches``, ``and``, ``or``,
``not`` and parentheses; selectors are dotted paths (``Service.Meta.env``,
``Node.Meta["rack"]``); values are "double", `back` quoted or bare words.
``compile_filter`` raises ``InvalidArgument`` for anything else, as Consul
answers a bad filter with 400, and, given the answer's shape
(``filter_schema``), for a selector that names no field of it.

A selector that passes through a list of records (``Checks.Status``) looks at
every element: the comparison holds when it holds for any of them.

``matches`` runs RE2 (google-re2), the engine of go-bexpr's Go regexps: its
time is linear in the input, so a pattern such as ``(a+)+$`` cannot stall the
event loop the way Python's backtracking ``re`` does (0.74 s on 24 characters).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import re2

from cove.errors import InvalidArgument
from cove.registry.filter_schema import ListOf, MapOf, Scalar, Shape, Struct

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
    def __init__(self, text: str, schema: Shape | None) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.schema = schema

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
            return _negate(negate, lambda obj: _contains(_values(obj, path), value))
        path = self.selector()
        if self.word_is("is", "empty"):
            self.i += 2
            return lambda obj: _empty(_values(obj, path))
        if self.word_is("is", "not", "empty"):
            self.i += 3
            return lambda obj: not _empty(_values(obj, path))
        negate = False
        if self.word_is("not"):
            negate = True
            self.i += 1
        tok = self.take()
        op = tok[1].lower()
        value = self.value()
        if op == "==" and not negate:
            return lambda obj: _equal(_values(obj, path), value)
        if op == "!=" and not negate:
            return lambda obj: not _equal(_values(obj, path), value)
        if op == "contains":
            return _negate(negate, lambda obj: _contains(_values(obj, path), value))
        if op == "matches":
            rx = _regex(value)
            return _negate(negate, lambda obj: _matches(_values(obj, path), rx))
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
        if self.schema is not None:
            _check_selector(path, self.schema)
        return path


def compile_filter(text: str, schema: Shape | None = None) -> Predicate:
    """A predicate over one JSON object (a Consul answer's list item); with
    ``schema``, every selector must name a field of that shape."""
    return _Parser(text, schema).parse()


def apply_filter(text: str | None, data: Any, schema: Shape | None = None) -> Any:
    """Filter a list, or the values of a map (as /v1/agent/services)."""
    if not text:
        return data
    return select(compile_filter(text, schema), data)


def select(pred: Predicate | None, data: Any) -> Any:
    """The items of a list, or the entries of a map, that ``pred`` keeps."""
    if pred is None:
        return data
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


def _check_selector(path: list[str], schema: Shape) -> None:
    shape: Shape = schema
    for part in path:
        while isinstance(shape, ListOf) and not isinstance(shape.item, Scalar):
            shape = shape.item
        if isinstance(shape, Struct):
            found = shape.get(part)
            if found is None:
                raise _error(f'Selector "{".".join(path)}" is not valid')
            shape = found
        elif isinstance(shape, MapOf):
            shape = shape.value
        else:
            raise _error(f'Selector "{".".join(path)}" is not valid')


def _lookup(obj: Mapping[Any, Any], part: str) -> Any:
    if part in obj:
        return obj[part]
    folded = part.lower()
    for key, value in obj.items():
        if str(key).lower() == folded:
            return value
    return _MISSING


def _values(obj: Any, path: list[str]) -> list[Any]:
    """Every value the selector reaches: one for a plain path, one per
    element where the path passes through a list of records."""
    current = [obj]
    for part in path:
        reached: list[Any] = []
        for value in current:
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, Mapping):
                    found = _lookup(item, part)
                    if found is not _MISSING:
                        reached.append(found)
        current = reached
    return current


def _regex(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False  # the 400 names the problem; no stderr noise
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        raise _error(f"bad regular expression {pattern!r}: {_text(exc)}") from exc


def _text(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _equal(values: list[Any], want: str) -> bool:
    return any(not isinstance(v, list | Mapping) and _scalar(v) == want for v in values)


def _contains(values: list[Any], want: str) -> bool:
    for v in values:
        if isinstance(v, str) and want in v:
            return True
        if isinstance(v, list) and any(_scalar(x) == want for x in v):
            return True
        if isinstance(v, Mapping) and want in v:
            return True
    return False


def _empty(values: list[Any]) -> bool:
    return all(v is None or (isinstance(v, str | list | Mapping) and len(v) == 0) for v in values)


def _matches(values: list[Any], rx: Any) -> bool:
    return any(
        v is not None and not isinstance(v, list | Mapping) and rx.search(_scalar(v)) is not None
        for v in values
    )
