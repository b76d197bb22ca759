"""Keep ``bridge cove_guard`` in step with the container links cove wants.

Attaching or detaching a link is a small transaction of its own entries
(``add``, ``remove``); a pass of one container brings that container's
entries in line (``sync_container``); a full pass rebuilds the whole table
when the ports differ from those last applied or, when forced (the periodic
pass, start-up), from those the kernel lists (``sync``). So after a crash
or a hand-made change, missing entries come back and stale ones go. Ports
that are not cove's containers' (CNI attachments) come from the sources
given to ``add_source`` and are added and removed one by one (``add_port``,
``remove``). The caller serialises the calls (the container reconciler's
lock).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cove.datapath.base import NftLister, NftTables
from cove.errors import CoveError
from cove.runtime import guard
from cove.runtime.plan import WantedContainer, WantedLink

log = logging.getLogger(__name__)


def guard_ports(want: Sequence[WantedContainer]) -> dict[str, guard.Port]:
    """The guard entries every wanted link needs, by host-side veth."""
    return {
        link.host_veth: guard.Port.of(
            link.host_veth, w.id, link.mac, [a.ip for a in link.addresses]
        )
        for w in want
        for link in w.links
    }


class PortGuard:
    """``nft`` runs the changes (in-process where possible); ``lister``
    reads the kernel's table back; ``everything`` is every wanted
    container, read from the store when the table must be rebuilt."""

    def __init__(
        self,
        nft: NftTables,
        lister: NftLister,
        everything: Callable[[], Sequence[WantedContainer]],
    ) -> None:
        self._nft = nft
        self._lister = lister
        self._everything = everything
        # Ports as last applied; None until the whole table is in place.
        self._guarded: dict[str, guard.Port] | None = None
        self._sources: list[Callable[[], Iterable[guard.Port]]] = []

    def add_source(self, source: Callable[[], Iterable[guard.Port]]) -> None:
        """Guard ``source()``'s ports too, in every whole-table pass."""
        self._sources.append(source)

    @property
    def ports(self) -> dict[str, guard.Port]:
        return dict(self._guarded or {})

    def sync(self, want: Sequence[WantedContainer], force: bool = False) -> None:
        """Make the whole table match ``want``. Raises ``CoveError``."""
        ports = guard_ports(want)
        for source in self._sources:
            ports.update((p.name, p) for p in source())
        if self._guarded == ports and (not force or self._kernel_ports() == set(ports)):
            return
        self._guarded = None
        self._nft.replace_table(guard.FAMILY, guard.TABLE, guard.table_objects(ports.values()))
        self._guarded = ports

    def sync_container(self, cid: str, want: Sequence[WantedContainer]) -> None:
        """Bring container ``cid``'s entries in line with ``want`` (which
        may hold other containers too)."""
        if self._guarded is None:
            self.sync(self._everything(), force=True)
            return
        mine = {n: p for n, p in guard_ports(want).items() if p.container == cid}
        stale = [p for n, p in self._guarded.items() if p.container == cid and n not in mine]
        cmds = [c for p in stale for c in guard.delete_commands(p)]
        for n, p in mine.items():
            old = self._guarded.get(n)
            if old != p:
                cmds += (guard.delete_commands(old) if old else []) + guard.add_commands(p)
        self._apply(cmds, drop=[p.name for p in stale], add=list(mine.values()))

    def add(self, cid: str, link: WantedLink) -> None:
        """Guard a link about to be made (its entries go first, so its
        first frame is already checked)."""
        if self._guarded is None:
            self.sync(self._everything(), force=True)
            return
        self.add_port(guard_ports([WantedContainer(cid, (link,))])[link.host_veth])

    def add_port(self, p: guard.Port) -> None:
        """Guard one port about to be made. Raises ``CoveError``."""
        if self._guarded is None:
            self.sync(self._everything(), force=True)
            return
        old = self._guarded.get(p.name)
        if old != p:
            cmds = (guard.delete_commands(old) if old else []) + guard.add_commands(p)
            self._apply(cmds, drop=[], add=[p])

    def remove(self, host_veths: Sequence[str]) -> None:
        if not self._guarded:
            return
        gone = [self._guarded[n] for n in host_veths if n in self._guarded]
        cmds = [c for p in gone for c in guard.delete_commands(p)]
        self._apply(cmds, drop=[p.name for p in gone], add=[])

    def forget(self, cid: str) -> None:
        """Remove the entries of a container that is gone."""
        self.remove([n for n, p in (self._guarded or {}).items() if p.container == cid])

    def _kernel_ports(self) -> set[str] | None:
        # The set alone: nft 1.0.6 aborts printing this table as JSON (its
        # rules), which made every check rebuild the table.
        elems = self._lister.list_set(guard.FAMILY, guard.TABLE, "ports")
        return None if elems is None else {e for e in elems if isinstance(e, str)}

    def _apply(
        self, cmds: list[dict[str, Any]], drop: Sequence[str], add: Sequence[guard.Port]
    ) -> None:
        """One small transaction; if the kernel's table was not as recorded
        (someone changed it by hand), the whole table is rebuilt."""
        if not cmds or self._guarded is None:
            return
        try:
            self._nft.transaction(cmds)
        except CoveError as exc:
            log.warning("guard table out of step (%s); rebuilding it", exc.message)
            self._guarded = None
            self.sync(self._everything(), force=True)
            return
        for n in drop:
            self._guarded.pop(n, None)
        for p in add:
            self._guarded[p.name] = p
