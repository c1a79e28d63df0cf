"""A real Prometheus scrapes the real service with the shipped configuration and rules.

The Prometheus binary (Debian's `prometheus` package) runs on loopback with a free port and a
temporary data folder. Its configuration is deploy/prometheus/prometheus.yml with two changes
only: the target is the test's service, and it scrapes and evaluates every second. The test then
asks Prometheus's HTTP API, as Grafana or an operator would, for the series, the recording rules
and the reload-failure alert that the service's own traffic produced.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml
from live_service import Service, exercise
from monitoring_expressions import REPO, RULES
from prometheus_client.parser import text_string_to_metric_families

from harness.server import ServerProcess

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="the prometheus binary is not installed (Debian package `prometheus`; "
        "scripts/system-deps.sh)",
    ),
]
SHIPPED_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
WAIT_S = 60


def test_config(target: str) -> dict:
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(RULES)]
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return config


test_config.__test__ = False  # a helper, not a test


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def api(self, path: str) -> dict:
        body = httpx.get(f"{self.url}/api/v1/{path}", timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def wait_for(self, promql: str, what: str) -> list[dict]:
        """Polls until the query returns something (scrapes and rule runs are every second)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.5)
        pytest.fail(f"{what}: `{promql}` still empty after {WAIT_S} s")


@pytest.fixture(scope="module")
def prometheus(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    folder = tmp_path_factory.mktemp("prometheus")
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(test_config(service.host_port)))
    command = [
        PROMETHEUS,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={folder / 'data'}",
        "--web.listen-address=127.0.0.1:{port}",
    ]
    output = folder / "prometheus.log"
    with ServerProcess(
        command, cwd=folder, output=output, ready="/-/ready", startup_timeout_s=WAIT_S
    ) as server:
        yield Prometheus(server.url)


def _sample_count(service: Service) -> float:
    """The service's own count of /sample requests answered 200, before the test's traffic."""
    key = ("vae_http_requests_total", ("POST", "/sample", "200"))
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name,
                (labels.get("method"), labels.get("route"), labels.get("status")),
            ) == key:
                return sample.value
    return 0.0


def test_prometheus_scrapes_the_service_and_sees_its_requests(prometheus, service) -> None:
    prometheus.wait_for('up{job="mnist-vae"} == 1', "the service as a healthy target")
    before = _sample_count(service)
    exercise(service, samples=5)
    [series] = prometheus.wait_for(
        f'vae_http_requests_total{{route="/sample", status="200"}} >= {before + 5}',
        "the five /sample requests",
    )
    assert series["metric"]["method"] == "POST" and series["metric"]["job"] == "mnist-vae"
    assert series["metric"]["instance"] == service.host_port
    # The other series the dashboard draws are there too, with the labels it groups by.
    ops = {r["metric"]["op"] for r in prometheus.query('vae_queue_depth{job="mnist-vae"}')}
    assert ops >= {"decode", "reconstruct"}
    [info] = prometheus.query('vae_model_info{job="mnist-vae"}')
    assert info["metric"]["checkpoint"] == "mnist-vae.pt" and info["metric"]["backend"]
    assert prometheus.query('vae_batch_size_count{op="decode"} > 0')


def test_the_shipped_rules_load_and_evaluate_without_errors(prometheus, service) -> None:
    exercise(service, samples=2)
    # A recording rule over rate() needs two scrapes after the traffic: wait for its result.
    prometheus.wait_for(
        'job_route_status:vae_http_requests:rate5m{route="/sample", status="200"} > 0',
        "the per-route request rate recorded by rules.yml",
    )
    prometheus.wait_for(
        'job_op:vae_batch_size:mean_rate5m{op="decode"} >= 1', "the recorded mean batch size"
    )
    groups = prometheus.api("rules")["groups"]
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in shipped)
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] in ("ok", "unknown"), (rule["name"], rule.get("lastError"))
            assert not rule.get("lastError"), (rule["name"], rule["lastError"])


def test_a_refused_reload_fires_the_reload_alert(prometheus, service) -> None:
    """The service's own 409 from /admin/reload reaches the alert through the real labels."""
    exercise(service, samples=1)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        alerts = prometheus.api("alerts")["alerts"]
        fired = [a for a in alerts if a["labels"]["alertname"] == "VaeModelReloadFailed"]
        if fired and fired[0]["state"] == "firing":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"VaeModelReloadFailed did not fire; alerts: {alerts}")
    assert fired[0]["labels"]["instance"] == service.host_port
    # Nothing else is wrong with this service: no other alert is even pending.
    others = {a["labels"]["alertname"] for a in alerts} - {"VaeModelReloadFailed"}
    assert not others, others
