"""CNI network configuration lists: one ``NN-cove-<network>.conflist`` per
cove network, in a runtime's configuration directory.

``NN`` is the network's label ``cni.priority`` (two digits, default 50).
containerd's CRI reads only the lexicographically first file of its
directory: give the network its pods should join a lower number than any
other file there (``cove network create --label cni.priority=10 pods``).

Only files cove wrote (their plugin's ``type`` is ``cove-cni``) are ever
replaced or removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cove.model import Network

log = logging.getLogger(__name__)

PLUGIN = "cove-cni"
DEFAULT_VERSION = "1.0.0"
DEFAULT_PRIORITY = "50"
PRIORITY_LABEL = "cni.priority"
_PRIORITY = re.compile(r"^[0-9]{2}$")
_OURS = re.compile(r"^[0-9]{2}-cove-.+\.conflist$")
CAPABILITIES = {
    "portMappings": True,
    "ips": True,
    "mac": True,
    "aliases": True,
    "io.kubernetes.cri.pod-annotations": True,
}


def from_api(data: dict[str, Any]) -> Network:
    """A network as ``GET /api/networks`` shows it (``created`` in RFC
    3339, which the stored record's reader does not take; a conflist
    does not need it)."""
    return Network.from_json({k: v for k, v in data.items() if k != "created"})


def file_name(network: Network) -> str:
    prio = network.labels.get(PRIORITY_LABEL, DEFAULT_PRIORITY)
    if not _PRIORITY.match(prio):
        prio = DEFAULT_PRIORITY
    return f"{prio}-cove-{network.name}.conflist"


def conflist(network: Network, socket: Path, version: str = DEFAULT_VERSION) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": network.name,
        "plugins": [
            {
                "type": PLUGIN,
                "network": network.name,
                "agentSocket": str(socket),
                "capabilities": dict(CAPABILITIES),
            }
        ],
    }


def _is_ours(path: Path) -> bool:
    if not _OURS.match(path.name):
        return False
    try:
        data = json.loads(path.read_text())
        return bool(data["plugins"][0]["type"] == PLUGIN)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def _write(path: Path, text: str) -> bool:
    """Atomically; False when the file already says ``text``."""
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def sync(
    conf_dir: Path, networks: Iterable[Network], socket: Path, version: str = DEFAULT_VERSION
) -> tuple[list[str], list[str]]:
    """Make ``conf_dir`` hold exactly one conflist per network (and no
    other file of cove's). The names written and removed."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, str] = {}
    for net in networks:
        text = json.dumps(conflist(net, socket, version), indent=2, sort_keys=True) + "\n"
        wanted[file_name(net)] = text
    written = [name for name, text in sorted(wanted.items()) if _write(conf_dir / name, text)]
    removed = []
    for path in sorted(conf_dir.iterdir()):
        if path.name not in wanted and _is_ours(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path.name)
    if written or removed:
        log.info("CNI configuration in %s: wrote %s, removed %s", conf_dir, written, removed)
    return written, removed


def plugin_source() -> str:
    """The plugin, as one file that runs with no cove installed."""
    from cove.cni import plugin

    return Path(plugin.__file__).read_text()


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_plugin(
    bin_dir: Path, python: str = "/usr/bin/python3", compiler: str | None = "auto"
) -> Path:
    """Write ``bin_dir/cove-cni``. The plugin proper is ``cove-cni.py``,
    standard library only, run by ``python -IS`` (isolated, no
    site-packages; one shebang argument, as Linux passes only one). With a
    C compiler (``auto``: ``cc`` if there is one; None: never),
    ``cove-cni`` is the compiled shim (``shim.c``), which answers VERSION
    itself, hands other calls whole to the agent and runs ``cove-cni.py``
    for anything else; without one, ``cove-cni`` is the Python plugin."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = f"#!{python} -IS\n" + plugin_source()
    target = bin_dir / PLUGIN
    if compiler == "auto":
        compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        _replace(target, script.encode(), 0o755)
        return target
    py = bin_dir / f"{PLUGIN}.py"
    _replace(py, script.encode(), 0o755)
    source = Path(__file__).with_name("shim.c")
    out = bin_dir / f".{PLUGIN}.build"
    define = "-DCOVE_CNI_PY=" + json.dumps(str(py.absolute()))
    res = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(out), define, str(source)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        log.warning("cannot build the cove-cni shim (%s); the Python plugin it is", res.stderr)
        _replace(target, script.encode(), 0o755)
        return target
    os.chmod(out, 0o755)
    os.replace(out, target)
    return target
