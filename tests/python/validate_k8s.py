#!/usr/bin/env python3
"""Validate the manifests in k8s/.

* Every YAML document of k8s/*.yaml is validated against the Kubernetes OpenAPI schema of KUBERNETES_VERSION
  with kubernetes-validate (strict: unknown fields are errors).
* Kinds it has no schema for (the prometheus-operator CRDs ServiceMonitor and PrometheusRule) get a structural
  check here; every PromQL expression is parsed with promql-parser.
* Cross-references: the Deployment's probes, ports and envFrom, the Service's ports, the selectors of the HPA,
  PDB, NetworkPolicy and ServiceMonitor, and no secret-looking key in a ConfigMap.
* k8s/grafana-dashboard.json must parse, have panels with targets, and every target's PromQL must parse.

Prints one line per document; exits 1 on any failure, 2 when a required Python package is missing.
Usage: validate_k8s.py [K8S_DIR] (default: k8s/ beside tests/)
"""

import json
import pathlib
import re
import sys

try:
    import kubernetes_validate
    import promql_parser
    import yaml
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"MISSING PYTHON MODULE: {e.name}: run scripts/test.sh, or "
          "python3 -m pip install kubernetes-validate promql-parser", file=sys.stderr)
    sys.exit(2)

KUBERNETES_VERSION = "1.30"
APP = "execution-ticket-service"
SERVICE_PORTS = {"http": 8000, "grpc": 50052, "metrics": 9090}
# Keys that would be credentials: they belong in the Secret.
SECRET_KEY = re.compile(r"PASSWORD|SECRET|CREDENTIAL|USERNAME|_USER$|_TOKEN$|_KEY$|_URI$|^DATABASE_URL$", re.I)
# A URL with user:password@ in it.
URL_WITH_LOGIN = re.compile(r"://[^/@\s]+:[^/@\s]*@")
# Grafana variables, replaced by plain values before PromQL parsing.
GRAFANA_VARS = [("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")]

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")
    print(f"FAIL {where}: {message}")


def check_promql(where, expr):
    if not isinstance(expr, str) or not expr.strip():
        fail(where, "empty PromQL expression")
        return
    try:
        promql_parser.parse(expr)
    except Exception as e:  # the parser raises ValueError with the reason
        fail(where, f"PromQL does not parse: {e}: {expr!r}")


def check_service_monitor(where, doc):
    spec = doc["spec"]
    if not isinstance(spec.get("selector"), dict) or not spec["selector"].get("matchLabels"):
        fail(where, "spec.selector.matchLabels is required")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        fail(where, "spec.endpoints must be a non-empty list")
        return
    for i, ep in enumerate(endpoints):
        if not isinstance(ep, dict) or not ep.get("port"):
            fail(where, f"spec.endpoints[{i}].port (a Service port name) is required")


def check_prometheus_rule(where, doc):
    groups = doc["spec"].get("groups")
    if not isinstance(groups, list) or not groups:
        fail(where, "spec.groups must be a non-empty list")
        return 0
    count = 0
    names = set()
    for g in groups:
        if not isinstance(g, dict) or not g.get("name") or not isinstance(g.get("rules"), list) or not g["rules"]:
            fail(where, f"group {g!r:.60}: needs a name and non-empty rules")
            continue
        if g["name"] in names:
            fail(where, f"group name {g['name']!r} is used twice")
        names.add(g["name"])
        for r in g["rules"]:
            rname = r.get("alert") or r.get("record")
            if not rname or ("alert" in r) == ("record" in r):
                fail(where, f"group {g['name']}: every rule needs exactly one of alert/record: {r!r:.80}")
                continue
            check_promql(f"{where} {rname}", r.get("expr"))
            if "alert" in r:
                severity = (r.get("labels") or {}).get("severity")
                if severity not in ("info", "warning", "critical"):
                    fail(where, f"{rname}: labels.severity must be info, warning or critical, not {severity!r}")
                if not (r.get("annotations") or {}).get("summary"):
                    fail(where, f"{rname}: annotations.summary is required")
                if "for" in r and not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(r["for"])):
                    fail(where, f"{rname}: 'for: {r['for']}' is not a Prometheus duration")
            count += 1
    return count


def check_crd(where, doc):
    """Structural check of the prometheus-operator kinds kubernetes-validate has no schema for."""
    kind = doc.get("kind")
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(where, f"apiVersion must be monitoring.coreos.com/v1, not {doc.get('apiVersion')!r}")
        return
    if not isinstance(doc.get("metadata"), dict) or not doc["metadata"].get("name"):
        fail(where, "metadata.name is required")
        return
    if not isinstance(doc.get("spec"), dict):
        fail(where, "spec is required")
        return
    before = len(failures)
    if kind == "ServiceMonitor":
        check_service_monitor(where, doc)
        what = "selector, endpoints[].port"
    else:
        n = check_prometheus_rule(where, doc)
        what = f"{n} rules, every expr parsed as PromQL"
    if len(failures) == before:
        print(f"ok   {where}: no schema in kubernetes-validate for {kind} (a CRD): structural check ({what})")


def validate_file(path, docs_by_kind):
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        fail(path.name, f"YAML does not parse: {e}")
        return
    if not docs:
        fail(path.name, "no YAML document")
    for i, doc in enumerate(docs):
        where = f"{path.name}#{i} {doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            fail(where, "a document needs apiVersion and kind")
            continue
        docs_by_kind.setdefault(doc["kind"], []).append((where, doc))
        if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            check_crd(where, doc)
            continue
        try:
            used = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            print(f"ok   {where}: valid {doc['apiVersion']} {doc['kind']} (kubernetes-validate, "
                  f"Kubernetes {used} schema, strict)")
        except kubernetes_validate.ValidationError as e:
            path_ = ".".join(str(p) for p in e.absolute_path) or "(document)"
            fail(where, f"schema error at {path_}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(where, e.message)


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cross_check(docs_by_kind):
    """What the schema cannot see: the pieces must refer to each other, and to the service's real ports."""

    def one(kind):
        found = docs_by_kind.get(kind, [])
        if len(found) != 1:
            fail("k8s/", f"expected exactly one {kind}, found {len(found)}")
            return None, None
        return found[0]

    before = len(failures)
    where, dep = one("Deployment")
    dep_where = where
    pod_labels = {}
    if dep:
        pod = dep["spec"]["template"]["spec"]
        pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True or \
                pod.get("securityContext", {}).get("runAsUser") != 1001:
            fail(where, "the pod must run as non-root uid 1001 (the image's user)")
        c = next((c for c in pod["containers"] if c["name"] == "service"), None)
        if c is None:
            fail(where, "no container named 'service'")
        else:
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if ports != SERVICE_PORTS:
                fail(where, f"container ports {ports} != {SERVICE_PORTS}")
            for probe in ("startupProbe", "livenessProbe"):
                get = (c.get(probe) or {}).get("httpGet") or {}
                if get.get("path") != "/health" or get.get("port") not in (8000, "http"):
                    fail(where, f"{probe} must be httpGet /health on port 8000")
            ready = (c.get("readinessProbe") or {}).get("httpGet") or {}
            if ready.get("path") != "/ready" or ready.get("port") not in (9090, "metrics"):
                fail(where, "readinessProbe must be httpGet /ready on the metrics port (9090): it fails at once on SIGTERM")
            pod_ip = next((e for e in c.get("env", []) if e.get("name") == "POD_IP"), None)
            if ((pod_ip or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") != "status.podIP":
                fail(where, "env POD_IP must come from the downward API (fieldRef status.podIP): the advertised address")
            if not (c.get("lifecycle") or {}).get("preStop"):
                fail(where, "a preStop hook (a short sleep) is needed so endpoints are removed before SIGTERM")
            if (pod.get("terminationGracePeriodSeconds") or 30) < 30:
                fail(where, "terminationGracePeriodSeconds must cover preStop plus the 20 s HTTP drain")
            res = c.get("resources") or {}
            if not res.get("requests", {}).get("cpu") or not res.get("requests", {}).get("memory") \
                    or not res.get("limits", {}).get("memory"):
                fail(where, "resources need cpu and memory requests and a memory limit (the HPA scales on cpu)")
            refs = [(k, list(v.values())[0]["name"]) for v in c.get("envFrom", []) for k in v]
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                names = {d["metadata"]["name"] for _, d in docs_by_kind.get(kind, [])}
                wanted = [n for k, n in refs if k == key]
                if not wanted:
                    fail(where, f"envFrom has no {key}")
                for n in wanted:
                    if n not in names:
                        fail(where, f"envFrom {key} {n!r} is not a {kind} in k8s/")
    where, svc = one("Service")
    if svc:
        ports = {p["name"]: (p["port"], p.get("targetPort")) for p in svc["spec"]["ports"]}
        if {n: p for n, (p, _) in ports.items()} != SERVICE_PORTS:
            fail(where, f"ports {ports} must be exactly {SERVICE_PORTS}")
        if not labels_match(svc["spec"].get("selector"), pod_labels):
            fail(where, "spec.selector does not select the Deployment's pods")
    for kind in ("ConfigMap", "Secret"):
        if not docs_by_kind.get(kind):
            fail("k8s/", f"no {kind}")
    for where, cm in docs_by_kind.get("ConfigMap", []):
        for key, value in (cm.get("data") or {}).items():
            if SECRET_KEY.search(key) or URL_WITH_LOGIN.search(str(value)):
                fail(where, f"{key} looks like a credential: put it in the Secret, not the ConfigMap")
    # Cluster mode: at least two replicas (an HPA owns the count), rolling updates that never go below it, and a
    # disruption budget that lets one pod go at a time.
    hpas = docs_by_kind.get("HorizontalPodAutoscaler", [])
    if len(hpas) > 1:
        fail("k8s/", f"expected at most one HorizontalPodAutoscaler, found {len(hpas)}")
    for where, hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        if dep and (ref.get("kind") != "Deployment" or ref.get("name") != dep["metadata"]["name"]):
            fail(where, "scaleTargetRef is not the Deployment")
        if (hpa["spec"].get("minReplicas") or 1) < 2:
            fail(where, "minReplicas must be at least 2")
    if dep:
        replicas = dep["spec"].get("replicas")
        if hpas and replicas is not None:
            fail(dep_where, "spec.replicas with an HPA: every apply would reset the count the HPA set")
        if not hpas and (replicas or 1) < 2:
            fail(dep_where, "spec.replicas must be at least 2 (cluster mode) without an HPA")
        strategy = dep["spec"].get("strategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate" or \
                (strategy.get("rollingUpdate") or {}).get("maxUnavailable") not in (0, "0%"):
            fail(dep_where, "strategy must be RollingUpdate with maxUnavailable 0")
    where, pdb = one("PodDisruptionBudget")
    if pdb and (pdb["spec"].get("minAvailable") not in (None, 0) or pdb["spec"].get("maxUnavailable") in (None, 0)):
        fail(where, "the budget must allow one eviction at a time (maxUnavailable: 1), or drains block")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        where, d = one(kind)
        if d:
            selector = (d["spec"].get("selector") or d["spec"].get("podSelector") or {}).get("matchLabels")
            if not labels_match(selector, pod_labels):
                fail(where, "its selector does not select the Deployment's pods")
    where, np = one("NetworkPolicy")
    if np:
        open_ports = {p["port"] for rule in np["spec"].get("ingress", []) for p in rule.get("ports", [])}
        if not set(SERVICE_PORTS.values()) <= open_ports:
            fail(where, f"ingress opens {sorted(open_ports)}, not all of {sorted(SERVICE_PORTS.values())}")
    where, sm = one("ServiceMonitor")
    if sm and svc:
        if not labels_match(sm["spec"].get("selector", {}).get("matchLabels"), svc["metadata"].get("labels", {})):
            fail(where, "spec.selector does not select the Service")
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("port") not in ports:
                fail(where, f"endpoint port {ep.get('port')!r} is not a port name of the Service")
    one("PrometheusRule")
    if len(failures) == before:
        print("ok   cross-references: probes, ports, envFrom, selectors, scale target, no credential in a ConfigMap")


def validate_dashboard(path):
    where = path.name
    try:
        dash = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(where, f"not JSON: {e}")
        return
    before = len(failures)
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dash:
            fail(where, f"no {key!r}")
    panels = dash.get("panels") or []
    if not panels:
        fail(where, "no panels")
    ids = [p.get("id") for p in panels]
    if len(set(ids)) != len(ids):
        fail(where, "panel ids are not unique")
    exprs = 0
    for p in panels:
        pw = f"{where} panel {p.get('id')} {p.get('title')!r}"
        if not p.get("title") or not p.get("type") or not isinstance(p.get("gridPos"), dict):
            fail(pw, "a panel needs title, type and gridPos")
        targets = p.get("targets") or []
        if not targets:
            fail(pw, "no targets")
        for t in targets:
            expr = t.get("expr", "")
            for var, value in GRAFANA_VARS:
                expr = expr.replace(var, value)
            expr = re.sub(r"\$\{?(\w+)\}?", "x", expr)  # dashboard variables such as $namespace
            check_promql(f"{pw} target {t.get('refId')}", expr)
            exprs += 1
    if len(failures) == before:
        print(f"ok   {where}: Grafana dashboard {dash['title']!r}: {len(panels)} panels, "
              f"{exprs} targets, every expr parsed as PromQL")


def main():
    k8s = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2] / "k8s"
    files = sorted(k8s.glob("*.yaml")) + sorted(k8s.glob("*.yml"))
    if not files:
        fail(str(k8s), "no manifests")
    docs_by_kind = {}
    for f in files:
        validate_file(f, docs_by_kind)
    cross_check(docs_by_kind)
    dashboard = k8s / "grafana-dashboard.json"
    if dashboard.exists():
        validate_dashboard(dashboard)
    else:
        fail(str(dashboard), "missing")
    documents = sum(len(v) for v in docs_by_kind.values())
    if failures:
        print(f"{len(failures)} failure(s) in {documents} documents of {len(files)} files")
        sys.exit(1)
    print(f"all {documents} documents of {len(files)} files valid, and the Grafana dashboard")


if __name__ == "__main__":
    main()
