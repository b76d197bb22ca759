"""The web UI's files: plain HTML, CSS and JavaScript modules, shipped as
package data and served by the agent at ``/ui/`` (``api/ui.py``). There is
no build step: the files here are what the browser runs."""

from __future__ import annotations

from importlib import resources


def assets() -> dict[str, bytes]:
    """Every file of the UI by name (``index.html``, ``app.js``, ...),
    read once when the agent starts."""
    root = resources.files(__name__) / "static"
    return {
        entry.name: entry.read_bytes()
        for entry in root.iterdir()
        if entry.is_file() and not entry.name.startswith(".")
    }
