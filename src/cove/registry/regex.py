"""Users' regular expressions (event filters, prepared-query templates) in
RE2, as Consul's Go regexps: linear time, so no pattern can stall the
agent, and the same syntax Consul accepts."""

from __future__ import annotations

from typing import Any

import re2


def compile_re2(pattern: str) -> Any:
    """The compiled pattern; ``ValueError`` with RE2's reason when bad."""
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        arg = exc.args[0] if exc.args else exc
        raise ValueError(
            arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
        ) from exc
