"""Checks everything Coffer ships to Kubernetes without a cluster (called by scripts/check-deploy).

Arguments: ROOT WORK K8S_VERSION. WORK holds base.yaml, dev.yaml and production.yaml rendered by
kubectl kustomize.
"""

import copy
import os
import sys
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import yaml

root, work, k8s_version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
golden_dir = root / "crates/coffer-operator/tests/golden"
update = os.environ.get("UPDATE_GOLDEN") == "1"
failures = []
checked = 0


def fail(message):
    failures.append(message)
    print(f"FAIL {message}", file=sys.stderr)


class KubernetesLoader(yaml.SafeLoader):
    """Reads YAML as Kubernetes does (go-yaml): an integer past 64 bits stays a string. kustomize
    leaves such scalars unquoted, e.g. an ERC-20 contract address like 0xa0b8…eb48."""


def _construct_int(loader, node):
    value = yaml.SafeLoader.construct_yaml_int(loader, node)
    return value if -(2**63) <= value < 2**64 else node.value


KubernetesLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def documents(text, source):
    try:
        return [d for d in yaml.load_all(text, Loader=KubernetesLoader) if d]
    except yaml.YAMLError as e:
        fail(f"{source}: not valid YAML: {e}")
        return []


# --- CRD schemas as JSON Schema: OpenAPI `nullable` becomes a null type, and objects with
# declared properties reject unknown fields (the API server would prune them silently).
def to_json_schema(node, strict):
    if isinstance(node, list):
        return [to_json_schema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: to_json_schema(v, strict) for k, v in node.items()}
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    if (
        strict
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


crd_validators = {}
for crd in documents((root / "crds/coffer.yaml").read_text(), "crds/coffer.yaml"):
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        props = schema.setdefault("properties", {})
        for name in ("spec", "status"):
            if name in props:
                props[name] = to_json_schema(props[name], strict=True)
        props.update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
        )
        schema["additionalProperties"] = False
        crd_validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)

SKIPPED_GROUPS = ("monitoring.coreos.com/",)  # Prometheus Operator kinds: no schema offline


def validate(obj, source):
    global checked
    name = f"{source}: {obj.get('kind')} {obj.get('metadata', {}).get('namespace', '')}/{obj.get('metadata', {}).get('name')}"
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in crd_validators:
        errors = sorted(crd_validators[key].iter_errors(obj), key=lambda e: list(e.path))
        for e in errors:
            fail(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
        checked += 1
        return
    if str(obj.get("apiVersion", "")).startswith(SKIPPED_GROUPS):
        print(f"skip {name} (no offline schema)", file=sys.stderr)
        return
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
        checked += 1
    except kubernetes_validate.ValidationError as e:
        fail(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError:
        fail(f"{name}: no Kubernetes {k8s_version} schema for {key}")


def golden(name, text):
    path = golden_dir / name
    if update:
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    elif not path.exists():
        fail(f"{path} is missing: run UPDATE_GOLDEN=1 scripts/check-deploy")
    elif path.read_text() != text:
        fail(
            f"{path} differs from the render: if intended, run UPDATE_GOLDEN=1 scripts/check-deploy and review the diff"
        )


# --- least privilege, on every render: a rule that grants Secrets names them (an empty or absent
# resourceNames grants every Secret) and only reads them; no rule uses a wildcard.
def check_rbac(objects, source):
    for obj in objects:
        name = f"{source}: {obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        for rule in obj.get("rules") or []:
            fields = [rule.get(k) or [] for k in ("apiGroups", "resources", "verbs", "resourceNames")]
            if any("*" in values for values in fields):
                fail(f"{name}: a rule uses a wildcard: {rule}")
            if "secrets" in (rule.get("resources") or []):
                if not rule.get("resourceNames"):
                    fail(f"{name}: grants Secrets without resourceNames (that is every Secret): {rule}")
                if set(rule.get("verbs") or []) != {"get"}:
                    fail(f"{name}: grants more than get on Secrets: {rule}")


def check_network_policies(objects, source):
    """A NetworkPolicy rule without peers allows everyone: none may be rendered."""
    for obj in objects:
        if obj["kind"] != "NetworkPolicy":
            continue
        name = f"{source}: NetworkPolicy {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        spec = obj["spec"]
        for rule in spec.get("ingress") or []:
            if not rule.get("from"):
                fail(f"{name}: an ingress rule without `from` allows every source: {rule}")
        for rule in spec.get("egress") or []:
            if not rule.get("to"):
                fail(f"{name}: an egress rule without `to` allows every destination: {rule}")


def operator_env(objects, source):
    for obj in objects:
        if obj["kind"] == "Deployment" and "operator" in obj["metadata"]["name"]:
            container = obj["spec"]["template"]["spec"]["containers"][0]
            return {e["name"]: e.get("value") for e in container.get("env", [])}
    fail(f"{source}: no operator Deployment")
    return {}


def bindings(objects):
    return sorted(
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        for o in objects
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
    )


def secret_names(objects):
    """{namespace or "*": resourceNames} of every rule granting Secrets."""
    found = {}
    for obj in objects:
        for rule in obj.get("rules") or []:
            if "secrets" in (rule.get("resources") or []):
                scope = obj["metadata"].get("namespace", "*") if obj["kind"] == "Role" else "*"
                found[scope] = rule.get("resourceNames")
    return found


DEFAULT_SECRETS = [
    "coffer-mongodb",
    "coffer-rabbitmq",
    "coffer-jwt",
    "coffer-audit",
    "coffer-pii",
    "coffer-eth-rpc",
    "coffer-hot-wallet",
]


def expect(condition, message):
    if not condition:
        fail(message)


# --- kustomize: the namespace each render's operator watches alone, and the Secrets it may read
PRODUCTION_SECRETS = [
    "mongodb-ledger",
    "rabbitmq-events",
    "api-jwt",
    "audit-key",
    "pii-keys",
    "eth-mainnet-rpc",
    "hot-wallet-signer",
]
overlays = {
    "base": ("coffer", DEFAULT_SECRETS),
    "dev": ("coffer-dev", DEFAULT_SECRETS),
    "production": ("payments", PRODUCTION_SECRETS),
}
for overlay, (watched, readable) in overlays.items():
    text = (work / f"{overlay}.yaml").read_text()
    objects = documents(text, f"kustomize {overlay}")
    for obj in objects:
        validate(obj, f"kustomize {overlay}")
    check_rbac(objects, f"kustomize {overlay}")
    check_network_policies(objects, f"kustomize {overlay}")
    expect(
        operator_env(objects, overlay).get("COFFER_OPERATOR_NAMESPACES") == watched,
        f"kustomize {overlay}: the operator does not watch {watched} alone",
    )
    expect(
        secret_names(objects) == {watched: readable},
        f"kustomize {overlay}: Secret rights are {secret_names(objects)}, not the listed names in {watched}",
    )
    expect(
        not any(kind == "ClusterRoleBinding" for kind, _, _ in bindings(objects)),
        f"kustomize {overlay}: a ClusterRoleBinding gives the operator rights in every namespace",
    )
    kinds = {o["kind"] for o in objects}
    if overlay == "production":
        kinds = {o["kind"] for o in objects}
        for expected in ("PodDisruptionBudget", "NetworkPolicy", "WalletPlatform", "ChainListener"):
            expect(expected in kinds, f"kustomize production renders no {expected}")
        referenced = set()
        for obj in objects:
            if obj["kind"] in ("WalletPlatform", "ChainListener"):
                spec = obj["spec"]
                for ref in (
                    spec.get("mongodb", {}).get("secretRef"),
                    spec.get("rabbitmq", {}).get("secretRef"),
                ):
                    if ref:
                        referenced.add(ref["name"])
                for key in (
                    "jwtSecretRef",
                    "auditKeySecretRef",
                    "piiKeysSecretRef",
                    "rpcSecretRef",
                    "signerSecretRef",
                ):
                    if key in spec:
                        referenced.add(spec[key]["name"])
        expect(
            referenced == set(readable),
            f"kustomize production: the operator may read {readable}, the resources reference {sorted(referenced)}",
        )
        golden("kustomize-production.yaml", text)
    if overlay == "dev":
        for expected in (
            "CustomResourceDefinition",
            "WalletPlatform",
            "Asset",
            "ChainListener",
            "StatefulSet",
            "Deployment",
        ):
            if expected not in kinds:
                fail(f"kustomize dev renders no {expected}")
        golden("kustomize-dev.yaml", text)

# --- Helm chart
chart_dir = root / "charts/coffer-operator"
report = helm_python.lint(str(chart_dir), strict=True, kube_version=f"v{k8s_version}.0")
for message in report.get("messages", []):
    if message.get("severity", 0) >= 2:
        fail(f"helm lint: {message.get('path')}: {message.get('error')}")
for error in report.get("errors", []):
    fail(f"helm lint: {error}")

chart = helm_python.Chart.load(str(chart_dir))
custom_values = {
    "image": {"repository": "registry.example.com/coffer", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry"}],
    "replicaCount": 1,
    "fullnameOverride": "payments-operator",
    "watch": {"namespaces": ["payments", "payments-b"], "secrets": ["mongodb-ledger", "rabbitmq", "api-jwt"]},
    "podDisruptionBudget": {"enabled": False, "maxUnavailable": 1},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
    "tests": {
        "image": {"repository": "registry.example.com/busybox", "tag": "1.36.1", "pullPolicy": "Always"}
    },
    "leaderElection": {"enabled": False},
    "logFormat": "text",
    "metrics": {"port": 9191, "serviceMonitor": {"enabled": True, "interval": "15s"}},
    "serviceAccount": {"create": False, "name": "existing-operator-sa"},
    "podAnnotations": {"example.com/team": "payments"},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "coffer", "effect": "NoSchedule"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "coffer-operator"}},
                    },
                }
            ]
        }
    },
}
cases = (
    ("default", None, "coffer-operator", "coffer-system"),
    ("custom", custom_values, "payments", "payments-ops"),
    ("all-namespaces", {"watch": {"allNamespaces": True}}, "coffer-operator", "coffer-system"),
    ("no-secrets", {"watch": {"secrets": []}}, "coffer-operator", "coffer-system"),
    ("name-override", {"nameOverride": "wallet-operator"}, "coffer", "coffer-system"),
)


def check_notes(notes, case, namespaces):
    """NOTES.txt must work from the installed chart: no repository paths, the watched
    namespaces named, and its WalletPlatform example valid against the CRD."""
    for path in ("deploy/", "crates/", "charts/", "docs/"):
        expect(path not in notes, f"helm {case} NOTES.txt points into the repository ({path}): {notes}")
    for ns in namespaces:
        expect(ns in notes, f"helm {case} NOTES.txt does not name the watched namespace {ns}")
    example = notes.split("<<'EOF'\n", 1)[1].split("\n  EOF", 1)[0] if "<<'EOF'" in notes else ""
    platforms = [d for d in documents(example.replace("\n  ", "\n").strip(), f"helm {case} NOTES.txt") if d]
    expect(len(platforms) == 1, f"helm {case} NOTES.txt has no WalletPlatform example")
    for platform in platforms:
        validate(platform, f"helm {case} NOTES.txt example")


for case, values, release, namespace in cases:
    try:
        rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    except helm_python.HelmError as e:
        fail(f"helm render ({case} values): {e}")
        continue
    text = ""
    notes = next((body for template, body in rendered.items() if template.endswith("NOTES.txt")), "")
    for template in sorted(rendered):
        body = rendered[template]
        if template.endswith("NOTES.txt") or not body.strip():
            continue
        text += f"---\n# Source: {template}\n{body.strip()}\n"
        for obj in documents(body, f"helm {case} {template}"):
            validate(obj, f"helm {case}")
    objects = documents(text, f"helm {case}")
    check_rbac(objects, f"helm {case}")
    env = operator_env(objects, f"helm {case}")
    found = bindings(objects)
    if case == "custom" and "kind: ServiceMonitor" not in text:
        fail("helm custom values: metrics.serviceMonitor.enabled renders no ServiceMonitor")
    if case == "default":
        expect(env.get("COFFER_OPERATOR_NAMESPACES") == "coffer-system", f"helm default: watches {env}")
        expect(
            found
            == [
                ("RoleBinding", "coffer-system", "coffer-operator"),
                ("RoleBinding", "coffer-system", "coffer-operator-leader"),
                ("RoleBinding", "coffer-system", "coffer-operator-secrets"),
            ],
            f"helm default: the operator's rights are bound as {found}, not in its own namespace alone",
        )
        expect(
            secret_names(objects) == {"coffer-system": DEFAULT_SECRETS},
            f"helm default: {secret_names(objects)}",
        )
    if case == "custom":
        expect(env.get("COFFER_OPERATOR_NAMESPACES") == "payments,payments-b", f"helm custom: watches {env}")
        names = ["mongodb-ledger", "rabbitmq", "api-jwt"]
        expect(
            secret_names(objects) == {"payments": names, "payments-b": names},
            f"helm custom: Secret rights {secret_names(objects)}",
        )
        expect(not any(k == "ClusterRoleBinding" for k, _, _ in found), f"helm custom: {found}")
    if case == "all-namespaces":
        expect(env.get("COFFER_OPERATOR_ALL_NAMESPACES") == "true", f"helm all-namespaces: {env}")
        expect(
            [b for b in found if b[0] == "ClusterRoleBinding"]
            == [
                ("ClusterRoleBinding", "", "coffer-operator"),
                ("ClusterRoleBinding", "", "coffer-operator-secrets"),
            ],
            f"helm all-namespaces: {found}",
        )
        expect(
            secret_names(objects) == {"*": DEFAULT_SECRETS}, f"helm all-namespaces: {secret_names(objects)}"
        )
    kinds = [o["kind"] for o in objects]
    watched = [ns for _, ns, _ in found if ns] if case != "all-namespaces" else []
    check_notes(notes, case, sorted(set(watched) - {namespace}) or [namespace])
    tests = [o for o in objects if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    expect(len(tests) == 1 and tests[0]["kind"] == "Pod", f"helm {case}: no `helm test` pod")
    if case == "default":
        expect("PodDisruptionBudget" in kinds, "helm default: no PodDisruptionBudget for the operator")
        expect("NetworkPolicy" not in kinds, "helm default: networkPolicy.enabled is false")
    if case == "custom":
        expect("PodDisruptionBudget" not in kinds, "helm custom: podDisruptionBudget.enabled is false")
        expect("NetworkPolicy" in kinds, "helm custom: networkPolicy.enabled renders no NetworkPolicy")
        names = {o["metadata"]["name"] for o in objects if o["kind"] not in ("ServiceAccount",)}
        expect(
            all(n.startswith("payments-operator") for n in names),
            f"helm custom: fullnameOverride not used by every object: {sorted(names)}",
        )
    if case == "name-override":
        expect(
            {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
            == {"coffer-wallet-operator"},
            f"helm name-override: {[o['metadata']['name'] for o in objects]}",
        )
        labels = {o["metadata"]["labels"].get("app.kubernetes.io/name") for o in objects}
        expect(labels == {"wallet-operator"}, f"helm name-override: app.kubernetes.io/name labels {labels}")
    if case == "no-secrets":
        expect(secret_names(objects) == {}, f"helm no-secrets: Secret rights {secret_names(objects)}")
    if case in ("no-secrets", "name-override"):
        continue
    golden(f"chart-{case}.yaml", text)
    golden(f"chart-{case}-notes.txt", notes)

# --- values.schema.json refuses what the chart cannot work with, in render and in lint, as Helm
# does on install and upgrade; and the template refuses combinations the schema cannot express.
bad_values = (
    ("a wrong type", {"replicaCount": "two"}, "replicaCount"),
    ("the removed watchNamespace", {"watchNamespace": "payments"}, "watchNamespace"),
    ("an unknown nested key", {"watch": {"namespace": "payments"}}, "namespace"),
    ("a log format the binary refuses", {"logFormat": "pretty"}, "logFormat"),
    ("a namespace that is no DNS label", {"watch": {"namespaces": ["Payments"]}}, "namespaces"),
    ("an empty Secret name", {"watch": {"secrets": [""]}}, "secrets"),
    ("an unknown pull policy", {"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    (
        "a list and every namespace",
        {"watch": {"namespaces": ["a"], "allNamespaces": True}},
        "exclude each other",
    ),
    ("renewing no sooner than expiring", {"leaderElection": {"renewSeconds": 15}}, "renewSeconds"),
)
TEMPLATE_CHECKS = ("a list and every namespace", "renewing no sooner than expiring")
for what, values, mention in bad_values:
    try:
        chart.render(values, name="coffer-operator", namespace="coffer-system", is_install=True)
        fail(f"helm render accepted {what}: {values}")
    except helm_python.HelmError as e:
        expect(mention in str(e), f"helm render refused {what} without naming {mention}: {e}")
    # Helm's lint logs a template's `fail` instead of failing (only install/template refuse it),
    # so lint is asked only about what the schema refuses.
    if what in TEMPLATE_CHECKS:
        continue
    report = helm_python.lint(str(chart_dir), strict=True, kube_version=f"v{k8s_version}.0", values=values)
    expect(report.get("errors"), f"helm lint accepted {what}: {values}")
lint_custom = helm_python.lint(
    str(chart_dir), strict=True, kube_version=f"v{k8s_version}.0", values=custom_values
)
for error in lint_custom.get("errors", []):
    fail(f"helm lint (custom values): {error}")
for crd in documents((chart_dir / "crds/coffer.yaml").read_text(), "chart crds"):
    validate(crd, "chart crds")

# --- objects the operator builds (its golden renders) and the custom resources it was fed
for name in ("minimal.yaml", "full.yaml", "production.yaml"):
    golden_objects = documents((golden_dir / name).read_text(), f"operator golden {name}")
    check_rbac(golden_objects, f"operator golden {name}")
    check_network_policies(golden_objects, f"operator golden {name}")
    for obj in golden_objects:
        validate(obj, f"operator golden {name}")
    fixture = root / "crates/coffer-operator/tests/fixtures" / name
    if fixture.exists():  # production.yaml's resources are the production overlay's, checked above
        for obj in documents(fixture.read_text(), f"fixture {name}"):
            validate(obj, f"fixture {name}")

# --- the CRD validation itself catches mistakes (guards against a schema that accepts anything)
bad_asset = {
    "apiVersion": "coffer.dev/v1alpha1",
    "kind": "Asset",
    "metadata": {"name": "bad"},
    "spec": {
        "platformRef": "coffer",
        "symbol": "eth",
        "chain": "ethereum",
        "decimals": 18,
        "confirmationsRequired": 3,
        "withdrawalMin": "1e3",
        "withdrawalMax": "1",
        "dailyWithdrawalLimit": "1",
        "reviewThreshold": "1",
        "unknownField": True,
    },
}
if not list(crd_validators[("coffer.dev/v1alpha1", "Asset")].iter_errors(bad_asset)):
    fail("the Asset CRD schema accepted a lower-case symbol, an exponent and an unknown field")

if failures:
    print(f"check-deploy: {len(failures)} failure(s), {checked} objects validated", file=sys.stderr)
    sys.exit(1)
print(
    f"check-deploy: ok, {checked} objects validated against Kubernetes {k8s_version} and the CRDs",
    file=sys.stderr,
)
