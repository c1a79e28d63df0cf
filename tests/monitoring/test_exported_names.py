"""Every metric, label and route that the dashboards, rules and autoscaler name, the service has.

The names come from the /metrics of a real running service after traffic of every kind, and the
routes from its OpenAPI document, so these tests follow the service: rename a metric or a route
and the expressions that would go silently empty fail here.
"""

from __future__ import annotations

import re

import pytest
import yaml
from monitoring_expressions import (
    ADAPTER,
    REPO,
    Selector,
    adapter_to_promql,
    dashboard_expressions,
    recorded_names,
    rule_expressions,
    rule_groups,
    selectors,
)

pytestmark = pytest.mark.slow

PROMETHEUS_WRITES = {"up"}  # written by Prometheus for every target it scrapes
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
KUBERNETES_LABELS = {"namespace", "pod"}  # added by the Prometheus Operator's relabelling
OPERATOR_RULE = (
    REPO / "deploy" / "kubernetes" / "components" / "prometheus-operator" / "prometheusrule.yaml"
)


def shipped_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every expression in deploy/."""
    out = list(rule_expressions(rule_groups(), "rules.yml"))
    operator_rule = yaml.safe_load(OPERATOR_RULE.read_text())
    out += rule_expressions(operator_rule["spec"]["groups"], "PrometheusRule")
    out += dashboard_expressions()
    for rule in yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]:
        out.append(("prometheus-adapter seriesQuery", rule["seriesQuery"]))
        out.append(("prometheus-adapter metricsQuery", adapter_to_promql(rule["metricsQuery"])))
    return out


def all_selectors() -> list[Selector]:
    return [s for where, expr in shipped_expressions() for s in selectors(expr, where)]


def test_the_expressions_are_found() -> None:
    """The parser sees the metrics the dashboard promises (so the tests below check something)."""
    dashboard = {s.metric for w, e in dashboard_expressions() for s in selectors(e, w)}
    assert {
        "vae_http_requests_total",
        "vae_http_request_duration_seconds_bucket",
        "vae_batch_size_sum",
        "vae_batch_size_count",
        "vae_queue_depth",
        "vae_model_info",
    } <= dashboard
    assert len(all_selectors()) > 40


def test_every_expression_names_a_metric_the_service_exports(exported) -> None:
    known = exported.names | recorded_names(rule_groups()) | PROMETHEUS_WRITES
    unknown = {(s.where, s.metric) for s in all_selectors() if s.metric not in known}
    assert not unknown, f"not on /metrics nor recorded by rules.yml: {sorted(unknown)}"


def test_the_dashboard_needs_no_recording_rules(exported) -> None:
    """It works on a Prometheus that does not load rules.yml."""
    raw = exported.names | PROMETHEUS_WRITES
    recorded = {
        (s.where, s.metric)
        for where, expr in dashboard_expressions()
        for s in selectors(expr, where)
        if s.metric not in raw
    }
    assert not recorded


def test_every_label_matched_is_a_label_of_that_metric(exported) -> None:
    wrong = set()
    for selector in all_selectors():
        if selector.metric not in exported.names:
            continue  # `up`, recording rules: their labels come from Prometheus or the rules
        allowed = exported.labels[selector.metric] | TARGET_LABELS | KUBERNETES_LABELS
        wrong |= {(selector.where, selector.metric, m[0]) for m in selector.matchers} - {
            (selector.where, selector.metric, label) for label in allowed
        }
    assert not wrong, f"labels the metric does not have: {sorted(wrong)}"


def _alternatives(regex: str) -> list[str]:
    return regex.split("|") if "(" not in regex else [regex]


def test_route_and_op_values_are_the_service_s(service, exported) -> None:
    """`route="/admin/reload"` must be a route template the service has, `op="decode"` one of
    its batched operations: a wrong value matches nothing, and an alert on it never fires."""
    routes = service.routes | {"unmatched"}
    ops = exported.label_values["vae_queue_depth"]["op"]
    statuses = {str(code) for code in range(100, 600)}
    known = {"route": routes, "op": ops, "status": statuses}
    wrong = []
    for selector in all_selectors():
        for label, op, value in selector.matchers:
            if label not in known:
                continue
            values = known[label]
            if op in ("=", "!="):
                ok = value in values
            else:
                ok = all(any(re.fullmatch(alt, v) for v in values) for alt in _alternatives(value))
            if not ok:
                wrong.append((selector.where, f"{label}{op}{value!r}"))
    assert not wrong, f"match no route, op or status of the service: {wrong}"
