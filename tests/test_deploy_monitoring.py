"""deploy/: the Grafana dashboard and the Prometheus rules must only query metrics that exist.

Neither Grafana nor Prometheus runs here, so the files are checked statically: every PromQL
expression is parsed with ``promql-parser`` (the Rust parser Prometheus-compatible databases use),
and every metric and label it selects is looked up in a catalog built from the *running* code:
the default ``prometheus_client`` registry (``onyx_wa.metrics`` plus the process/platform/GC
collectors), the ingress app's private registry and the lag exporter's collector. Renaming a
metric in code, or a typo in a panel, fails here instead of showing an empty panel in production.
"""

from __future__ import annotations

import json
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from typer.main import get_command

import onyx_wa.metrics as worker_metrics
from admin.metrics import AdminMetrics
from ingress.app import IngressMetrics
from onyx_wa.cli import app as cli_app
from ops.lag_exporter import LagCollector

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD_PATH = DEPLOY / "grafana" / "onyx-whatsapp.json"
ALERTS_PATH = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_PATH = DEPLOY / "prometheus" / "prometheus.yml"
MONITORING_COMPOSE_PATH = DEPLOY / "docker-compose.monitoring.yml"
DOCS_PATH = ROOT / "docs" / "observability.md"

DASHBOARD = json.loads(DASHBOARD_PATH.read_text())
ALERTS = yaml.safe_load(ALERTS_PATH.read_text())

# Series Prometheus makes itself for every target (not exposed by any process).
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Functions that only make sense on counters (or the counter parts of a histogram).
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}


# --- the catalog: what the processes really expose ----------------------------------------------


@dataclass
class Series:
    family: str
    type: str
    labels: set[str] = field(default_factory=set)


def _sample_names(name: str, kind: str) -> list[str]:
    """The sample names a family of this type is exposed as (text format 0.0.4)."""
    if kind == "counter":
        return [f"{name}_total", f"{name}_created"]
    if kind == "histogram":
        return [f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created"]
    if kind == "summary":
        return [name, f"{name}_count", f"{name}_sum", f"{name}_created"]
    if kind == "gaugehistogram":
        return [f"{name}_bucket", f"{name}_gcount", f"{name}_gsum"]
    if kind == "info":
        return [f"{name}_info"]
    return [name]


def _add_family(
    catalog: dict[str, Series], name: str, kind: str, labels: set[str], source: str
) -> None:
    for sample in _sample_names(name, kind):
        extra = {"le"} if sample.endswith("_bucket") else set()
        if kind == "summary" and sample == name:
            extra = {"quantile"}
        existing = catalog.get(sample)
        if existing is not None and existing.type != kind:
            raise AssertionError(f"{sample} is defined twice with different types ({source})")
        catalog[sample] = Series(name, kind, labels | extra | TARGET_LABELS)


def _add_registry(catalog: dict[str, Series], registry: CollectorRegistry, source: str) -> None:
    for family in registry.collect():
        labels = {k for s in family.samples for k in s.labels} - {"le", "quantile"}
        _add_family(catalog, family.name, family.type, labels, source)


def _wrappers(namespace: Any) -> list[MetricWrapperBase]:
    return [v for v in vars(namespace).values() if isinstance(v, MetricWrapperBase)]


def _add_wrappers(catalog: dict[str, Series], metrics: list[MetricWrapperBase]) -> None:
    """Label names of labelled metrics that have no child yet (no samples to read them from)."""
    for metric in metrics:
        for family in metric.describe():
            for sample in _sample_names(family.name, family.type):
                catalog[sample].labels |= set(metric._labelnames)


def _fake_lag_report() -> Any:
    partition = types.SimpleNamespace(
        topic="wa.inbound", partition=0, lag=3, lag_seconds=1.5, committed=7, end=10, status=0
    )
    group = types.SimpleNamespace(group="onyx-wa", partitions=[partition], status=0)
    return types.SimpleNamespace(groups=[group])


def build_catalog() -> dict[str, Series]:
    catalog: dict[str, Series] = {}
    # workers: the default registry (onyx_wa.metrics + process/platform/gc collectors)
    _add_registry(catalog, REGISTRY, "default registry")
    _add_wrappers(catalog, _wrappers(worker_metrics))
    # ingress: a private registry per app
    ingress = IngressMetrics()
    _add_registry(catalog, ingress.registry, "ingress")
    _add_wrappers(catalog, _wrappers(ingress))
    # lag exporter: a custom collector; give it a report so every family carries its labels
    lag = LagCollector()
    lag.report = _fake_lag_report()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(lag)
    _add_registry(catalog, registry, "lag exporter")
    # admin: a private registry per app
    admin = AdminMetrics()
    _add_registry(catalog, admin.registry, "admin")
    _add_wrappers(catalog, _wrappers(admin))
    return catalog


CATALOG = build_catalog()


# --- expressions -------------------------------------------------------------------------------


def _dashboard_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in panels:
        found.append(panel)
        found.extend(_dashboard_panels(panel.get("panels") or []))
    return found


PANELS = _dashboard_panels(DASHBOARD["panels"])
DATA_PANELS = [p for p in PANELS if p["type"] != "row"]
ALERT_RULES = [rule for group in ALERTS["groups"] for rule in group["rules"]]


def grafana_to_promql(expr: str) -> str:
    """Substitute Grafana's variables the way Grafana would before sending the query."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\[\$\{?\w+\}?\]", "[5m]", expr)
    return re.sub(r"\$\{?\w+(:\w+)?\}?", ".*", expr)


def dashboard_expressions() -> list[tuple[str, str]]:
    exprs = []
    for panel in DATA_PANELS:
        for target in panel["targets"]:
            exprs.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    return exprs


def all_expressions() -> list[tuple[str, str]]:
    """(where, PromQL ready to parse) for every panel target and alert rule."""
    exprs = [(where, grafana_to_promql(e)) for where, e in dashboard_expressions()]
    exprs += [(f"alert {r['alert']}", r["expr"]) for r in ALERT_RULES]
    return exprs


@dataclass
class Selector:
    name: str | None
    matchers: list[tuple[str, str, str]]


def _selectors(node: Any) -> list[Selector]:
    found: list[Selector] = []

    def visit(n: Any) -> None:
        if isinstance(n, promql_parser.VectorSelector):
            matchers = [(m.name, str(m.op), m.value) for m in n.matchers.matchers]
            for group in n.matchers.or_matchers:
                matchers += [(m.name, str(m.op), m.value) for m in group]
            found.append(Selector(n.name, matchers))

    promql_parser.walk(node, visit)
    return found


def _nodes(node: Any, kind: type) -> list[Any]:
    found: list[Any] = []
    promql_parser.walk(node, lambda n: found.append(n) if isinstance(n, kind) else None)
    return found


def problems(expr: str, catalog: dict[str, Series]) -> list[str]:
    """Everything wrong with one expression against the catalog (empty: fine)."""
    try:
        ast = promql_parser.parse(expr)
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    found: list[str] = []
    selectors = _selectors(ast)
    if not selectors and "vector(" not in expr and "time()" not in expr:
        found.append("selects no metric")
    for sel in selectors:
        if sel.name is None:
            found.append("selector without a metric name")
            continue
        if sel.name in PROMETHEUS_SYNTHETIC:
            continue
        series = catalog.get(sel.name)
        if series is None:
            found.append(f"unknown metric {sel.name}")
            continue
        for label, _, _ in sel.matchers:
            if label != "__name__" and label not in series.labels:
                found.append(f"{sel.name} has no label {label!r} (has {sorted(series.labels)})")
    # grouping labels must exist on some selected series
    known_labels = set().union(
        *(
            catalog[s.name].labels if s.name in catalog else TARGET_LABELS
            for s in selectors
            if s.name
        ),
        set(),
    )
    for agg in _nodes(ast, promql_parser.AggregateExpr):
        if agg.modifier is not None and str(agg.modifier.type).endswith("By"):
            for label in agg.modifier.labels:
                if label not in known_labels:
                    found.append(f"groups by {label!r}, which no selected series has")
    for call in _nodes(ast, promql_parser.Call):
        name = call.func.name
        inner = [s.name for arg in call.args for s in _selectors(arg) if s.name in catalog]
        if name in COUNTER_FUNCTIONS:
            for metric in inner:
                series = catalog[metric]
                counterish = series.type == "counter" or (
                    series.type == "histogram" and not metric.endswith("_created")
                )
                if not counterish:
                    found.append(f"{name}() over {metric}, a {series.type}")
        if name == "histogram_quantile":
            for metric in inner:
                if not metric.endswith("_bucket"):
                    found.append(f"histogram_quantile over {metric}, not a _bucket series")
            if "le" not in known_labels or not re.search(r"by \([^)]*\ble\b", str(call)):
                found.append("histogram_quantile without sum by (le, ...)")
    return found


# --- dashboard ---------------------------------------------------------------------------------


def test_dashboard_is_importable_grafana_json():
    assert DASHBOARD["schemaVersion"] >= 36
    assert DASHBOARD["title"] and DASHBOARD["uid"]
    names = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert names["DS_PROMETHEUS"]["type"] == "datasource"
    assert names["DS_PROMETHEUS"]["query"] == "prometheus"
    assert names["tenant"]["type"] == "query"
    ids = [p["id"] for p in PANELS]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_has_the_rows_operators_need():
    rows = [p["title"] for p in PANELS if p["type"] == "row"]
    assert rows == ["Ingress", "Streams", "Answers", "Egress", "Kafka consumer lag", "Processes"]


def test_every_panel_has_a_title_a_datasource_and_targets():
    for panel in DATA_PANELS:
        assert panel.get("title"), panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["refId"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in PANELS:
        g = panel["gridPos"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_template_variables_query_existing_metrics_and_labels():
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert match, query
        metric, label = match.groups()
        assert metric in CATALOG, f"${variable['name']}: unknown metric {metric}"
        assert label in CATALOG[metric].labels, f"${variable['name']}: {metric} has no {label}"


def test_tenant_variable_is_only_applied_to_series_with_a_tenant_label():
    for panel in DATA_PANELS:
        for target in panel["targets"]:
            if "$tenant" not in target["expr"]:
                continue
            for sel in _selectors(promql_parser.parse(grafana_to_promql(target["expr"]))):
                assert "tenant" in CATALOG[sel.name].labels, (panel["title"], sel.name)


def test_every_worker_metric_has_a_panel():
    """A metric added to onyx_wa.metrics without a panel is invisible to operators."""
    used = {s.name for _, e in all_expressions() for s in _selectors(promql_parser.parse(e))}
    used_families = {CATALOG[n].family for n in used if n in CATALOG}
    dashboard_families = {
        CATALOG[s.name].family
        for _, e in dashboard_expressions()
        for s in _selectors(promql_parser.parse(grafana_to_promql(e)))
        if s.name in CATALOG
    }
    for metric in (
        _wrappers(worker_metrics) + _wrappers(IngressMetrics()) + _wrappers(AdminMetrics())
    ):
        family = metric.describe()[0].name
        assert family in dashboard_families, f"{family} has no dashboard panel"
    assert "onyx_wa_consumer_lag_seconds" in used_families


# --- PromQL against the catalog ----------------------------------------------------------------


@pytest.mark.parametrize("where,expr", all_expressions(), ids=[w for w, _ in all_expressions()])
def test_expression_parses_and_uses_only_existing_metrics(where, expr):
    assert problems(expr, CATALOG) == [], f"{where}: {expr}"


def test_a_renamed_metric_is_caught():
    """Drop one real metric from the catalog, as a rename in code would: the checks must fail."""
    for victim in (
        "onyx_wa_sends_total",
        "onyx_wa_consumer_lag_seconds",
        "process_cpu_seconds_total",
    ):
        catalog = {k: v for k, v in CATALOG.items() if k != victim}
        failing = [w for w, e in all_expressions() if problems(e, catalog)]
        assert failing, f"nothing queries {victim}?"
        assert all(
            any(victim in p for p in problems(e, catalog))
            for w, e in all_expressions()
            if w in failing
        )


def test_the_checker_rejects_bad_promql():
    bad = {
        "sum(rate(onyx_wa_sends_total[5m])": "does not parse",
        "onyx_wa_sends_total{result=sent}": "does not parse",
        "rate(onyx_wa_sends[5m])": "unknown metric onyx_wa_sends",
        "onyx_wa_paused_bots_total": "unknown metric",
        'sum(onyx_wa_sends_total{tenant="a"})': "no label 'tenant'",
        "sum by (tenant) (rate(onyx_wa_sends_total[5m]))": "groups by 'tenant'",
        "rate(onyx_wa_paused_bots[5m])": "a gauge",
        "histogram_quantile(0.9, rate(onyx_wa_answer_latency_seconds_bucket[5m]))": "sum by (le",
        "histogram_quantile(0.9, sum by (le) (rate(onyx_wa_answer_latency_seconds_count[5m])))": "not a _bucket",
    }
    for expr, expected in bad.items():
        found = problems(expr, CATALOG)
        assert any(expected in p for p in found), (expr, found)


def test_metric_names_outside_selectors_are_known_too():
    """Belt and braces: any onyx_wa_*/process_* token anywhere in an expression (outside strings)."""
    for where, expr in all_expressions():
        code = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
        for token in re.findall(r"\b(?:onyx_wa|process)_[a-z0-9_]+\b", code):
            assert token in CATALOG, f"{where}: {token}"


# --- alert rules -------------------------------------------------------------------------------


def test_alert_rules_have_the_required_fields():
    assert ALERTS["groups"]
    names = set()
    for group in ALERTS["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"]), rule["alert"]
            assert rule["alert"] not in names, f"duplicate alert {rule['alert']}"
            names.add(rule["alert"])
            assert rule["expr"].strip()
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            ann = rule["annotations"]
            for key in ("summary", "description", "runbook"):
                assert ann.get(key), f"{rule['alert']}: no {key}"


def test_alerts_cover_what_the_issue_asks_for():
    exprs = {r["alert"]: r["expr"] for r in ALERT_RULES}
    text = "\n".join(exprs.values())
    assert "onyx_wa_consumer_lag_seconds" in text  # lag seconds
    assert any("onyx_wa_consumer_group_status" in e and "== 2" in e for e in exprs.values())
    assert any("onyx_wa_consumer_group_status" in e and "== 3" in e for e in exprs.values())
    assert "onyx_wa_dlq_total" in text  # DLQ growth
    assert 'outcome="failed"' in text  # answer error rate
    assert 'result!="sent"' in text  # send error rate
    assert "onyx_wa_paused_bots" in text  # paused bots
    assert "broker_unavailable" in text  # ingress 503
    assert any("lag_messages" in e and "stage_events" in e for e in exprs.values())
    severities = {r["alert"]: r["labels"]["severity"] for r in ALERT_RULES}
    assert severities["OnyxWaConsumerLagHigh"] == "warning"
    assert severities["OnyxWaConsumerLagCritical"] == "critical"


def test_alert_templates_only_use_grouped_labels():
    """{{ $labels.x }} in an annotation is empty unless x survives the expression's aggregation."""
    for rule in ALERT_RULES:
        outer = promql_parser.parse(rule["expr"])
        while isinstance(outer, promql_parser.BinaryExpr):
            outer = outer.lhs
        for label in {
            m for a in rule["annotations"].values() for m in re.findall(r"\$labels\.(\w+)", a)
        }:
            if isinstance(outer, promql_parser.AggregateExpr):
                assert outer.modifier is not None and label in outer.modifier.labels, (
                    rule["alert"],
                    label,
                )


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_runbook_link_points_at_a_docs_section():
    docs = DOCS_PATH.read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", docs, flags=re.M)}
    for rule in ALERT_RULES:
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/observability.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor}"
        assert rule["alert"] in docs, f"{rule['alert']} is not explained in the docs"


# --- docs --------------------------------------------------------------------------------------


def test_every_metric_is_documented():
    docs = DOCS_PATH.read_text()
    for series in {s.family: s for s in CATALOG.values()}.values():
        if not series.family.startswith("onyx_wa_"):
            continue
        exposed = _sample_names(series.family, series.type)[0]
        if series.type == "histogram":
            exposed = series.family
        assert f"`{exposed}`" in docs, f"{exposed} is not documented in docs/observability.md"


# --- prometheus.yml and the compose overlay -----------------------------------------------------


def test_scrape_config_targets_the_default_ports():
    from onyx_wa.settings import Settings

    config = yaml.safe_load(PROMETHEUS_PATH.read_text())
    assert "/etc/prometheus/alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) >= {"onyx-wa-ingress", "onyx-wa-worker", "onyx-wa-lag-exporter"}
    assert all(name.startswith("onyx-wa-") for name in jobs)  # dashboard/alerts: job=~"onyx-wa-.*"
    defaults = Settings.model_fields
    ingress = jobs["onyx-wa-ingress"]["static_configs"][0]["targets"][0]
    assert ingress.endswith(f":{defaults['ingress_port'].default}")
    assert (
        jobs["onyx-wa-worker"]["dns_sd_configs"][0]["port"] == defaults["worker_web_port"].default
    )
    exporter_port = next(
        p for p in get_command(cli_app).commands["lag-exporter"].params if p.name == "port"
    ).default
    lag = jobs["onyx-wa-lag-exporter"]["static_configs"][0]["targets"][0]
    assert lag.endswith(f":{exporter_port}")


def test_monitoring_overlay_mounts_files_that_exist_and_runs_real_commands():
    compose = yaml.safe_load(MONITORING_COMPOSE_PATH.read_text())
    base = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    commands = get_command(cli_app).commands  # type: ignore[attr-defined]
    for name, service in compose["services"].items():
        assert name not in base["services"], f"{name} would override the base service"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (
                    f"{name}: {source} (paths are relative to the root)"
                )
        command = service.get("command")
        if command and command[0] == "onyx-wa":
            assert command[1] in commands, name
        for dependency in service.get("depends_on", {}):
            assert dependency in base["services"] or dependency in compose["services"], name
    exporter = compose["services"]["lag-exporter"]
    assert (
        exporter["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
        == base["x-app"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    )
    assert exporter["image"] == base["x-app"]["image"]
