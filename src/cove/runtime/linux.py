"""Kept for ``runtime/supervisor.py``, which imports these from here: the
system call wrappers live in ``cove.linux`` (the datapath needs them too,
and the datapath imports nothing from ``runtime``)."""

from cove.linux import PR_SET_CHILD_SUBREAPER, prctl

__all__ = ["PR_SET_CHILD_SUBREAPER", "prctl"]
