"""The Prometheus text the agent writes: labels escaped, one header per
metric name, checks as an enum of statuses."""

from __future__ import annotations

from cove.api.metrics import CheckState, Series, check_series, render_samples


def test_series_of_one_name_share_one_header_and_labels_are_escaped() -> None:
    text = render_samples(
        [
            ("cove_networks", "Networks.", 2),
            Series("cove_x_total", "X.", 1, {"container": 'we"b\\1'}, "counter"),
            Series("cove_x_total", "X.", 3, {"container": "db\nx"}, "counter"),
        ]
    )
    assert text.splitlines() == [
        "# HELP cove_networks Networks.",
        "# TYPE cove_networks gauge",
        "cove_networks 2",
        "# HELP cove_x_total X.",
        "# TYPE cove_x_total counter",
        'cove_x_total{container="we\\"b\\\\1"} 1',
        'cove_x_total{container="db\\nx"} 3',
    ]


def test_a_critical_check_is_one_in_the_critical_series_only() -> None:
    series = check_series([CheckState("n1", "web", "web1", "web-ttl", "critical")])
    status = {s.labels["status"]: s.value for s in series if s.name == "cove_check_status"}
    assert status == {"passing": 0, "warning": 0, "critical": 1, "maintenance": 0}
    crit = [s for s in series if s.name == "cove_service_instances_critical"]
    assert [(s.labels, s.value) for s in crit] == [({"service": "web"}, 1)]
