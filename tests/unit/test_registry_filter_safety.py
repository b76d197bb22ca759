"""?filter against hostile input: linear-time regexes, and selectors
checked against the answer's shape as go-bexpr checks them."""

from __future__ import annotations

import pytest

from cove.errors import InvalidArgument
from cove.registry import filter_schema as fs
from cove.registry.filter import apply_filter, compile_filter

ENTRY = {
    "Node": {"Node": "n1", "Meta": {"rack": "r1"}},
    "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1"], "Port": 80},
    "Checks": [
        {"CheckID": "serfHealth", "Status": "passing", "ServiceTags": []},
        {"CheckID": "service:web-1", "Status": "critical", "ServiceTags": ["v1"]},
    ],
}


@pytest.mark.timeout(10)
def test_backtracking_pattern_answers_at_once() -> None:
    # Python's re needs about 2^n steps for this; 60 characters would not
    # finish in a lifetime. RE2 answers in linear time.
    pred = compile_filter('Service.ID matches "(a+)+$"', fs.CHECK_SERVICE_NODE)
    hostile = {"Service": {"ID": "a" * 60 + "!"}}
    assert pred(hostile) is False
    assert pred({"Service": {"ID": "x" + "a" * 60}}) is True


@pytest.mark.parametrize(
    "expr",
    [
        "Service.Nmae == web",  # a typo is an error, not "nothing matched"
        "Sevice.ID == web-1",
        "Service.Port.Number == 1",  # below a scalar
        "Service.Tags.x == y",  # below a list of strings
        "Checks.Bogus == passing",
    ],
)
def test_unknown_selector_is_an_error(expr: str) -> None:
    with pytest.raises(InvalidArgument, match="is not valid"):
        compile_filter(expr, fs.CHECK_SERVICE_NODE)


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("Node.Meta.anything is empty", True),  # any key of a map is valid
        ('Node.Meta["rack"] == r1', True),
        ("service.port == 80", True),  # case does not matter, as in Consul
        ("Checks.Status == critical", True),  # any element of a list of records
        ("Checks.Status == warning", False),
        ("v1 in Checks.ServiceTags", True),
        ("Checks.CheckID matches `^serf`", True),
    ],
)
def test_known_selectors(expr: str, want: bool) -> None:
    assert compile_filter(expr, fs.CHECK_SERVICE_NODE)(ENTRY) is want


def test_bad_regex_names_the_problem() -> None:
    with pytest.raises(InvalidArgument, match="bad regular expression '\\(a'"):
        compile_filter('Service.ID matches "(a"', fs.CHECK_SERVICE_NODE)


def test_every_schema_accepts_its_own_fields() -> None:
    assert apply_filter("ServiceTags contains x", [{"ServiceTags": ["x"]}], fs.SERVICE_NODE)
    assert apply_filter('Name == "n"', [{"Name": "n"}], fs.MEMBER)
    assert apply_filter("Tags contains x", {"a": {"Tags": ["x"]}}, fs.AGENT_SERVICE)
    assert apply_filter("Status == passing", [{"Status": "passing"}], fs.HEALTH_CHECK)
    assert apply_filter("Meta.k == v", [{"Meta": {"k": "v"}}], fs.NODE)
