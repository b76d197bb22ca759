"""Plain-text tables and ``--format`` for the CLI.

``--format`` takes ``json``, ``table``, or a Go-template-style text as
Docker has it: ``{{.Name}} {{.State.Status}}``, ``{{json .Labels}}``,
``{{index .Labels "k"}}``, ``table {{.ID}}\\t{{.Name}}``. Only field paths
and a few functions (``json``, ``index``, ``join``, ``upper``, ``lower``,
``len``) are evaluated, over the JSON an object is shown as: nothing is
executed. Field names match JSON keys exactly, else case-insensitively
and ignoring ``_`` (``.State.ExitCode`` finds ``state.exit_code``).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cove.errors import InvalidArgument

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
NO_VALUE = "<no value>"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    for line in table_lines(headers, rows):
        print(line)


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


class Template:
    """A parsed ``--format`` text; ``render(obj)`` gives one output line."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: list[str | list[str]] = []
        pos = 0
        for m in _ACTION.finditer(text):
            self.parts.append(_unescape(text[pos : m.start()]))
            self.parts.append(_words(m.group(1), text))
            pos = m.end()
        tail = text[pos:]
        if "{{" in tail or "}}" in tail:
            raise InvalidArgument(f"invalid format {text!r}: unbalanced '{{{{' and '}}}}'")
        self.parts.append(_unescape(tail))

    def render(self, obj: Any) -> str:
        out = []
        for part in self.parts:
            out.append(part if isinstance(part, str) else _show(_call(part, obj, self.text)))
        return "".join(out)

    def headers(self) -> list[str]:
        """Column names for ``table TEMPLATE``: each action's last field name."""
        names = []
        for part in self.parts:
            if isinstance(part, list):
                path = next((w for w in reversed(part) if w.startswith(".")), ".")
                names.append((path.rsplit(".", 1)[-1] or "VALUE").upper())
        return names


def emit(
    items: Sequence[Mapping[str, Any]],
    fmt: str,
    table: Callable[[Sequence[Mapping[str, Any]]], None],
) -> None:
    """Print ``items`` as ``fmt`` asks: ``table`` (the command's own table),
    ``json`` (a list), ``table TEMPLATE`` (aligned columns), or a template
    (one line per item)."""
    if fmt in ("", "table"):
        table(items)
    elif fmt == "json":
        print(json.dumps(list(items), indent=2))
    elif fmt.startswith("table "):
        tpl = Template(fmt[len("table ") :])
        rows = [tpl.render(i).split("\t") for i in items]
        width = max([len(tpl.headers()), *(len(r) for r in rows)])
        head = tpl.headers() + [""] * (width - len(tpl.headers()))
        print_table(head, [r + [""] * (width - len(r)) for r in rows])
    else:
        tpl = Template(fmt)
        for i in items:
            print(tpl.render(i))


def _unescape(text: str) -> str:
    return text.replace("\\t", "\t").replace("\\n", "\n")


def _words(action: str, text: str) -> list[str]:
    try:
        words = shlex.split(action, posix=False)
    except ValueError:
        raise InvalidArgument(f"invalid format {text!r}: unbalanced quotes") from None
    if not words:
        raise InvalidArgument(f"invalid format {text!r}: an empty {{{{ }}}}")
    return words


_FUNCS = ("json", "index", "join", "upper", "lower", "len", "print")


def _call(words: list[str], obj: Any, text: str) -> Any:
    head, args = words[0], words[1:]
    if head.startswith("."):
        if args:
            raise InvalidArgument(f"invalid format {text!r}: {head} takes no arguments")
        return _path(obj, head, text)
    if head not in _FUNCS:
        raise InvalidArgument(
            f"invalid format {text!r}: unknown function {head!r}"
            f" (fields start with '.'; functions: {', '.join(_FUNCS)})"
        )
    values = [_arg(a, obj, text) for a in args]
    if head == "json":
        return _Raw(json.dumps(values[0] if len(values) == 1 else values))
    if head == "index":
        if len(values) < 2:
            raise InvalidArgument(f"invalid format {text!r}: index needs a value and a key")
        cur = values[0]
        for key in values[1:]:
            cur = _index(cur, key)
        return cur
    if head == "join":
        if len(values) != 2 or not isinstance(values[0], list):
            raise InvalidArgument(f"invalid format {text!r}: join needs a list and a separator")
        return str(values[1]).join(_show(v) for v in values[0])
    if len(values) != 1 and head != "print":
        raise InvalidArgument(f"invalid format {text!r}: {head} takes one argument")
    if head == "upper":
        return _show(values[0]).upper()
    if head == "lower":
        return _show(values[0]).lower()
    if head == "len":
        v = values[0]
        return len(v) if isinstance(v, (list, dict, str)) else 0
    return " ".join(_show(v) for v in values)


def _arg(word: str, obj: Any, text: str) -> Any:
    if word.startswith("."):
        return _path(obj, word, text)
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'`":
        return word[1:-1]
    if word.lstrip("-").isdigit():
        return int(word)
    raise InvalidArgument(f"invalid format {text!r}: {word!r} is neither a field nor a string")


def _path(obj: Any, path: str, text: str) -> Any:
    if path == ".":
        return obj
    cur = obj
    for depth, name in enumerate(path[1:].split(".")):
        if not name:
            raise InvalidArgument(f"invalid format {text!r}: empty field name in {path!r}")
        if not isinstance(cur, Mapping):
            return NO_VALUE if cur is None or depth else None
        key = _key(cur, name)
        if key is None:
            if depth == 0:
                fields = ", ".join(sorted(_title(k) for k in cur))
                raise InvalidArgument(
                    f"invalid format {text!r}: no field {name!r}; fields: {fields}"
                )
            return NO_VALUE
        cur = cur[key]
    return cur


def _index(cur: Any, key: Any) -> Any:
    if isinstance(cur, Mapping):
        return cur.get(str(key), NO_VALUE)
    if isinstance(cur, list) and isinstance(key, int) and -len(cur) <= key < len(cur):
        return cur[key]
    return NO_VALUE


def _norm(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


# Docker's names for fields cove spells otherwise.
_ALIASES = {"config": None, "hostconfig": None, "ipaddress": "ipv4", "globalipv6address": "ipv6"}


def _key(m: Mapping[str, Any], name: str) -> str | None:
    if name in m:
        return name
    want = _norm(name)
    for k in m:
        if _norm(k) == want:
            return str(k)
    alias = _ALIASES.get(want)
    if alias is not None and alias in m:
        return alias
    return None


def _title(key: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in key.split("_"))


class _Raw(str):
    """Text already formatted (``json``)."""


def _show(v: Any) -> str:
    """A value as Go's text/template prints it."""
    if isinstance(v, _Raw):
        return str(v)
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{k}:{_show(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(_show(x) for x in v) + "]"
    return str(v)
