"""The Grafana dashboard and the alert rules only use metrics the worker actually exports.

METRICS below is the contract between worker/metrics.py and deploy/: a renamed metric must be renamed
here, on the dashboard and in the alerts together. The dashboard's PromQL is also parsed by the real
promtool (wrapped as recording rules), so a syntax error cannot hide in a panel.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.unit.test_prometheus_rules import promtool as find_promtool

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "koelectra-worker.json"
DATASOURCES = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"

# name as exported on /metrics -> type
METRICS = {
    "worker_messages_consumed_total": "counter",
    "worker_results_produced_total": "counter",
    "worker_dead_letters_total": "counter",
    "worker_batch_size_messages": "histogram",
    "worker_batch_size_tokens": "histogram",
    "worker_real_tokens_total": "counter",
    "worker_padded_tokens_total": "counter",
    "worker_padding_efficiency_ratio": "gauge",
    "worker_inference_duration_seconds": "histogram",
    "worker_inference_per_message_seconds": "histogram",
    "worker_end_to_end_latency_seconds": "histogram",
    "worker_batch_wait_seconds": "histogram",
    "worker_predictions_total": "counter",
    "worker_prediction_score": "histogram",
    "worker_consumer_lag_messages": "gauge",
    "worker_in_flight_messages": "gauge",
    "worker_model_info": "info",
    "worker_errors_total": "counter",
    "worker_ready": "gauge",
    "worker_blocked": "gauge",
    "worker_routed_total": "counter",
    "worker_stage_seconds": "histogram",
    "worker_shadow_active": "gauge",
    "worker_shadow_disabled_info": "info",
    "worker_shadow_windows_total": "counter",
    "worker_shadow_records_total": "counter",
    "worker_shadow_compared_total": "counter",
    "worker_shadow_label_flips_total": "counter",
    "worker_shadow_diff_score": "histogram",
    "worker_shadow_category_agreement_total": "counter",
}


def series_names() -> set[str]:
    """Every series name a PromQL expression may select."""
    names = set()
    for name, kind in METRICS.items():
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(name)
    return names


WORKER_NAME = re.compile(r"(?<![A-Za-z0-9_:])worker_[A-Za-z0-9_:]+")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')


def worker_names(expr: str) -> set[str]:
    return set(WORKER_NAME.findall(STRING.sub('""', expr)))


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for panel in all_panels(dashboard):
        for t in panel.get("targets", []):
            out.append((panel["title"], t.get("expr", "")))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            out.append((f"variable {var['name']}", q["query"] if isinstance(q, dict) else q))
    for ann in dashboard.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            out.append((f"annotation {ann['name']}", ann["expr"]))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_every_panel_has_targets_on_the_prometheus_datasource() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "koelectra-worker"
    panels = [p for p in all_panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 12
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        title = panel.get("title")
        assert title, f"panel {panel['id']} has no title"
        assert panel.get("targets"), f"panel {title!r} has no targets"
        assert panel["datasource"]["uid"] == "prometheus", title
        for t in panel["targets"]:
            assert t.get("expr", "").strip(), f"panel {title!r} has a target without expr"
            assert t["datasource"]["uid"] == "prometheus", title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"panel {title!r} repeats a refId"
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"panel {title!r} is wider than the grid"


def test_dashboard_has_the_expected_panels() -> None:
    titles = {p["title"] for p in all_panels(load_dashboard())}
    for title in (
        "Throughput in / out",
        "End-to-end latency",
        "Inference latency",
        "Consumer lag per partition",
        "Batch size (messages)",
        "Batch size (tokens)",
        "Padding efficiency",
        "Sentiment share",
        "Prediction score distribution",
        "Low-confidence share",
        "Dead-letter rate by reason",
        "Errors by kind",
        "In-flight messages",
    ):
        assert title in titles


def test_dashboard_and_alerts_only_use_exported_metrics() -> None:
    allowed = series_names()
    unknown = []
    for where, expr in [*dashboard_exprs(load_dashboard()), *alert_exprs()]:
        unknown += [f"{where}: {name}" for name in sorted(worker_names(expr) - allowed)]
    assert not unknown, "metrics not exported by the worker:\n" + "\n".join(unknown)


def test_alert_unit_tests_only_use_exported_metrics() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    used = {n for t in tests["tests"] for s in t.get("input_series", []) for n in worker_names(s["series"])}
    assert used <= series_names(), sorted(used - series_names())


def test_contract_metrics_are_in_the_workers_registry() -> None:
    """METRICS is not a wish list: every name in it is registered by WorkerMetrics, with its type."""
    from worker.metrics import WorkerMetrics

    suffix = {"counter": "_total", "info": "_info"}
    registered = {f.name + suffix.get(f.type, ""): f.type for f in WorkerMetrics().registry.collect()}
    wrong = {name: (kind, registered.get(name)) for name, kind in METRICS.items() if registered.get(name) != kind}
    assert not wrong, f"(expected, registered) types differ or the metric is missing: {wrong}"


def test_dashboard_shows_every_exported_metric() -> None:
    used = set()
    for _, expr in dashboard_exprs(load_dashboard()):
        used |= worker_names(expr)
    missing = [
        name
        for name, kind in METRICS.items()
        if not ({f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}) & used
    ]
    assert not missing, f"metrics not on the dashboard: {missing}"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Wrap every dashboard expression as a recording rule and let promtool parse it."""
    promtool = find_promtool()
    substitutions = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$instance": ".*"}
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs(load_dashboard())):
        if expr.startswith("label_values("):  # Grafana variable function, not PromQL
            expr = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr).group(1)
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: unsubstituted variable in {expr}"
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard_exprs_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"promtool check rules exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_grafana_provisioning() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    (prometheus,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prometheus["uid"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert [p["options"]["path"] for p in providers if p["type"] == "file"] == ["/var/lib/grafana/dashboards"]
