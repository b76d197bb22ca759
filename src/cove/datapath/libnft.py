"""nft JSON batches through libnftables in-process (ctypes), for the hot path.

A VIP update is a handful of commands; through ``nft -j -f -`` most of its
cost is starting the program (~20 ms of ~25 ms), which the 100 ms budget
from a health change to the rules in place cannot afford at p99. This runs
the same JSON through the same library inside the agent (~5 ms). The
netlink socket belongs to the network namespace of the thread that creates
the object. Same interface as ``cove.datapath.nftables.Nft``; ``open_nft``
falls back to it when the library is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cove.datapath.nftables import Nft, _check_name, replace_commands
from cove.errors import DatapathClosed, DatapathRefused, Unavailable

log = logging.getLogger(__name__)

_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON: also makes input parse as JSON (nft 1.0.x)


class LibNft:
    """Runs nft JSON batches in-process; thread-safe (one lock)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise Unavailable(f"libnftables is not installed ({name})") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise Unavailable("libnftables could not create a context")
        lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib = lib
        self._ctx: int | None = ctx
        self._lock = threading.Lock()

    def transaction(self, commands: Sequence[Mapping[str, Any]]) -> None:
        """Run ``commands`` as one atomic batch. Raises ``DatapathError``."""
        if not commands:
            return
        payload = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
        with self._lock:
            if self._ctx is None:
                raise DatapathClosed("the nftables context is closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, payload.encode())
            if rc != 0:
                err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(
                    errors="replace"
                )
                lines = [ln for ln in err.strip().splitlines() if ln.strip()]
                raise DatapathRefused(
                    "nftables rejected the change: " + (lines[0] if lines else f"rc {rc}"),
                    stderr=err.strip()[:2000],
                )

    def replace_table(self, family: str, name: str, objects: Sequence[Mapping[str, Any]]) -> None:
        """Atomically replace one cove table (as ``Nft.replace_table``)."""
        self.transaction(replace_commands(family, name, objects))

    def delete_table(self, family: str, name: str) -> None:
        _check_name(name)
        table = {"family": family, "name": name}
        self.transaction([{"add": {"table": table}}, {"delete": {"table": table}}])

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


def open_nft() -> LibNft | Nft:
    """The in-process binding when libnftables is there, else the nft program."""
    try:
        return LibNft()
    except Unavailable as exc:
        log.warning("%s; VIP updates go through the nft program (slower)", exc.message)
        return Nft()
