"""Server TLS for the HTTPS listener, with certificates swapped on reload.

The listener's context is fixed when the server starts, so the certificate
is not loaded into it: its SNI callback (which OpenSSL runs on every
ClientHello, with or without a server name) points each new connection at
the context built by the latest good load. A reload that fails leaves the
previous one serving, and connections already open keep theirs.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cove.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None  # verifies client certificates
    verify_incoming: bool = False  # every client must present one signed by ``ca``


def _readable(path: Path, what: str, flag: str) -> None:
    if not path.exists():
        raise InvalidArgument(f"TLS {what} {path} does not exist: check {flag}")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise InvalidArgument(f"TLS {what} {path} is not a readable file: check {flag}")


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context for ``files``; ``InvalidArgument`` naming the file
    when one is missing, unreadable, not PEM, or the key does not match."""
    _readable(files.cert, "certificate", "--tls-cert")
    _readable(files.key, "key", "--tls-key")
    if files.ca is not None:
        _readable(files.ca, "CA file", "--tls-ca")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise InvalidArgument(
                f"TLS key {files.key} does not match certificate {files.cert}"
            ) from exc
        raise InvalidArgument(
            f"cannot load TLS certificate {files.cert} with key {files.key} "
            f"(expected PEM files): {exc.reason or exc}"
        ) from exc
    except OSError as exc:
        raise InvalidArgument(f"cannot read TLS certificate or key: {exc}") from exc
    if files.ca is not None:
        try:
            ctx.load_verify_locations(cafile=files.ca)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidArgument(f"cannot load TLS CA file {files.ca}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED if files.verify_incoming else ssl.CERT_OPTIONAL
    elif files.verify_incoming:
        raise InvalidArgument("--tls-verify-incoming needs --tls-ca")
    return ctx


class ReloadingTls:
    """The listener's context (``context``) and the certificate it serves,
    replaced by ``reload()``."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._current = server_context(files)
        # Client verification is decided by the context a connection starts
        # with, so the listener's own context carries the same settings.
        self.context = server_context(files)
        self.context.sni_callback = self._choose

    def _choose(self, conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        conn.context = self._current

    def reload(self) -> bool:
        """Load the files again; on failure log why and keep the previous
        certificate. Whether the new one is served."""
        try:
            self._current = server_context(self.files)
        except InvalidArgument as exc:
            log.error("TLS reload failed, still serving the previous certificate: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return True
