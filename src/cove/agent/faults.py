"""Fault injection for tests: ``COVE_TEST_FAULT=POINT=ACTION`` makes the
agent stop (SIGSTOP, until the test sends SIGCONT) or die (SIGKILL, as a
crash would) when a request reaches the named point, e.g.
``run:created=kill`` between the supervisor's create and start of a
container. Read here, at the composition root, and nowhere else; unset, the
hook does nothing."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping

from cove.runtime.service import no_fault

log = logging.getLogger(__name__)

ENV = "COVE_TEST_FAULT"
_ACTIONS = {"stop": signal.SIGSTOP, "kill": signal.SIGKILL}


def fault_hook(environ: Mapping[str, str]) -> Callable[[str], None]:
    spec = environ.get(ENV, "")
    if not spec:
        return no_fault
    point, _, action = spec.partition("=")
    sig = _ACTIONS.get(action)
    if sig is None:
        log.error("ignoring %s=%s: the action must be stop or kill", ENV, spec)
        return no_fault
    log.warning("test fault armed: %s at %s", action, point)

    def hook(reached: str) -> None:
        if reached == point:
            log.warning("test fault: %s at %s", action, point)
            os.kill(os.getpid(), sig)

    return hook
