"""The Helm chart, rendered by Helm's own engine (helm-python-sdk bundles libhelm), with
default values and with every option on: lint clean, every document parsed into its
k8s-openapi type by `manifest-check` (built from operator/), RBAC exactly the operator's
calls (operator/src/rbac.rs), and the PrometheusRule checked and unit-tested by promtool.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

ROOT = Path(os.environ.get("DETOUR_ROOT", Path(__file__).resolve().parent.parent))
CHART = ROOT / "charts" / "detour"
NAMESPACE = "detour-system"

ALL_ON = {
    "replicaCount": 3,
    "certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "fallbackRateThreshold": 0.25},
    "grafanaDashboard": {"enabled": True},
    "webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 5},
    "sidecar": {"proxyPort": 4100, "resources": {"cpu": "100m", "memory": "128Mi", "cpuLimit": "500m"}},
    "podAnnotations": {"example.com/team": "platform"},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
    "imagePullSecrets": [{"name": "regcred"}],
}
CASES = {"default": None, "all-on": ALL_ON}


@pytest.fixture(scope="session")
def manifest_check() -> str:
    """The manifest-check binary: $DETOUR_MANIFEST_CHECK, else built now."""
    binary = os.environ.get("DETOUR_MANIFEST_CHECK")
    if binary:
        return binary
    subprocess.run(
        ["cargo", "build", "-q", "-p", "detour-operator", "--bin", "manifest-check"], cwd=ROOT, check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / "manifest-check")


@pytest.fixture(scope="session")
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render(chart: helm.Chart, values: dict | None) -> dict[str, str]:
    return chart.render(values, name="detour", namespace=NAMESPACE, is_install=True)


def documents(chart: helm.Chart, values: dict | None) -> list[dict]:
    out = []
    for path, text in sorted(render(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        out.extend(d for d in yaml.safe_load_all(text) if d)
    return out


def write(tmp_path: Path, name: str, docs: list[dict]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def run(manifest_check: str, mode: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([manifest_check, mode, str(path)], capture_output=True, text=True)


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("case", CASES)
def test_lint_is_clean(case: str) -> None:
    """`helm lint --strict` reports nothing, with default values and with every option on."""
    report = helm.lint(str(CHART), CASES[case], strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert report["messages"] == [], report


@pytest.mark.parametrize("case", CASES)
def test_every_document_parses_into_its_type(case: str, chart, manifest_check, tmp_path) -> None:
    """Every rendered document, and the CRDs, parse into their k8s-openapi types with no
    field lost in the round trip (so no typo or misplaced key)."""
    docs = documents(chart, CASES[case])
    docs += [yaml.safe_load(c["data"]) for c in chart.crds]
    result = run(manifest_check, "manifests", write(tmp_path, f"{case}.yaml", docs))
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in docs}
    expected = {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
        "Deployment", "Service", "MutatingWebhookConfiguration", "PodDisruptionBudget",
        "CustomResourceDefinition",
    }
    if case == "all-on":
        expected |= {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "Certificate"}
    assert kinds == expected


def test_manifest_check_catches_a_typo(manifest_check, tmp_path) -> None:
    """The round trip finds a misspelt field that Kubernetes would silently drop."""
    bad = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"selectr": {"app": "x"}, "ports": [{"port": 80}]},
    }
    result = run(manifest_check, "manifests", write(tmp_path, "bad.yaml", [bad]))
    assert result.returncode != 0
    assert ".spec.selectr" in result.stderr


@pytest.mark.parametrize("case", CASES)
def test_rbac_is_exactly_the_operators_calls(case: str, chart, manifest_check, tmp_path) -> None:
    """The ClusterRole and Role grant every call in operator/src/rbac.rs and nothing else;
    no wildcards."""
    result = run(manifest_check, "rbac", write(tmp_path, f"{case}.yaml", documents(chart, CASES[case])))
    assert result.returncode == 0, result.stderr


def test_rbac_check_catches_an_extra_grant(chart, manifest_check, tmp_path) -> None:
    """A grant the operator does not need fails the RBAC check."""
    docs = documents(chart, None)
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    role["rules"].append({"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]})
    result = run(manifest_check, "rbac", write(tmp_path, "extra.yaml", docs))
    assert result.returncode != 0
    assert "grants delete core/pods which the operator never calls" in result.stderr


@pytest.mark.parametrize("case", CASES)
def test_operator_pod_is_hardened(case: str, chart) -> None:
    """Non-root, read-only root filesystem, all capabilities dropped, RuntimeDefault seccomp,
    requests and limits, liveness and readiness probes."""
    (deploy,) = by_kind(documents(chart, CASES[case]), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"] for e in container["env"]}
    assert {"POD_NAMESPACE", "POD_NAME"} <= env


def test_webhook_is_scoped_and_configurable(chart) -> None:
    """The webhook only sees labelled pods, has no side effects, and takes failurePolicy and
    timeoutSeconds from values; the chart's own namespace is never injected."""
    for values, policy, timeout in [(None, "Fail", 10), (ALL_ON, "Ignore", 5)]:
        (config,) = by_kind(documents(chart, values), "MutatingWebhookConfiguration")
        (hook,) = config["webhooks"]
        assert hook["objectSelector"] == {"matchLabels": {"detour.dev/inject": "true"}}
        assert hook["sideEffects"] == "None"
        assert hook["failurePolicy"] == policy
        assert hook["timeoutSeconds"] == timeout
        assert hook["clientConfig"]["service"]["path"] == "/mutate"
        excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
        assert NAMESPACE in excluded and "kube-system" in excluded


def test_cert_manager_option(chart) -> None:
    """With cert-manager, the CA injector annotation is set, a Certificate names the
    webhook Service, and the operator reads mounted files instead of issuing."""
    docs = documents(chart, ALL_ON)
    (config,) = by_kind(docs, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/detour-webhook"
    (cert,) = by_kind(docs, "Certificate")
    assert f"detour-webhook.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}
    (deploy,) = by_kind(docs, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--cert-source=files" in args
    default_args = by_kind(documents(chart, None), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--cert-source=self" in default_args
    assert "--sidecar-image=ghcr.io/detour-dev/detour-sidecar:0.1.0" in default_args


def test_values_schema_rejects_bad_values(chart) -> None:
    """values.schema.json names the bad key."""
    for bad in [
        {"webhook": {"failurePolicy": "Sometimes"}},
        {"sidecar": {"proxyPort": 9090}},
        {"replicaCount": 0},
        {"unknownKey": True},
    ]:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(chart.merge_values(bad))
    chart.validate_schema(chart.merge_values(ALL_ON))


def test_notes_give_the_next_three_commands(chart) -> None:
    """NOTES.txt tells the user what to type next: a Secret, a ModelRoute, the label."""
    notes = render(chart, None)["detour/templates/NOTES.txt"]
    assert "kubectl -n my-app create secret generic openai" in notes
    assert "kind: ModelRoute" in notes and "kubectl -n my-app get modelroutes" in notes
    assert '"detour.dev/inject":"true"' in notes


def test_dashboard_is_valid_json_with_the_key_panels(chart) -> None:
    """The Grafana dashboard parses and shows fallback rate, breaker state, latency, overhead."""
    (cm,) = by_kind(documents(chart, ALL_ON), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["detour.json"])
    titles = " | ".join(p["title"] for p in dashboard["panels"])
    for word in ["Fallback rate", "Breaker", "latency", "overhead"]:
        assert word.lower() in titles.lower(), titles


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install the Debian package `prometheus` (tests/apt-packages.txt)"
    return path


def rules_file(chart, tmp_path) -> Path:
    (rule,) = by_kind(documents(chart, ALL_ON), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_prometheus_rules_pass_promtool_check(chart, tmp_path) -> None:
    """promtool accepts the PrometheusRule's rules, including detour:fallback_rate."""
    path = rules_file(chart, tmp_path)
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    rules = yaml.safe_load(path.read_text())["groups"][0]["rules"]
    assert rules[0] == {
        "record": "detour:fallback_rate",
        "expr": 'sum(rate(detour_requests_total{fallback="true"}[5m])) / sum(rate(detour_requests_total[5m]))',
    }


def test_prometheus_rules_behave(chart, tmp_path) -> None:
    """promtool test rules: 30% fallbacks gives detour:fallback_rate 0.3 and fires the alert
    (threshold 0.25); an open breaker for 5 minutes fires DetourBreakerOpen."""
    rules = rules_file(chart, tmp_path)
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'detour_requests_total{route="chat",fallback="false"}', "values": "0+70x30"},
                    {"series": 'detour_requests_total{route="chat",fallback="true"}', "values": "0+30x30"},
                    {"series": 'detour_breaker_state{route="chat",target="primary",namespace="shop",pod="web-1"}',
                     "values": "2x30"},
                ],
                "promql_expr_test": [{"expr": "detour:fallback_rate", "eval_time": "20m", "exp_samples": [{"labels": "detour:fallback_rate", "value": 0.3}]}],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "DetourHighFallbackRate",
                     "exp_alerts": [{"exp_labels": {"severity": "warning"},
                                     "exp_annotations": {
                                         "summary": "More than 25% of LLM requests needed a fallback provider",
                                         "description": "30% of requests through Detour sidecars were served by a fallback target over the last 5 minutes. A primary provider is failing, slow or rate-limiting; see detour_fallbacks_total by route, from and reason."}}]},
                    {"eval_time": "10m", "alertname": "DetourBreakerOpen",
                     "exp_alerts": [{"exp_labels": {"severity": "warning", "route": "chat", "target": "primary", "namespace": "shop", "pod": "web-1"},
                                     "exp_annotations": {
                                         "summary": "A Detour circuit breaker has been open for 5 minutes",
                                         "description": "Target primary of route chat in pod shop/web-1 is skipped: it kept failing. Traffic is on its fallbacks."}}]},
                ],
            }
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
