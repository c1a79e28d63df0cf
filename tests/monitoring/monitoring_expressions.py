"""Every PromQL expression the repository ships, and the series selectors inside each.

Rules, the Grafana dashboard, the Prometheus Operator rule and the prometheus-adapter query all
name metrics of the service; these helpers find every such name with a real PromQL parser, so a
renamed metric or label fails a test instead of leaving a silent, empty panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "mnist-vae.json"
ADAPTER = REPO / "deploy" / "kubernetes" / "prometheus-adapter" / "values.yaml"

# Grafana's own variables stand for a duration or a label value inside an expression.
_GRAFANA_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
_GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)\}?")
# prometheus-adapter's Go templates: <<.Series>>, <<.LabelMatchers>>, <<.GroupBy>>.
_ADAPTER_TEMPLATE = re.compile(r"<<\s*\.(\w+)\s*>>")
_MATCH_OPS = {  # str() of promql_parser.MatchOp (the enum is not hashable)
    "MatchOp.Equal": "=",
    "MatchOp.NotEqual": "!=",
    "MatchOp.Re": "=~",
    "MatchOp.NotRe": "!~",
}
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),)?\s*(?P<label>\w+)\s*\)$")


@dataclass(frozen=True)
class Selector:
    """One `metric{label op "value"}` in an expression, and where that expression lives."""

    where: str
    metric: str | None
    matchers: tuple[tuple[str, str, str], ...]  # (label, "=", "!=", "=~" or "!~", value)


def selectors(expr: str, where: str) -> list[Selector]:
    found: list[Selector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert not node.matchers.or_matchers, f"{where}: `or` inside a selector"
            matchers = tuple(
                (m.name, _MATCH_OPS[str(m.op)], m.value)
                for m in node.matchers.matchers
                if m.name != "__name__"
            )
            found.append(Selector(where, node.name, matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def grafana_to_promql(expr: str) -> str:
    """The expression with Grafana's variables replaced by values of the right kind."""
    return _GRAFANA_VARIABLE.sub(lambda m: _GRAFANA_DURATIONS.get(m.group(1), "any"), expr)


def adapter_to_promql(template: str) -> str:
    """A prometheus-adapter metricsQuery with its templates filled in as the adapter would."""
    fill = {"Series": "vae_queue_depth", "LabelMatchers": 'namespace="default"', "GroupBy": "pod"}
    return _ADAPTER_TEMPLATE.sub(lambda m: fill[m.group(1)], template)


def rule_groups(path: Path = RULES) -> list[dict]:
    return yaml.safe_load(path.read_text())["groups"]


def rule_expressions(groups: list[dict], origin: str) -> Iterator[tuple[str, str]]:
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            yield f"{origin}: {group['name']}/{name}", rule["expr"]


def recorded_names(groups: list[dict]) -> set[str]:
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def dashboard_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def dashboard_expressions(path: Path = DASHBOARD) -> Iterator[tuple[str, str]]:
    """Each panel target's expression and each query variable's, in PromQL."""
    dashboard = json.loads(path.read_text())
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", grafana_to_promql(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(query.strip())
        assert match, f"variable {variable['name']}: only label_values(...) is understood here"
        assert match["selector"], f"variable {variable['name']}: label_values without a metric"
        yield f"variable {variable['name']!r}", grafana_to_promql(match["selector"])
