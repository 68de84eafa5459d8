"""The Prometheus config, alert rules and alert unit tests, checked by the real promtool.

promtool comes from Debian's `prometheus` package (scripts/install-tools.sh installs it). A missing
promtool is a failure, not a skip: these checks are the only thing standing between a typo in a rule
and an alert that silently never fires. Set $PROMTOOL to use a promtool outside $PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"


def promtool() -> str:
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path:
        pytest.fail(
            "promtool not found on PATH (and $PROMTOOL is not set). Install it with "
            "`bash scripts/install-tools.sh` or `apt-get install prometheus`.",
            pytrace=False,
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [promtool(), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"`{' '.join(cmd[1:])}` exited {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc


def test_prometheus_config_is_valid() -> None:
    proc = run_promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    # the config must pull in the alert rules, or alerts.yml is dead weight
    assert "1 rule files found" in proc.stdout + proc.stderr


def test_alert_rules_are_valid() -> None:
    run_promtool("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))


def test_alert_rule_unit_tests_pass() -> None:
    proc = run_promtool("test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_alert_has_severity_summary_description_runbook_and_a_unit_test() -> None:
    import yaml

    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    required = {
        "WorkerDown", "ConsumerLagGrowing", "EndToEndLatencyP99High", "DeadLetterRateHigh",
        "NoOutputWhileInputArrives", "WorkerBlocked",
    }
    assert required <= alerts.keys()

    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text(encoding="utf-8"))
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    for name, rule in alerts.items():
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        for key in ("summary", "description", "runbook"):
            assert rule.get("annotations", {}).get(key), f"{name} lacks annotation {key}"
        assert name in fired, f"alerts_test.yml never shows {name} firing"


def test_scrape_config_scrapes_the_worker_with_the_expected_job_name() -> None:
    import yaml

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker = jobs["koelectra-worker"]
    targets = [t for sc in worker["static_configs"] for t in sc["targets"]]
    assert targets == ["worker:8000"]
    assert worker.get("metrics_path", "/metrics") == "/metrics"
