"""The alert rules and the Grafana board name only metrics the code exports; promtool checks and
unit-tests the rules (skipped, saying why, where promtool is missing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
import yaml

from app.observe import EDGE_FAMILIES
from streams.worker.metrics import WORKER_FAMILIES

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
BOARD = ROOT / "infra" / "grafana" / "eventstream.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMTOOL = shutil.which("promtool")
# Names PromQL uses that are not metrics: functions, aggregations, keywords.
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile", "by",
                "without", "on", "ignoring", "group_left", "group_right", "le", "and", "or", "unless", "bool",
                "abs", "absent", "clamp_min", "clamp_max", "topk", "bottomk", "delta", "deriv", "offset"}
# Families every exporter has besides ours: Prometheus' own `up`, and prometheus_client's process metrics.
STANDARD = {"up", "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"}


def exported() -> set[str]:
    """Return every series name the edge and the worker expose (histograms as _bucket, _sum, _count)."""
    names = set(STANDARD)
    for family in (*EDGE_FAMILIES, *WORKER_FAMILIES):
        names |= {family, f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    return names


def metric_names(expr: str) -> set[str]:
    """Return the metric names an expression selects (identifiers outside label matchers and strings)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\"[^\"]*\"", "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - PROMQL_WORDS
    return {n for n in names if not re.fullmatch(r"e\d*", n)}


def rules() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
            for rule in group["rules"]]


def board_queries() -> list[str]:
    board = orjson.loads(BOARD.read_bytes())
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def test_alert_expressions_name_only_exported_metrics() -> None:
    for rule in rules():
        unknown = metric_names(str(rule["expr"])) - exported()
        assert not unknown, f"{rule['alert']} names {unknown}"


def test_every_alert_has_a_summary_and_a_runbook_paragraph() -> None:
    runbook = RUNBOOK.read_text()
    for rule in rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and annotations["summary"]
        anchor = str(annotations["runbook"]).split("#")[1]
        assert f"## {rule['alert']}" in runbook and anchor == str(rule["alert"]).lower()


def test_grafana_board_is_importable_json_whose_queries_name_exported_metrics() -> None:
    board = orjson.loads(BOARD.read_bytes())
    assert board["title"] and board["panels"] and board["__inputs"][0]["pluginId"] == "prometheus"
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    queries = board_queries()
    assert len(queries) >= 20
    for expr in queries:
        unknown = metric_names(expr) - exported()
        assert not unknown, f"{expr!r} names {unknown}"


def test_board_shows_the_figures_an_operator_watches() -> None:
    named = set().union(*(metric_names(q) for q in board_queries()))
    for family in ("eventstream_deliveries_total", "eventstream_delivery_latency_seconds_bucket",
                   "eventstream_streams_active", "eventstream_slow_client_fallbacks_total",
                   "eventstream_pipeline_records_total", "eventstream_worker_lag_records",
                   "eventstream_dlq_records_total", "eventstream_connections_lag_records"):
        assert family in named, family


def test_the_name_check_sees_through_selectors() -> None:
    assert metric_names('sum by (le) (rate(a_bucket{x="y"}[5m])) / on (instance) b > 0.9') == {"a_bucket", "b"}


@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"],
                                  ["check", "config", "prometheus.yml"]], ids=["check-rules", "test-rules", "config"])
def test_promtool_accepts_the_rules_and_their_tests(args: list[str]) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed: `make test` installs Debian's prometheus package (apt-get)")
    done = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
