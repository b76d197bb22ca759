"""The agent's own open-file limit.

Every HTTP connection, DNS-over-TCP client, container log and netlink
socket costs a descriptor. Under systemd's default soft limit (1024) a
thousand idle HTTP connections were enough to lock root out of the CLI, so
the agent raises its soft limit to the hard limit at start and logs what it
got. The connection caps (HTTP, DNS) are sized below it, keeping a reserve
for the Unix socket, the store and the kernel work.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_open_files() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %s to %s: %s", soft, target, exc)
            return soft
        log.info("open-file limit raised from %s to %s", soft, target)
        return target
    log.info("open-file limit %s (the hard limit)", soft)
    return soft
