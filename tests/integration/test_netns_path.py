"""A namespace another runtime owns, given by its path, attaches the same
way as one cove made (``create_netns(existing=...)``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from cove.datapath.netns import NetnsDatapath
from cove.errors import DatapathError

pytestmark = pytest.mark.root


def test_foreign_namespace_by_path_attaches_and_survives_delete(
    hostns: str, tmp_path: Path
) -> None:
    other = NetnsDatapath(tmp_path / "other")  # plays the other runtime
    cove = NetnsDatapath(tmp_path / "cove")
    with IPRoute() as ipr:
        ipr.link("add", ifname="cv-pathtest0", kind="bridge")
        ipr.link("set", ifname="cv-pathtest0", state="up")
    try:
        foreign = other.create_netns("x")
        with pytest.raises(DatapathError):
            cove.create_netns("bad", existing=tmp_path)  # not a namespace
        path = cove.create_netns("y", existing=foreign)
        assert os.stat(path).st_ino == os.stat(foreign).st_ino
        addr = ipaddress.ip_interface("10.77.0.2/24")
        cove.attach("y", "cv00000000aa", "eth0", "02:00:00:00:00:aa", 1500, "cv-pathtest0", [addr])
        # The owner sees the link cove attached: one namespace, two names.
        seen = other.observe(["x"]).netns["x"].links["eth0"]
        assert seen.up and seen.addresses == {addr}
        cove.delete_link("cv00000000aa")
        cove.delete_netns("y")
        assert not path.exists()
        assert other.has_netns("x")  # cove removed only its own mount
    finally:
        cove.delete_netns("y")
        other.delete_netns("x")
        cove.close()
        other.close()
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname="cv-pathtest0")
            if found:
                ipr.link("del", index=found[0])
