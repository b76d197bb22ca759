"""Clean-up of a container run directory: every container, the supervisor
and the namespace files (tests, the demo, uninstall)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from cove.datapath.netns import remove_ns_file
from cove.errors import CoveError
from cove.runtime.client import SupervisorClient
from cove.runtime.state import process_start_time, read_json


def teardown(run_dir: Path, timeout: float = 10.0) -> None:
    """Kill every container of ``run_dir`` and its supervisor, and unmount
    the namespace files (test clean-up, uninstall). Safe to call twice."""
    pidfile = run_dir / "supervisor.pid"
    SupervisorClient(run_dir).shutdown()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(int(pidfile.read_text()), 0)
        except (OSError, ValueError):
            break
        time.sleep(0.05)
    # Containers whose supervisor died first (killed from outside) are
    # orphans now: find them through the supervisor's records.
    records = run_dir / "containers"
    if records.is_dir():
        for folder in records.iterdir():
            data = read_json(folder / "state.json") or {}
            pid, start = int(data.get("pid", 0)), int(data.get("pid_start", 0))
            if pid and start and process_start_time(pid) == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    netns_dir = run_dir / "netns"
    if netns_dir.is_dir():
        for path in netns_dir.iterdir():
            with contextlib.suppress(CoveError):
                remove_ns_file(path)
