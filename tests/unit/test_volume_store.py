"""The volume store on a temporary directory: a volume appears whole or
not at all, names follow Docker's rule, rm is refused while in use."""

from __future__ import annotations

from pathlib import Path

import pytest

from cove.clock import ManualClock
from cove.errors import Conflict, InvalidArgument, NotFound
from cove.runtime.volumes import ANONYMOUS, VolumeStore


def _store(tmp_path: Path) -> VolumeStore:
    return VolumeStore(tmp_path / "volumes", ManualClock(1_700_000_000.0))


def test_create_is_idempotent_and_keeps_the_data(tmp_path: Path) -> None:
    store = _store(tmp_path)
    vol, new = store.create("data", {"k": "v"})
    assert new and vol.mountpoint == tmp_path / "volumes" / "data" / "_data"
    assert vol.mountpoint.is_dir() and vol.created == 1_700_000_000.0
    (vol.mountpoint / "f").write_text("x")
    again, new = store.create("data")
    assert not new and again.labels == {"k": "v"} and (again.mountpoint / "f").exists()
    anon, _ = store.create()
    assert len(anon.name) == 64
    assert [v.name for v in store.all()] == sorted(["data", anon.name])


def test_leftovers_of_a_crash_are_no_volume(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create("a")
    (tmp_path / "volumes" / ".tmp-dead" / "_data").mkdir(parents=True)
    (tmp_path / "volumes" / "half").mkdir()  # no _data, no meta: not a volume
    assert [v.name for v in store.all()] == ["a"]
    with pytest.raises(NotFound, match="no such volume half"):
        store.get("half")
    store.create("b")
    assert not (tmp_path / "volumes" / ".tmp-dead").exists()


@pytest.mark.parametrize("name", ["", "-x", "a/b", "..", "a b", "x" * 256])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    store = _store(tmp_path)
    with pytest.raises(InvalidArgument, match="invalid volume name"):
        store.path(name)
    if name:
        with pytest.raises(InvalidArgument):
            store.create(name)
    assert store.all() == []


def test_remove_is_refused_while_in_use_and_prune_keeps_those(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create("used")
    store.create("free")
    anon = store.create(labels={ANONYMOUS: ""})[0].name

    def users(n: str) -> list[str]:
        return ["web", "db"] if n == "used" else []

    with pytest.raises(Conflict, match="in use by container web, db") as err:
        store.remove("used", users)
    assert err.value.details == {"volume": "used"}
    assert store.get("used").mountpoint.is_dir()
    with pytest.raises(NotFound):
        store.remove("nosuch", users)
    assert store.remove("nosuch", users, force=True) is False
    assert store.prune(users) == [anon]  # anonymous ones only, as Docker 23
    assert store.prune(users, everything=True) == ["free"]
    assert [v.name for v in store.all()] == ["used"]
    assert store.remove("used", lambda _n: []) is True
    assert store.all() == [] and [p.name for p in (tmp_path / "volumes").iterdir()] == []
