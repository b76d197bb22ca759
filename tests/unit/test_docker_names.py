"""Docker-style names and IDs (cove.naming), and what DNS answers for
names that are not DNS labels."""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest

from cove.clock import ManualClock
from cove.dns.answer import AnswerConfig
from cove.dns.cache import ResponseCache
from cove.dns.responder import ForwardJob, Responder
from cove.dns.services import EndpointServices
from cove.dns.testing import put_endpoint, put_network
from cove.dns.view import DnsView
from cove.errors import Conflict, InvalidArgument, NotFound
from cove.model import Network
from cove.naming import (
    check_name,
    dns_names,
    dns_safe,
    full_id,
    generate_name,
    is_full_id,
    resolve,
)
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.store.memory import MemoryStore


@pytest.mark.parametrize(
    "name", ["my_app", "MyApp", "web.1", "my_net", "project_service_1", "project_default", "a"]
)
def test_docker_names_are_accepted(name: str) -> None:
    assert check_name(name, "container") == name


@pytest.mark.parametrize("name", ["_app", ".x", "-x", "a b", "a/b", "é", "", "x" * 129])
def test_other_names_are_refused_naming_the_rule(name: str) -> None:
    with pytest.raises(InvalidArgument, match="container name"):
        check_name(name, "container")


def test_dns_forms() -> None:
    assert dns_names("web") == ("web",)
    assert dns_names("MyApp") == ("myapp",)
    assert dns_names("my_app") == ("my_app", "my-app")
    assert dns_names("web.1") == ("web.1", "web-1")
    assert dns_safe("Project_Service_1") == "project-service-1"
    assert len(dns_safe("a" * 100)) == 63


A = "a1" + "0" * 62
B = "a2" + "0" * 62
C = "b" * 64


def test_resolve_by_name_full_id_and_unique_prefix() -> None:
    items = [("web", A), ("db", B), ("cache", C)]
    assert resolve("web", items, "container") == "web"
    assert resolve(C, items, "container") == "cache"
    assert resolve("a2", items, "container") == "db"
    assert resolve("B", items, "container") == "cache"  # IDs are hex: any case
    with pytest.raises(NotFound, match="container nope not found"):
        resolve("nope", items, "container")
    with pytest.raises(NotFound):
        resolve("c", items, "container")


def test_an_ambiguous_prefix_lists_the_matches() -> None:
    items = [("web", A), ("db", B)]
    with pytest.raises(Conflict, match=r"ambiguous.*a10000000000 \(web\), a20000000000 \(db\)"):
        resolve("a", items, "container")


def test_a_name_wins_over_an_id_prefix() -> None:
    assert resolve("a1", [("a1", B), ("web", A)], "container") == "a1"


def test_generated_names_are_adjective_surname_and_free() -> None:
    name = generate_name(set())
    adjective, _, surname = name.partition("_")
    assert adjective.isalpha() and surname.isalpha(), name
    check_name(name, "container")
    taken = {generate_name(set(), lambda n: 0)}
    other = generate_name(taken, lambda n: 0)  # the same words: a digit follows
    assert other not in taken and other.startswith(next(iter(taken)))


def test_old_short_ids_become_64_hex_keeping_the_old_as_prefix() -> None:
    assert is_full_id(full_id("0123456789ab"))
    assert full_id("0123456789ab").startswith("0123456789ab")
    assert full_id(A) == A
    assert full_id("id-vnet") == full_id("id-vnet") and is_full_id(full_id("id-vnet"))


def test_networks_get_64_hex_ids_and_are_found_by_prefix() -> None:
    svc = NetworkService(MemoryStore(ManualClock()), ManualClock())
    net, _ = svc.create(NetworkSpec(name="project_default"))
    other, _ = svc.create(NetworkSpec(name="MyNet"))
    assert is_full_id(net.id) and net.bridge == f"cv-{net.id[:12]}"
    assert svc.get(net.id[:6]).name == "project_default"
    assert svc.get(other.id).name == "MyNet"
    svc.remove(net.id[:12])
    assert [n.name for n in svc.list()] == ["MyNet"]


def test_a_network_stored_with_a_short_id_keeps_working() -> None:
    data = {"id": "0123456789ab", "name": "old", "subnets": [], "bridge": "cv-0123456789ab"}
    net = Network.from_json(data)
    assert is_full_id(net.id) and net.id.startswith("0123456789ab")
    assert net.bridge == "cv-0123456789ab"


class World:
    def __init__(self) -> None:
        store = MemoryStore(ManualClock())
        put_network(store, "project_default", "10.89.0.0/24")
        put_network(store, "MyNet", "10.90.0.0/24")
        put_endpoint(store, "project_default", "project_web_1", "10.89.0.2", container_id="c1")
        put_endpoint(store, "project_default", "MyApp", "10.89.0.3", container_id="c2")
        put_endpoint(store, "project_default", "web.1", "10.89.0.4", container_id="c3")
        put_endpoint(store, "MyNet", "db", "10.90.0.5", container_id="c4")
        put_endpoint(store, "MyNet", "web.1", "10.90.0.4", container_id="c3")
        self.view = DnsView()
        self.view.load(store.range("").kvs)
        self.responder = Responder(
            self.view, EndpointServices("n", ()), ResponseCache(), AnswerConfig(), seed=1
        )
        self.responder.rebuild_scopes({"project_default", "MyNet"})

    def ask(self, name: str, src: str, net: str | None = None, rdtype: str = "A") -> list[str]:
        out = self.responder.answer(
            dns.message.make_query(name, rdtype).to_wire(), net, src, tcp=False
        )
        assert out is not None
        if isinstance(out, ForwardJob):
            return ["forward"]
        msg = dns.message.from_wire(out)
        if msg.rcode() != dns.rcode.NOERROR:
            return [dns.rcode.to_text(msg.rcode())]
        return sorted(r.to_text() for rrset in msg.answer for r in rrset)


def test_dns_answers_names_as_given_case_insensitively_and_their_safe_form() -> None:
    w = World()
    src = "10.89.0.4"  # web.1, on both networks
    for q in ("project_web_1", "PROJECT_WEB_1", "project-web-1", "project_web_1.project_default"):
        assert w.ask(q, src, "project_default") == ["10.89.0.2"], q
    for q in ("MyApp", "myapp", "MYAPP.project-default"):
        assert w.ask(q, src, "project_default") == ["10.89.0.3"], q
    assert w.ask("web.1", src, "project_default") == ["10.89.0.4", "10.90.0.4"]
    assert w.ask("web-1.mynet", src, "project_default") == ["10.90.0.4"]
    assert w.ask("db.MyNet", src, "project_default") == ["10.90.0.5"]


def test_host_dns_takes_the_network_as_given_or_safe() -> None:
    w = World()
    assert w.ask("project_web_1.project_default.cove", "127.0.0.1") == ["10.89.0.2"]
    assert w.ask("project-web-1.project-default.cove", "127.0.0.1") == ["10.89.0.2"]
    assert w.ask("db.mynet.cove", "127.0.0.1") == ["10.90.0.5"]
    assert w.ask("nobody.mynet.cove", "127.0.0.1") == ["NXDOMAIN"]


def test_reverse_names_are_dns_safe() -> None:
    w = World()
    assert w.ask("2.0.89.10.in-addr.arpa", "127.0.0.1", rdtype="PTR") == [
        "project-web-1.project-default.cove."
    ]
