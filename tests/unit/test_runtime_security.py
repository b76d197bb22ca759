"""Capabilities as ``cove run`` names them, the seccomp deny list per
capability set, what the launcher keeps of a stored spec, and which of the
agent's paths containers never see. No root needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cove.agent.config import AgentConfig
from cove.agent.private import private_paths
from cove.errors import InvalidArgument
from cove.runtime.launch import LaunchSpec
from cove.runtime.security import (
    DEFAULT_CAPS,
    cap_mask,
    compile_seccomp,
    normalize_cap,
    refused_syscalls,
    resolve_caps,
)
from cove.runtime.spec import Container, RunSpec


def test_docker_default_set_is_the_kernel_mask_docker_shows() -> None:
    # `docker run --rm alpine grep CapEff /proc/self/status` prints this
    assert cap_mask(DEFAULT_CAPS) == 0x00000000A80425FB


@pytest.mark.parametrize("text", ["NET_ADMIN", "net_admin", "CAP_NET_ADMIN", "cap_Net_Admin"])
def test_capability_names_with_or_without_prefix_in_any_case(text: str) -> None:
    assert normalize_cap(text) == "NET_ADMIN"


def test_unknown_capability_says_how_to_name_one() -> None:
    with pytest.raises(InvalidArgument) as err:
        normalize_cap("NET_FLY")
    assert "unknown capability 'NET_FLY'" in err.value.message
    assert "CAP_NET_ADMIN or NET_ADMIN" in err.value.message
    assert "SYS_PTRACE" in err.value.message  # the names it knows


def test_add_and_drop_as_docker_resolves_them() -> None:
    assert resolve_caps([], []) == DEFAULT_CAPS
    assert resolve_caps(["NET_ADMIN"], ["NET_RAW"]) == (DEFAULT_CAPS | {"NET_ADMIN"}) - {"NET_RAW"}
    assert resolve_caps(["CHOWN"], ["ALL"]) == {"CHOWN"}
    everything = resolve_caps(["ALL"], ["SYS_ADMIN"])
    assert "SYS_MODULE" in everything and "SYS_ADMIN" not in everything
    # an add wins over a drop of the same capability
    assert "KILL" in resolve_caps(["KILL"], ["KILL"])


def test_run_request_stores_normalized_names_and_refuses_bad_ones() -> None:
    spec = RunSpec.from_json(
        {"command": ["true"], "cap_add": ["net_admin", "CAP_NET_ADMIN"], "cap_drop": ["all"]}
    )
    assert spec.cap_add == ("NET_ADMIN",) and spec.cap_drop == ("ALL",) and spec.seccomp
    with pytest.raises(InvalidArgument):
        RunSpec.from_json({"command": ["true"], "cap_drop": ["CAP_NOPE"]})
    assert not RunSpec.from_json(
        {"command": ["true"], "security_opt": ["seccomp=unconfined"]}
    ).seccomp
    with pytest.raises(InvalidArgument, match="seccomp=unconfined"):
        RunSpec.from_json({"command": ["true"], "security_opt": ["seccomp=/tmp/p.json"]})


def test_container_round_trip_and_old_records_get_the_defaults() -> None:
    c = Container(id="x", name="x", argv=("true",), hostname="x", cap_add=("NET_ADMIN",),
                  seccomp=False)  # fmt: skip
    back = Container.from_json(c.to_json())
    assert back == c and "NET_ADMIN" in back.capabilities
    old = c.to_json()
    for key in ("cap_add", "cap_drop", "seccomp"):
        del old[key]
    restored = Container.from_json(old)
    assert restored.capabilities == DEFAULT_CAPS and restored.seccomp


def test_launch_spec_round_trip_and_a_spec_stored_before_confinement() -> None:
    spec = LaunchSpec(
        id="x", name="x", argv=("true",), env={}, hostname="x", netns="/n", etc_dir="/e",
        log_path="/l", caps=frozenset({"CHOWN"}), seccomp=False, masked=("/var/lib/cove",),
    )  # fmt: skip
    assert LaunchSpec.from_json(spec.to_json()) == spec
    old = spec.to_json()
    for key in ("caps", "seccomp", "masked"):
        del old[key]
    # a supervisor restarting a container recorded by an older cove confines it
    restored = LaunchSpec.from_json(old)
    assert restored.caps == DEFAULT_CAPS and restored.seccomp


def test_seccomp_deny_list_follows_the_capabilities() -> None:
    default = refused_syscalls(DEFAULT_CAPS)
    for name in ("kexec_load", "init_module", "bpf", "perf_event_open", "keyctl", "mount",
                 "umount2", "pivot_root", "unshare", "setns", "open_by_handle_at", "ptrace",
                 "reboot", "swapon", "userfaultfd"):  # fmt: skip
        assert name in default, name
    admin = refused_syscalls(DEFAULT_CAPS | {"SYS_ADMIN"})
    assert "mount" not in admin and "unshare" not in admin
    assert "keyctl" in admin and "init_module" in admin
    assert "ptrace" not in refused_syscalls(DEFAULT_CAPS | {"SYS_PTRACE"})


def test_seccomp_program_compiles_to_classic_bpf() -> None:
    program = compile_seccomp(DEFAULT_CAPS)
    assert program and len(program) % 8 == 0  # struct sock_filter is 8 bytes
    # a different deny list is a different program
    assert compile_seccomp(DEFAULT_CAPS | {"SYS_ADMIN"}) != program


def test_private_paths_default_layout() -> None:
    cfg = AgentConfig(state_dir=Path("/var/lib/cove"), socket=Path("/run/cove/agent.sock"))
    assert private_paths(cfg) == (
        Path("/var/lib/cove"),
        Path("/var/lib/cove/run"),
        Path("/run/cove"),
    )


def test_private_paths_never_cover_a_shared_directory() -> None:
    # a socket or database straight in /tmp or /run: only the file is covered
    cfg = AgentConfig(
        state_dir=Path("/srv/cove"), socket=Path("/tmp/cove.sock"), store="sqlite:/run/cove.db"
    )
    paths = private_paths(cfg, extra=[Path("/etc/cove/tls.key")])
    assert paths == (
        Path("/srv/cove"),
        Path("/srv/cove/run"),
        Path("/tmp/cove.sock"),
        Path("/run/cove.db"),
        Path("/etc/cove/tls.key"),
    )
