"""Opening the store at start-up: an agent started while etcd is down waits.

It says so ("waiting for etcd at ..."), asks again every second or so until
etcd answers, and gives up only on a signal (SIGTERM, SIGINT: a clean exit)
or on what waiting cannot mend: TLS files that are missing or do not match
(``InvalidArgument``, exit 2) and a certificate the cluster refuses
(``TlsRefused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cove.agent.config import AgentConfig
from cove.clock import Clock
from cove.errors import StoreError
from cove.store import Store, local_store, open_store
from cove.store.etcd_transport import TlsRefused

log = logging.getLogger("cove.agent")

PROBE_TIMEOUT = 1.5  # seconds one probe may take: a signal is seen soon after
PAUSE = 1.0  # seconds between probes
REPEAT_LOG = 30.0  # seconds between repeated "waiting" lines


def open_configured(config: AgentConfig, clock: Clock, timeout: float | None = None) -> Store:
    """The store ``config`` names, with its TLS files and timeout."""
    return open_store(
        config.store_url,
        clock,
        ca=config.store_ca,
        cert=config.store_cert,
        key=config.store_key,
        timeout=config.store_timeout if timeout is None else timeout,
    )


async def wait_for_store(config: AgentConfig, clock: Clock, stop: asyncio.Event) -> bool:
    """Return True once the store answers, False when ``stop`` is set
    first. Raises ``InvalidArgument`` for a bad URL or TLS file and
    ``TlsRefused`` when the cluster refuses this agent's certificate."""
    probe = open_configured(config, clock, min(PROBE_TIMEOUT, config.store_timeout))
    try:
        if local_store(probe) is not None:
            return True
        said = 0.0
        waited = False
        while not stop.is_set():
            try:
                await asyncio.to_thread(lambda: probe.revision)
            except TlsRefused:
                raise
            except StoreError as exc:
                now = time.monotonic()
                if now - said >= REPEAT_LOG:
                    log.warning(
                        "waiting for %s (%s); retrying until it answers or a signal ends the agent",
                        _store_name(config),
                        exc.message,
                    )
                    said = now
                waited = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PAUSE)
                continue
            if waited:
                log.info("%s answers; starting", _store_name(config))
            return True
        log.info("stopped while waiting for %s", _store_name(config))
        return False
    finally:
        probe.close()


def _store_name(config: AgentConfig) -> str:
    url = config.store_url
    for scheme in ("etcds://", "etcd://"):
        if url.startswith(scheme):
            return f"etcd at {url.removeprefix(scheme)}"
    return f"the store {url}"
