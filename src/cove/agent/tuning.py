"""Interpreter settings for a long-running agent process.

The agent holds its registry in memory: a store mirror, decoded values and
rendered answers, some 100,000 long-lived objects per 10,000 instances.
CPython's cyclic garbage collector scans all of them in a full collection
with the event loop stalled, and with the default thresholds (700, 10, 10)
it collects the young generation every 700 net container allocations, which
a registration burst or a health render reaches many times a second.

Measured on the registry benchmark (10,000 registrations, 200 health
queries, 20,000 TTL updates; collector pauses logged through
``gc.callbacks`` in the serving process):

- defaults: 390 young, 35 middle and 3 full collections, 274 ms in all,
  the longest pause 96 ms;
- ``gc.freeze()`` after start-up: full pauses at most 47 ms (the modules,
  classes and functions of start-up are no longer scanned);
- and a young threshold of 20,000: 7 young collections (at most 6.5 ms),
  no middle or full one, 34 ms in all.

Not kept: freezing the survivors of every full collection (longest pause
16 ms), because cyclic garbage among frozen objects is never collected: a
connection or task that spanned a collection would leak once it ends.
"""

from __future__ import annotations

import ctypes
import gc
import sys

SWITCH_INTERVAL = 0.0005  # seconds a thread runs before the GIL is offered
GEN0_THRESHOLD = 20_000  # net container allocations between young collections
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1024 * 1024  # bytes from which an allocation gets its own mapping


def tune_interpreter() -> None:
    """Tune this process for a long-running agent; call once, when start-up
    (imports, the store loaded, the servers started) is done.

    Request threads mostly wait on the kernel and the store; with the
    default 5 ms switch interval each return from a syscall could wait that
    long behind a busy watcher thread (measured: attach p50 -0.5 ms).
    Everything start-up made is moved out of the collector's reach (it
    lives as long as the process); young collections run 28 times less
    often, each still short, so middle and full ones become rare too.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


def tune_malloc() -> None:
    """Give large freed blocks back to the system; call once, early.

    glibc raises its mmap threshold each time it frees a mapped block (up to
    32 MiB), so after the first large request body the next ones come from
    the heap, and the heap keeps what it held once they are freed: three
    connections pipelining 8 MiB bodies left the agent at 79 to 102 MB
    after they closed, against 62 MB before. A fixed threshold (which also
    turns the moving one off) maps every block of 1 MiB or more on its
    own, returned when it is freed: back to 64 MB, and a lower peak. Not
    lower: at 256 KiB each rendered health answer of 1,000 instances took
    its own mapping, and the registry benchmark's query p50 rose 9%.
    Other C libraries keep their defaults.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
