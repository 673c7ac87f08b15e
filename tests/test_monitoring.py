"""Prometheus and Grafana wiring in manifests/base/monitoring/:

- ``promtool check rules`` on kftune-rules.yaml and ``promtool test rules`` on its unit tests;
- ``promtool check config`` on prometheus-scrape.yaml (Pushgateway scraped with ``honor_labels``), and
  the ServiceMonitor variant; operator/prometheusrule.yaml is the rules file, regenerated;
- every PromQL expression (rules and dashboard) uses only metric names that kftune's Pushgateway sink
  really exposes, the Pushgateway's own ``push_*`` series, or the rules' recorded series; the
  dashboard's expressions parse;
- ``kubectl kustomize`` builds both kustomizations with the files' exact content;
- against a real Pushgateway and Prometheus (integration): what the sink pushes carries the labels
  the rules and the dashboard select on, and the recording rules compute what they claim.

``python tests/test_monitoring.py --write-prometheusrule`` regenerates operator/prometheusrule.yaml.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "manifests" / "base" / "monitoring"
RULES = MONITORING / "kftune-rules.yaml"
RULES_TEST = MONITORING / "kftune-rules.test.yaml"
SCRAPE = MONITORING / "prometheus-scrape.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMETHEUS_RULE = MONITORING / "operator" / "prometheusrule.yaml"
SERVICE_MONITOR = MONITORING / "operator" / "servicemonitor.yaml"

PROMTOOL_HINT = ("promtool not found: install it with `apt-get install prometheus` "
                 "(Debian's package ships /usr/bin/promtool)")
KUBECTL_HINT = "kubectl not found: install kubectl (it builds kustomizations offline with `kubectl kustomize`)"

#: The caller names (``MetricsSink.log``) the monitoring reads, with who logs them. kftune's
#: Pushgateway sink turns each into ``kftune_<name>`` and, when logged with a step, ``kftune_<name>_step``.
GAUGES = {
    "dev_score": "training (trials and final): dev score after each epoch",
    "dev_loss": "training: dev loss after each epoch",
    "train_loss": "training: training loss after each epoch",
    "learning_rate": "LR range test and training",
    "samples_per_second": "training: throughput",
    "step_running": "every step: 1 at start, 0 when it ends (the no-progress alert)",
}
#: Counters (``MetricsSink.increment``) with the label names the monitoring selects on.
COUNTERS = {"trials": {"state": "failed"}}
#: Series the Pushgateway adds to every group.
PUSHGATEWAY_SERIES = {"push_time_seconds", "push_failure_time_seconds"}

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
             "bool", "atan2", "inf", "nan"}


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(hint)
    return path


def _run(args: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sink_metric_names() -> set[str]:
    """The metric names kftune's Pushgateway sink exposes for :data:`GAUGES` and :data:`COUNTERS`
    (rendered by the real sink; nothing is pushed anywhere that listens)."""
    from kftune.io.pushgateway import PushgatewaySink

    sink = PushgatewaySink(f"http://127.0.0.1:{_free_port()}", grouping={"run": "r", "step": "s"},
                           timeout=1, push_interval=3600)
    try:
        sink.log({name: 1.0 for name in GAUGES}, step=1)
        for name, labels in COUNTERS.items():
            sink.increment(name, labels=labels)
        text = sink.render().decode()
    finally:
        sink.close()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
            assert match, f"variable {var['name']}: expected label_values(<selector>, <label>)"
            exprs.append(match.group(1))
    return exprs


def _substitute(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by values Prometheus accepts."""
    return (expr.replace("$__range", "1h").replace("$__rate_interval", "1m").replace("$__interval", "1m")
            .replace("${run}", ".*").replace("$run", ".*").replace("${trial}", ".*").replace("$trial", ".*"))


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges, grouping
    clauses, functions, aggregations and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group(0) in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def test_metric_name_extraction() -> None:
    expr = ('max by (job, run) (max_over_time(kftune_dev_score{trial!="", step=~"a|b"}[1h] offset 5m)) '
            '- on (job) group_left () kftune:x:y > 1e-3 or vector(0) unless time() - push_time_seconds')
    assert metric_names(expr) == {"kftune_dev_score", "kftune:x:y", "push_time_seconds"}


# ---------------------------------------------------------------------------------------------------
# the rules


def test_rules_pass_promtool_check() -> None:
    out = _run([_tool("promtool", PROMTOOL_HINT), "check", "rules", str(RULES)])
    assert f"SUCCESS: {len(_rules())} rules found" in out


def test_rules_unit_tests_pass() -> None:
    out = _run([_tool("promtool", PROMTOOL_HINT), "test", "rules", RULES_TEST.name], cwd=MONITORING)
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_and_documented() -> None:
    tested = {case["alertname"] for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert {rule["alert"] for rule in alerts} == tested
    for rule in alerts:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rules_use_only_metrics_that_exist(sink_metric_names: set[str]) -> None:
    known = sink_metric_names | PUSHGATEWAY_SERIES | _recorded()
    for rule in _rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown metrics {sorted(unknown)}"


def test_recorded_names_follow_the_level_metric_operations_convention() -> None:
    for name in _recorded():
        level, metric, operations = name.split(":")
        assert level == "kftune" and metric and operations, name


# ---------------------------------------------------------------------------------------------------
# scraping the Pushgateway


def test_scrape_config_passes_promtool_and_honors_labels() -> None:
    out = _run([_tool("promtool", PROMTOOL_HINT), "check", "config", SCRAPE.name], cwd=MONITORING)
    assert "is valid prometheus config file syntax" in out and f"SUCCESS: {len(_rules())} rules found" in out
    config = yaml.safe_load(SCRAPE.read_text())
    assert config["rule_files"] == [RULES.name]
    [job] = config["scrape_configs"]
    assert job["honor_labels"] is True
    assert all("9091" in target for static in job["static_configs"] for target in static["targets"])


def test_servicemonitor_honors_labels() -> None:
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert [endpoint["honorLabels"] for endpoint in monitor["spec"]["endpoints"]] == [True]
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus-pushgateway"}


def _literal_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def render_prometheusrule() -> str:
    """operator/prometheusrule.yaml: the rules file's groups as a PrometheusRule."""
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, _literal_representer)
    doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "kftune"}, "spec": {"groups": yaml.safe_load(RULES.read_text())["groups"]}}
    head = ("# GENERATED from ../kftune-rules.yaml (its groups, unchanged): the same rules for the Prometheus\n"
            "# Operator. tests/test_monitoring.py fails when the two differ; regenerate with\n"
            "#   python tests/test_monitoring.py --write-prometheusrule\n")
    return head + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=1000, allow_unicode=True)


def test_prometheusrule_is_the_rules_file() -> None:
    assert PROMETHEUS_RULE.read_text() == render_prometheusrule(), (
        "operator/prometheusrule.yaml is out of date: run python tests/test_monitoring.py --write-prometheusrule")
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


# ---------------------------------------------------------------------------------------------------
# the dashboard


def test_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "kftune-overview" and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {panel["title"] for panel in _panels(dashboard)}
    for wanted in ("Runs", "Trials by state", "Best objective (dev score)", "Dev score", "Loss", "Epoch"):
        assert wanted in titles
    for panel in _panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"])) - {"__range", "__rate_interval", "__interval"}
            assert used <= set(variables), f"{panel['title']}: undefined variables {used - set(variables)}"


def test_dashboard_uses_only_metrics_that_exist(sink_metric_names: set[str]) -> None:
    known = sink_metric_names | PUSHGATEWAY_SERIES | _recorded()
    used: set[str] = set()
    for expr in _dashboard_exprs(_dashboard()):
        names = metric_names(_substitute(expr))
        assert names, f"no metric in {expr!r}"
        assert names <= known, f"unknown metrics {sorted(names - known)} in {expr!r}"
        used |= names
    # the training curves and trial counts come straight from what the sink pushes
    assert {"kftune_dev_score", "kftune_dev_score_step", "kftune_train_loss", "kftune_dev_loss",
            "kftune_learning_rate", "kftune_samples_per_second", "kftune_step_running"} <= used


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    exprs = [_substitute(expr) for expr in _dashboard_exprs(_dashboard())]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr_{i}:check", "expr": expr}
                                                        for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = _run([_tool("promtool", PROMTOOL_HINT), "check", "rules", str(path)])
    assert f"SUCCESS: {len(exprs)} rules found" in out


# ---------------------------------------------------------------------------------------------------
# kustomize


def _kustomize(path: Path) -> list[dict[str, Any]]:
    out = _run([_tool("kubectl", KUBECTL_HINT), "kustomize", str(path)])
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_kustomize_builds_the_monitoring_configmaps() -> None:
    docs = {doc["metadata"]["name"]: doc for doc in _kustomize(MONITORING)}
    assert set(docs) == {"kftune-prometheus-config", "kftune-grafana-dashboard"}
    config = docs["kftune-prometheus-config"]
    assert config["kind"] == "ConfigMap"
    assert config["data"] == {SCRAPE.name: SCRAPE.read_text(), RULES.name: RULES.read_text()}
    dashboard = docs["kftune-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["kftune.json"]) == _dashboard()
    for doc in docs.values():
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kftune"


def test_kustomize_builds_the_operator_variant() -> None:
    docs = {doc["kind"]: doc for doc in _kustomize(MONITORING / "operator")}
    assert set(docs) == {"ServiceMonitor", "PrometheusRule"}
    assert docs["PrometheusRule"]["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    assert docs["ServiceMonitor"]["spec"]["endpoints"][0]["honorLabels"] is True


# ---------------------------------------------------------------------------------------------------
# against a real Pushgateway and Prometheus


def _series_of_run(stack: Any, expr: str, run: str, want: int = 1) -> list[dict[str, Any]]:
    """Poll ``expr`` until at least ``want`` of its series belong to ``run``; return those."""
    found: list[dict[str, Any]] = []
    for _ in range(80):
        found = [s for s in stack.query_once(expr) if s["metric"].get("run") == run]
        if len(found) >= want:
            return found
        time.sleep(0.25)
    pytest.fail(f"{expr!r}: expected {want} series of run {run}, got {found}")


@pytest.mark.integration
def test_rules_and_dashboard_select_what_the_sink_pushes(prometheus_stack: Any) -> None:
    from kftune.io.pushgateway import PushgatewaySink

    run = f"mon-{uuid.uuid4().hex[:8]}"
    url = prometheus_stack.pushgateway_url
    with PushgatewaySink(url, grouping={"run": run, "step": "search", "trial": "t1"}) as trial:
        trial.log({"step_running": 1})
        for epoch, (score, loss) in enumerate([(0.80, 0.9), (0.85, 0.5)], start=1):
            trial.log({"dev_score": score, "train_loss": loss, "dev_loss": loss + 0.1, "learning_rate": 0.01,
                       "samples_per_second": 900.0}, step=epoch)
        trial.log({"step_running": 0})
    with PushgatewaySink(url, grouping={"run": run, "step": "search"}) as search:
        search.increment("trials", labels={"state": "succeeded"}, amount=3)
        search.increment("trials", labels={"state": "failed"})
    final = PushgatewaySink(url, grouping={"run": run, "step": "train"})  # still running: not closed yet
    final.log({"dev_score": 0.9}, step=1)
    final.flush()

    records = {rule["record"]: rule["expr"] for rule in _rules() if "record" in rule}

    def value(record: str, want: int = 1) -> dict[tuple[str, ...], float]:
        series = _series_of_run(prometheus_stack, records[record], run, want)
        return {tuple(f"{k}={v}" for k, v in sorted(s["metric"].items()) if k != "run"): float(s["value"][1])
                for s in series}

    assert value("kftune:trials_failed:ratio") == {("job=kftune",): 0.25}
    assert value("kftune:trials:count", want=2) == {("job=kftune", "state=failed"): 1.0,
                                                    ("job=kftune", "state=succeeded"): 3.0}
    assert value("kftune:run_best_trial_dev_score:max") == {("job=kftune",): 0.85}
    assert value("kftune:run_final_dev_score:max") == {("job=kftune",): 0.9}
    ages = value("kftune:group_last_push:age_seconds", want=3)
    assert set(ages) == {("job=kftune", "step=search", "trial=t1"), ("job=kftune", "step=search"),
                         ("job=kftune", "step=train")}
    assert all(0 <= age < 600 for age in ages.values())
    # the no-progress alert's left side sees the running final training and not the ended trial
    running = _series_of_run(prometheus_stack, "max by (job, run, step, trial) (kftune_step_running) == 1", run)
    assert [s["metric"].get("step") for s in running] == ["train"]
    # every dashboard expression on raw metrics returns this run's series, with the legend's labels
    for expr in _dashboard_exprs(_dashboard()):
        if any(name.startswith("kftune:") for name in metric_names(_substitute(expr))) or "$__range" in expr:
            continue
        concrete = expr.replace("$run", run).replace("$trial", ".*")
        if concrete.startswith("count(") or "label_values" in concrete:
            continue
        series = _series_of_run(prometheus_stack, concrete, run)
        for legend_label in re.findall(r"by \(([^)]*)\)", concrete)[:1]:
            for label in (part.strip() for part in legend_label.split(",")):
                if label != "trial":   # the final training has no trial label
                    assert all(label in s["metric"] for s in series), (concrete, label, series)
    final.close()
    ended = _series_of_run(prometheus_stack, 'kftune_step_running{step="train"} == 0', run)
    assert [s["metric"].get("step") for s in ended] == ["train"]  # a clean close marks the step ended


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-prometheusrule"]:
        PROMETHEUS_RULE.write_text(render_prometheusrule())
        print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}")
    else:
        print(__doc__)
