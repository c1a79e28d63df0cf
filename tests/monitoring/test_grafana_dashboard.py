"""The Grafana dashboard is a well-formed dashboard that imports anywhere.

Its expressions are checked against the service in test_exported_names.py; here: unique panel
ids, a layout inside Grafana's 24 columns, every query on the data source chosen by the
dashboard's own variable (so it imports into any Grafana), and every `$variable` it uses defined.
"""

from __future__ import annotations

import json
import re

from monitoring_expressions import DASHBOARD, dashboard_panels

BUILT_IN = {"__rate_interval", "__interval", "__range"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = list(dashboard_panels(load()))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_query_uses_the_dashboard_s_data_source_variable() -> None:
    dashboard = load()
    [source] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": f"${{{source['name']}}}"}
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"] == expected, panel["title"]


def test_every_variable_used_is_defined() -> None:
    dashboard = load()
    defined = {v["name"] for v in dashboard["templating"]["list"]} | BUILT_IN
    text = json.dumps(dashboard["panels"]) + json.dumps(dashboard["templating"])
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used <= defined, used - defined
    assert {"job", "instance"} <= used
