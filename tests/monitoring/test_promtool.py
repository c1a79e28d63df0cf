"""`promtool` accepts the shipped Prometheus configuration and rules, and their unit tests pass.

promtool comes with Debian's `prometheus` package (scripts/system-deps.sh installs it).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from monitoring_expressions import REPO, RULES, rule_groups

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; scripts/system-deps.sh)",
)
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in rule_groups())
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(PROMETHEUS_DIR / "tests" / "rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_prometheus_config_passes_promtool_check() -> None:
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_fails_a_rule_unit_test_that_is_wrong(tmp_path) -> None:
    """The unit tests can fail: the same rules, one expectation flipped."""
    tests = (PROMETHEUS_DIR / "tests" / "rules_test.yml").read_text()
    wrong = tests.replace("value: 0.25", "value: 0.5", 1)
    assert wrong != tests
    (tmp_path / "rules.yml").write_text(RULES.read_text())
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "rules_test.yml").write_text(wrong)
    result = promtool("test", "rules", str(tmp_path / "tests" / "rules_test.yml"))
    assert (
        result.returncode != 0
        and "job:vae_http_overloaded:ratio_rate5m" in result.stdout + result.stderr
    )
