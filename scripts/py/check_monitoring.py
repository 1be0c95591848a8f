"""Checks the alert and recording rules and the dashboards against docs/metrics.md
(called by scripts/check-monitoring from the repository root; `--write` regenerates
deploy/monitoring/prometheusrule.yaml)."""

import glob
import json
import re
import sys

import yaml

write = sys.argv[1] == "--write"
rules = yaml.safe_load(open("deploy/monitoring/rules/coffer.rules.yaml"))
wrapper = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {
        "name": "coffer",
        "labels": {"app.kubernetes.io/name": "coffer", "app.kubernetes.io/component": "monitoring"},
    },
    "spec": {"groups": rules["groups"]},
}
path = "deploy/monitoring/prometheusrule.yaml"
header = "# Generated from rules/coffer.rules.yaml by scripts/check-monitoring --write. Do not edit.\n"
text = header + yaml.safe_dump(wrapper, sort_keys=False, width=200)
if write:
    open(path, "w").write(text)
elif open(path).read() != text:
    sys.exit(f"{path} differs from the rules file: run scripts/check-monitoring --write")

CATALOGUE_ROW = re.compile(
    r"^\| `(coffer_[a-z0-9_]+)` \| ([a-z]+) \|([^|]*)\|([^|]*)\|([^|]*)\|", re.MULTILINE
)
ROLES = {"api", "outbox-publisher", "chain-listener", "reconciler", "operator"}
TYPES = {"counter", "gauge", "histogram", "summary"}
errors = []
catalogue = {}
for name, kind, _unit, _labels, roles in CATALOGUE_ROW.findall(open("docs/metrics.md").read()):
    if name in catalogue:
        errors.append(f"docs/metrics.md: {name} is listed twice")
    catalogue[name] = kind
    if kind not in TYPES:
        errors.append(f"docs/metrics.md: {name} has type {kind!r}, not one of {sorted(TYPES)}")
    if (kind == "counter") != name.endswith("_total"):
        errors.append(f"docs/metrics.md: {name}: counters, and only counters, end in _total")
    listed = {r.strip() for r in roles.split(",")}
    if not listed or not listed <= ROLES:
        errors.append(f"docs/metrics.md: {name} names unknown roles {sorted(listed - ROLES)}")
runbook = open("docs/runbook.md").read()
anchors = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbook, re.MULTILINE)}
recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def check_expr(where, expr):
    """Every coffer_ metric an expression names is catalogued (histogram series by their base
    name); every coffer: recording rule it names is recorded."""
    for name in set(re.findall(r"(?<![A-Za-z0-9_:])coffer_[a-z0-9_]+", expr)):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        known = name in catalogue or (base != name and catalogue.get(base) in ("histogram", "summary"))
        if not known:
            errors.append(f"{where}: {name} is not in docs/metrics.md")
    for name in set(re.findall(r"(?<![A-Za-z0-9_])coffer:[A-Za-z0-9_:]+", expr)):
        if name not in recorded:
            errors.append(f"{where}: {name} is not a recording rule of the rules file")


alerts = []
for group in rules["groups"]:
    for rule in group["rules"]:
        check_expr(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        if "alert" in rule:
            alerts.append(rule["alert"])
            notes = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not notes.get(key):
                    errors.append(f"alert {rule['alert']}: no {key}")
            if rule.get("labels", {}).get("severity") not in ("page", "ticket"):
                errors.append(f"alert {rule['alert']}: severity must be page or ticket")
            anchor = notes.get("runbook_url", "").rpartition("#")[2]
            if anchor != rule["alert"].lower() or anchor not in anchors:
                errors.append(
                    f"alert {rule['alert']}: runbook_url must point to '## {rule['alert']}' in docs/runbook.md"
                )

# Every alert has a unit test that sees it fire and one that sees it clear (or stay silent).
unit = yaml.safe_load(open("deploy/monitoring/tests/coffer.rules.test.yaml"))
fired, cleared = set(), set()
for test in unit["tests"]:
    for case in test.get("alert_rule_test", []):
        (fired if case.get("exp_alerts") else cleared).add(case["alertname"])
for alert in alerts:
    if alert not in fired:
        errors.append(f"alert {alert}: no unit test in deploy/monitoring/tests sees it fire")
    if alert not in cleared:
        errors.append(f"alert {alert}: no unit test in deploy/monitoring/tests sees it clear")


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))  # rows, collapsed or not


for board in glob.glob("deploy/monitoring/dashboards/*.json"):
    dashboard = json.load(open(board))
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            check_expr(f"{board} panel '{panel['title']}'", target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if variable.get("type") == "query":
            check_expr(f"{board} variable '{variable['name']}'", query or "")
if errors:
    sys.exit("\n".join(errors))
print(
    f"monitoring: ok ({len(alerts)} alerts, {len(recorded)} recording rules, {len(catalogue)} catalogued metrics)"
)
