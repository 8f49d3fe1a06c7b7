#!/usr/bin/env python3
"""Check the shipped alerts and dashboard against a real scrape of the service.

    check_scrape.py SCRAPE K8S_DIR RULE_TESTS

SCRAPE is the text a running service's /metrics answered (tests/it/alerts.rs drives a service with every part
switched on until it has produced each kind of series). Checked:

* every series selector in k8s/prometheusrule.yaml and k8s/grafana-dashboard.json names a metric the service
  exposes, with the label names it filters on, and an equality matcher's value occurs in the scrape (an alert on
  `kind="breach"` is only worth something if the service really says "breach");
* every input series of the rules' unit tests (RULE_TESTS, run by `promtool test rules`) has exactly the label
  names of a real series of its metric, so the tests feed the rules what a real scrape would;
* every alert has a unit test that fires it and one where it stays quiet.

Series from other exporters (`up`, kube-state-metrics' `kube_*`) and the labels Prometheus adds at scrape time
(job, instance, namespace, pod, ...) are not the service's to expose and are skipped. Exits 1 with every problem
listed, 0 with a summary.
"""

import json
import pathlib
import re
import sys

import promql_parser
import yaml

# Added by Prometheus (scrape config, ServiceMonitor), not by the service.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def external(name):
    return name == "up" or name.startswith("kube_")


def parse_scrape(text):
    """metric name -> list of {label: value} of its samples."""
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head = line.rsplit(" ", 1)[0]
        name, _, labels = head.partition("{")
        series.setdefault(name, []).append(dict(LABEL.findall(labels)))
    return series


def selectors(expr):
    """The vector selectors of a PromQL expression: (name, [(label, op, value)])."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [(m.name, str(m.op).split(".")[-1], m.value) for m in node.matchers.matchers]
            found.append((node.name, matchers))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def check_selector(where, name, matchers, scraped, problems):
    if external(name):
        return
    samples = scraped.get(name)
    if not samples:
        problems.append(f"{where}: {name} is not in the scrape")
        return
    for label, op, value in matchers:
        if label in TARGET_LABELS or label == "__name__":
            continue
        values = {s[label] for s in samples if label in s}
        if not values:
            problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(set().union(*samples))})")
        elif op == "Equal" and value not in values:
            problems.append(f"{where}: {name}{{{label}={value!r}}} never occurs (values seen: {sorted(values)})")


def rule_exprs(k8s):
    manifest = yaml.safe_load((k8s / "prometheusrule.yaml").read_text())
    for group in manifest["spec"]["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"]


def dashboard_exprs(k8s):
    dashboard = json.loads((k8s / "grafana-dashboard.json").read_text())

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            expr = re.sub(r"\$\{?(\w+)\}?", "x", expr)
            yield f"panel {panel.get('title')!r}", expr


def main():
    scrape, k8s, tests_file = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    scraped = parse_scrape(scrape.read_text())
    problems = []
    counted = 0
    alerts = []
    for where, expr in list(rule_exprs(k8s)) + list(dashboard_exprs(k8s)):
        if not where.startswith("panel"):
            alerts.append(where)
        for name, matchers in selectors(expr):
            check_selector(where, name, matchers, scraped, problems)
            counted += 1

    tests = yaml.safe_load(tests_file.read_text())
    inputs = 0
    fires, quiet = set(), set()
    for i, case in enumerate(tests["tests"]):
        for s in case.get("input_series", []):
            ((name, matchers),) = selectors(s["series"])
            inputs += 1
            if external(name):
                continue
            given = {label for label, _, _ in matchers} - TARGET_LABELS
            real = [set(labels) - TARGET_LABELS for labels in scraped.get(name, [])]
            if given not in real:
                problems.append(f"unit test {i}: input series {s['series']} has labels {sorted(given)}; "
                                f"the scrape's {name} has {sorted(map(sorted, real)) or 'no series'}")
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    for alert in alerts:
        if alert not in fires:
            problems.append(f"{alert}: no unit test fires it")
        if alert not in quiet:
            problems.append(f"{alert}: no unit test where it stays quiet")

    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"{counted} selectors of {len(alerts)} alerts and the dashboard found in the scrape; "
          f"{inputs} unit-test input series shaped like real ones; every alert fires and stays quiet in a test")


if __name__ == "__main__":
    main()
