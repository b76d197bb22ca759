"""TTL updates from many concurrent clients share the API's group commit,
and each one a client was answered for is what a client reads back: from
the live server and from the SQLite file after it stops."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import consul

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.sqlite import SqliteStore

CHECKS = 48
ROUNDS = 4
VERBS = ("pass", "warn", "fail")
STATUS = {"pass": "passing", "warn": "warning", "fail": "critical"}


def _verb(i: int, rnd: int) -> str:
    return VERBS[(i + rnd) % 3]


def test_concurrent_ttl_updates_are_grouped_and_read_back(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = SqliteStore(path, SystemClock())
    with ConsulServer(store, SystemClock(), node_name="n1") as server:
        assert server.state is not None and server.runner is not None
        commits = server.state.commits
        assert commits is not None  # install() hands it to the runner itself
        c = consul.Consul(host="127.0.0.1", port=server.port)
        for i in range(CHECKS):
            check = consul.Check.ttl("1h")
            assert c.agent.service.register(f"web{i % 4}", service_id=f"w{i}", check=check)
        ids = {f"w{i}": f"service:w{i}" for i in range(CHECKS)}
        assert set(c.agent.checks()) == set(ids.values())

        def update(job: tuple[int, int]) -> bool:
            i, rnd = job
            client = consul.Consul(host="127.0.0.1", port=server.port)
            verb = _verb(i, rnd)
            check_id = ids[f"w{i}"]
            note = f"round {rnd} of {i}"
            if verb == "pass":
                return bool(client.agent.check.ttl_pass(check_id, notes=note))
            if verb == "warn":
                return bool(client.agent.check.ttl_warn(check_id, notes=note))
            return bool(client.agent.check.ttl_fail(check_id, notes=note))

        calls, groups = commits.calls, commits.groups
        with ThreadPoolExecutor(16) as pool:
            for rnd in range(ROUNDS):
                assert all(pool.map(update, [(i, rnd) for i in range(CHECKS)]))
        # Every update was a write through the group commit, and some shared one.
        assert commits.calls - calls == CHECKS * ROUNDS
        assert commits.groups - groups < CHECKS * ROUNDS

        last = ROUNDS - 1
        seen = {ch["CheckID"]: ch for ch in c.agent.checks().values()}
        for i in range(CHECKS):
            got = seen[ids[f"w{i}"]]
            assert got["Status"] == STATUS[_verb(i, last)]
            assert got["Output"] == f"round {last} of {i}"
        for name in ("web0", "web1", "web2", "web3"):
            _, checks = c.health.checks(name)
            for ch in checks:
                i = int(ch["ServiceID"][1:])
                assert ch["Status"] == STATUS[_verb(i, last)]

        # ?passing follows each update (answers are cached per revision).
        def passing_ids() -> set[str]:
            return {
                e["Service"]["ID"]
                for name in ("web0", "web1", "web2", "web3")
                for e in c.health.service(name, passing=True)[1]
            }

        want = {f"w{i}" for i in range(CHECKS) if _verb(i, last) == "pass"}
        assert passing_ids() == want
        assert passing_ids() == want
        moved = next(i for i in range(CHECKS) if _verb(i, last) == "fail" and i != 0)
        assert c.agent.check.ttl_pass(ids[f"w{moved}"], notes=f"round {last} of {moved}")
        assert passing_ids() == want | {f"w{moved}"}
        assert c.agent.check.ttl_fail(ids[f"w{moved}"], notes=f"round {last} of {moved}")
        assert passing_ids() == want

        # An unknown check still fails alone (py-consul reads the 404 as False).
        assert not c.agent.check.ttl_pass("no-such-check")
        assert c.agent.check.ttl_pass(ids["w0"], notes="after")
    store.close()

    # Answered means committed: the file holds the last status of each.
    again = SqliteStore(path, SystemClock())
    try:
        server2 = ConsulServer(again, SystemClock(), node_name="n1", run_checks=False)
        with server2:
            c2 = consul.Consul(host="127.0.0.1", port=server2.port)
            for name in ("web0", "web1", "web2", "web3"):
                _, checks = c2.health.checks(name)
                for ch in checks:
                    i = int(ch["ServiceID"][1:])
                    want = ("passing", "after") if i == 0 else None
                    want = want or (STATUS[_verb(i, last)], f"round {last} of {i}")
                    assert (ch["Status"], ch["Output"]) == want
    finally:
        again.close()
