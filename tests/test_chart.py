"""The Helm chart, rendered by Helm's own engine (helm-python-sdk bundles libhelm), with
default values and with every option on: lint clean, every document parsed into its
k8s-openapi type by `manifest-check` (built from operator/), RBAC exactly the operator's
calls (operator/src/rbac.rs) in each certificate mode, the ValidatingAdmissionPolicy's CEL
evaluated (cel-python) against allowed and refused changes, the NetworkPolicies' shapes, and
the PrometheusRule checked and unit-tested by promtool.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import celpy
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
    "image": {"digest": "sha256:" + "1" * 64},
    "networkPolicy": {
        "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
        "sidecar": {"namespaces": ["shop"], "egress": {"enabled": True, "providerCIDRs": ["203.0.113.0/24"]}},
    },
    "resourceQuota": {"enabled": True, "namespaces": ["shop", "web"], "modelRoutes": 5},
    "credentials": {"allowedHosts": ["api.openai.com", "vllm.models.svc.cluster.local"], "namespaces": ["shop", "web"]},
}
CASES = {"default": None, "all-on": ALL_ON}
# The certificate mode of each case: the default issues its own, all-on uses cert-manager.
CERTS = {"default": "self-issued", "all-on": "cert-manager"}
OPERATOR_SA = f"system:serviceaccount:{NAMESPACE}:detour-operator"


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


def run(manifest_check: str, mode: str, path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([manifest_check, mode, str(path), *extra], capture_output=True, text=True)


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
        "CustomResourceDefinition", "NetworkPolicy",
    }
    if case == "default":
        expected |= {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    if case == "all-on":
        expected |= {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "Certificate", "ResourceQuota"}
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
    """The ClusterRole and Role grant every call operator/src/rbac.rs lists for the case's
    certificate mode and nothing else, names included; no wildcards. Checked as the other
    mode, the same rendering fails, naming the rules that differ."""
    path = write(tmp_path, f"{case}.yaml", documents(chart, CASES[case]))
    result = run(manifest_check, "rbac", path, CERTS[case])
    assert result.returncode == 0, result.stderr
    other = "cert-manager" if CERTS[case] == "self-issued" else "self-issued"
    result = run(manifest_check, "rbac", path, other)
    assert result.returncode != 0
    assert "mutatingwebhookconfigurations (names detour-injector)" in result.stderr, result.stderr
    assert "core/secrets (names detour-webhook-tls)" in result.stderr, result.stderr


def rules_of(docs: list[dict], kind: str) -> list[dict]:
    (role,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == "detour-operator"]
    return role["rules"]


def grants(rules: list[dict], group: str, resource: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(verbs, resourceNames) of each rule on group/resource."""
    return [
        (tuple(r["verbs"]), tuple(r.get("resourceNames", [])))
        for r in rules
        if group in r["apiGroups"] and resource in r["resources"]
    ]


def test_rbac_per_certificate_mode(chart) -> None:
    """Self-issued: the Role reaches only the webhook's TLS Secret by name (create alone, as
    RBAC cannot name it) and the ClusterRole patches only our webhook configuration. With
    cert-manager neither exists. In both, ConfigMaps only by the name detour-routes (create
    alone) and the Lease only by its name. No Secret rule in the operator's ClusterRole in
    either mode: Secrets are read only through detour-credentials-reader (get, nothing else),
    bound by a RoleBinding per listed namespace."""
    own, cm = documents(chart, None), documents(chart, ALL_ON)
    assert grants(rules_of(own, "Role"), "", "secrets") == [
        (("get", "patch"), ("detour-webhook-tls",)),
        (("create",), ()),
    ]
    assert grants(rules_of(own, "ClusterRole"), "admissionregistration.k8s.io", "mutatingwebhookconfigurations") == [
        (("get", "patch"), ("detour-injector",)),
    ]
    assert grants(rules_of(cm, "Role"), "", "secrets") == []
    assert grants(rules_of(cm, "ClusterRole"), "admissionregistration.k8s.io", "mutatingwebhookconfigurations") == []
    for docs in (own, cm):
        configmaps = grants(rules_of(docs, "ClusterRole"), "", "configmaps")
        assert configmaps == [(("list", "watch", "patch"), ("detour-routes",)), (("create",), ())]
        assert grants(rules_of(docs, "ClusterRole"), "", "secrets") == []
        (reader,) = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "detour-credentials-reader"]
        assert reader["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
        assert grants(rules_of(docs, "Role"), "coordination.k8s.io", "leases") == [
            (("get", "update"), ("detour-operator",)),
            (("create",), ()),
        ]
    bindings = [d for d in cm if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "detour-credentials-reader"]
    assert [b["metadata"]["namespace"] for b in bindings] == ["shop", "web"]
    for b in bindings:
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "detour-credentials-reader"}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "detour-operator", "namespace": NAMESPACE}]
    assert not [d for d in own if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "detour-credentials-reader"]


def test_route_write_is_not_aggregated(chart) -> None:
    """Reading routes and policies is aggregated into view/edit/admin; writing them (a
    privileged verb) is only in detour-route-editor, which nothing aggregates."""
    docs = {d["metadata"]["name"]: d for d in by_kind(documents(chart, None), "ClusterRole")}
    viewer, editor = docs["detour-route-viewer"], docs["detour-route-editor"]
    aggregate = {k for k in viewer["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/aggregate-to-")}
    assert aggregate == {f"rbac.authorization.k8s.io/aggregate-to-{r}" for r in ("view", "edit", "admin")}
    assert {v for r in viewer["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    assert not [k for k in editor["metadata"]["labels"] if "aggregate" in k]
    assert {"create", "update", "patch"} <= {v for r in editor["rules"] for v in r["verbs"]}


def test_rbac_check_catches_an_extra_grant(chart, manifest_check, tmp_path) -> None:
    """A grant the operator does not need fails the RBAC check."""
    docs = documents(chart, None)
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    role["rules"].append({"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]})
    result = run(manifest_check, "rbac", write(tmp_path, "extra.yaml", docs), "self-issued")
    assert result.returncode != 0
    assert "grants delete core/pods which the operator never calls" in result.stderr


def test_rbac_check_catches_a_lost_name(chart, manifest_check, tmp_path) -> None:
    """A named rule widened to every name fails the RBAC check."""
    docs = documents(chart, None)
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        if rule["resources"] == ["configmaps"]:
            rule.pop("resourceNames", None)
    result = run(manifest_check, "rbac", write(tmp_path, "widened.yaml", docs), "self-issued")
    assert result.returncode != 0
    assert "grants patch core/configmaps which the operator never calls" in result.stderr, result.stderr


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
    """The webhook only sees labelled pods in namespaces labelled
    detour.dev/injection=enabled, has no side effects, and takes failurePolicy and
    timeoutSeconds from values; the chart's own namespace is never injected. With
    namespaceOptIn=false every namespace but the excluded ones is."""
    for values, policy, timeout in [(None, "Fail", 10), (ALL_ON, "Ignore", 5)]:
        (config,) = by_kind(documents(chart, values), "MutatingWebhookConfiguration")
        (hook,) = config["webhooks"]
        assert hook["objectSelector"] == {"matchLabels": {"detour.dev/inject": "true"}}
        assert hook["sideEffects"] == "None"
        assert hook["failurePolicy"] == policy
        assert hook["timeoutSeconds"] == timeout
        assert hook["clientConfig"]["service"]["path"] == "/mutate"
        assert hook["namespaceSelector"]["matchLabels"] == {"detour.dev/injection": "enabled"}
        excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
        assert NAMESPACE in excluded and "kube-system" in excluded
    (config,) = by_kind(documents(chart, {"webhook": {"namespaceOptIn": False}}), "MutatingWebhookConfiguration")
    selector = config["webhooks"][0]["namespaceSelector"]
    assert "matchLabels" not in selector
    assert NAMESPACE in selector["matchExpressions"][0]["values"]


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


def args_of(docs: list[dict]) -> list[str]:
    (deploy,) = by_kind(docs, "Deployment")
    return deploy["spec"]["template"]["spec"]["containers"][0]["args"]


def test_images_by_digest(chart) -> None:
    """With a digest, the operator and sidecar images are pulled as repository@sha256:…
    (the tag is ignored); without, repository:tag with the appVersion as default tag; a
    digest that is not sha256:<64 hex> is refused by the schema."""
    digest = "sha256:" + "ab" * 32
    docs = documents(chart, {"image": {"digest": digest, "tag": "ignored"}, "sidecar": {"image": {"digest": digest}}})
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/detour-dev/detour-operator@{digest}"
    assert f"--sidecar-image=ghcr.io/detour-dev/detour-sidecar@{digest}" in args_of(docs)
    (deploy,) = by_kind(documents(chart, {"image": {"tag": "0.2.0"}}), "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/detour-dev/detour-operator:0.2.0"
    for bad in ["sha256:abc", "latest", "sha512:" + "a" * 64]:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(chart.merge_values({"image": {"digest": bad}}))


def test_endpoint_allowlist_and_default_routes_reach_the_operator(chart) -> None:
    """credentials.allowedHosts becomes --allowed-hosts (the providers' public hosts by
    default) and webhook.defaultRoutes --default-routes (none by default); the schema refuses
    an empty list, a URL instead of a host, and an unknown selection."""
    default = args_of(documents(chart, None))
    assert "--allowed-hosts=api.openai.com,api.anthropic.com,*.openai.azure.com,bedrock-runtime.*.amazonaws.com,aiplatform.googleapis.com,*-aiplatform.googleapis.com" in default
    assert "--default-routes=none" in default
    args = args_of(documents(chart, {**ALL_ON, "webhook": {"defaultRoutes": "all"}}))
    assert "--allowed-hosts=api.openai.com,vllm.models.svc.cluster.local" in args
    assert "--default-routes=all" in args
    for bad in [
        {"credentials": {"allowedHosts": []}},
        {"credentials": {"allowedHosts": ["https://evil.example/"]}},
        {"webhook": {"defaultRoutes": "some"}},
    ]:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(chart.merge_values(bad))


def test_image_override_allowlist_reaches_the_operator(chart) -> None:
    """sidecar.image.overrideAllowlist becomes one --sidecar-image-allowed flag per entry;
    none by default (pods cannot pick another image)."""
    assert not [a for a in args_of(documents(chart, None)) if a.startswith("--sidecar-image-allowed")]
    values = {"sidecar": {"image": {"overrideAllowlist": ["registry.local/detour-sidecar", "mirror.example/s:1"]}}}
    allowed = [a for a in args_of(documents(chart, values)) if a.startswith("--sidecar-image-allowed")]
    assert allowed == ["--sidecar-image-allowed=registry.local/detour-sidecar", "--sidecar-image-allowed=mirror.example/s:1"]


def admission_policy(chart, values=None) -> tuple[dict, dict]:
    docs = documents(chart, values)
    (policy,) = by_kind(docs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    return policy, binding


def cel(expression: str, old: dict, new: dict, user: str = OPERATOR_SA) -> bool:
    """Evaluates one of the policy's CEL expressions as the apiserver would for an UPDATE."""
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    activation = {
        "object": celpy.json_to_cel(new),
        "oldObject": celpy.json_to_cel(old),
        "request": celpy.json_to_cel({"operation": "UPDATE", "userInfo": {"username": user}}),
    }
    return bool(program.evaluate(activation))


def admitted(policy: dict, old: dict, new: dict, user: str = OPERATOR_SA) -> bool:
    """Whether the policy lets `user` turn `old` into `new`: it applies only when every match
    condition holds, and then every validation must."""
    spec = policy["spec"]
    if not all(cel(c["expression"], old, new, user) for c in spec["matchConditions"]):
        return True
    return all(cel(v["expression"], old, new, user) for v in spec["validations"])


def test_operator_may_change_only_the_ca_bundle(chart) -> None:
    """With self-issued certificates a ValidatingAdmissionPolicy (bound with Deny) matches
    updates of our webhook configuration by the operator's service account: setting or
    changing caBundle passes; any other change (rules widened to Secrets, clientConfig
    re-pointed, selectors, failurePolicy, a webhook added or renamed, labels) is refused.
    Other users are not constrained. With cert-manager there is no policy (and no permission)."""
    policy, binding = admission_policy(chart)
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    (match,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert match["resources"] == ["mutatingwebhookconfigurations"]
    assert match["resourceNames"] == ["detour-injector"]
    assert match["operations"] == ["UPDATE"]

    (old,) = by_kind(documents(chart, None), "MutatingWebhookConfiguration")
    old = json.loads(json.dumps(old))

    def changed(edit) -> dict:
        new = json.loads(json.dumps(old))
        new["webhooks"][0]["clientConfig"]["caBundle"] = "UEVN"
        edit(new)
        return new

    assert admitted(policy, old, changed(lambda n: None))
    rotated = changed(lambda n: None)
    assert admitted(policy, rotated, changed(lambda n: n["webhooks"][0]["clientConfig"].update(caBundle="TkVX")))
    refused = {
        "rules widened": lambda n: n["webhooks"][0]["rules"][0].update(resources=["secrets"]),
        "url": lambda n: n["webhooks"][0]["clientConfig"].update(url="https://evil.example/"),
        "service": lambda n: n["webhooks"][0]["clientConfig"]["service"].update(namespace="evil"),
        "namespaceSelector": lambda n: n["webhooks"][0].update(namespaceSelector={}),
        "objectSelector": lambda n: n["webhooks"][0].pop("objectSelector"),
        "failurePolicy": lambda n: n["webhooks"][0].update(failurePolicy="Ignore"),
        "timeout": lambda n: n["webhooks"][0].update(timeoutSeconds=30),
        "renamed": lambda n: n["webhooks"][0].update(name="other.detour.dev"),
        "added": lambda n: n["webhooks"].append(json.loads(json.dumps(n["webhooks"][0])) | {"name": "x.detour.dev"}),
        "removed": lambda n: n.update(webhooks=[]),
        "label": lambda n: n["metadata"]["labels"].update(evil="1"),
        "annotation": lambda n: n["metadata"].update(annotations={"cert-manager.io/inject-ca-from": "evil/x"}),
    }
    for what, edit in refused.items():
        assert not admitted(policy, old, changed(edit)), what
    assert admitted(policy, old, changed(refused["rules widened"]), user="kubernetes-admin")
    assert not by_kind(documents(chart, ALL_ON), "ValidatingAdmissionPolicy")
    assert not by_kind(documents(chart, {"webhook": {"caBundleOnlyPolicy": False}}), "ValidatingAdmissionPolicy")


def network_policies(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"] for d in by_kind(docs, "NetworkPolicy")}


def test_operator_network_policy(chart) -> None:
    """The operator's pods: ingress only to the webhook port (from the apiserver's CIDRs when
    given, else any source) and the metrics port (from monitoring); egress only to the
    apiserver ports (and CIDRs when given). An empty metricsFrom allows no scraping."""
    spec = network_policies(documents(chart, None))[(NAMESPACE, "detour-operator")]
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "detour", "app.kubernetes.io/component": "operator"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    webhook, metrics = spec["ingress"]
    assert webhook == {"ports": [{"port": "webhook", "protocol": "TCP"}]}
    assert metrics == {
        "ports": [{"port": "metrics", "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    }
    fleet = {"ports": [{"port": 9090, "protocol": "TCP"}],
             "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"detour.dev/inject": "true"}}}]}
    assert spec["egress"] == [fleet, {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}]

    spec = network_policies(documents(chart, ALL_ON))[(NAMESPACE, "detour-operator")]
    assert spec["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert spec["egress"] == [fleet, {"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}]
    # Without fleet health the operator reaches the apiserver only.
    spec = network_policies(documents(chart, {"fleet": {"enabled": False}}))[(NAMESPACE, "detour-operator")]
    assert spec["egress"] == [{"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}]

    spec = network_policies(documents(chart, {"networkPolicy": {"metricsFrom": []}}))[(NAMESPACE, "detour-operator")]
    assert [r["ports"][0]["port"] for r in spec["ingress"]] == ["webhook"]
    assert not by_kind(documents(chart, {"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_sidecar_network_policies(chart) -> None:
    """In each listed namespace, injected pods get the admin port 9090 only from monitoring
    and every other port as before (none when allowOtherPorts is false); the optional egress
    policy allows DNS and HTTPS to the provider CIDRs, or to public addresses only (no
    private, link-local/metadata or loopback range) when none are given."""
    policies = network_policies(documents(chart, ALL_ON))
    admin = policies[("shop", "detour-sidecar-admin")]
    assert admin["podSelector"] == {"matchLabels": {"detour.dev/inject": "true"}}
    assert admin["policyTypes"] == ["Ingress"]
    monitoring, operator, others = admin["ingress"]
    assert monitoring["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert monitoring["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # Fleet health: the operator's pods, and only them, also reach the admin port.
    assert operator["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert operator["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "detour", "app.kubernetes.io/component": "operator"}},
    }]
    assert "from" not in others
    tcp = [(p["port"], p["endPort"]) for p in others["ports"] if p["protocol"] == "TCP"]
    assert tcp == [(1, 9089), (9091, 65535)], "every TCP port but 9090"
    egress = policies[("shop", "detour-provider-egress")]
    assert egress["policyTypes"] == ["Egress"]
    dns, providers = egress["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert providers == {"ports": [{"port": 443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}

    values = {"networkPolicy": {"sidecar": {"namespaces": ["shop"], "allowOtherPorts": False, "egress": {"enabled": True}}}}
    policies = network_policies(documents(chart, values))
    assert [r["ports"] for r in policies[("shop", "detour-sidecar-admin")]["ingress"]] == [
        [{"port": 9090, "protocol": "TCP"}]] * 2, "monitoring and the operator, nothing else"
    v4, v6 = policies[("shop", "detour-provider-egress")]["egress"][1]["to"]
    assert v4["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"169.254.0.0/16", "10.0.0.0/8", "127.0.0.0/8"} <= set(v4["ipBlock"]["except"])
    assert v6["ipBlock"]["cidr"] == "::/0" and "fe80::/10" in v6["ipBlock"]["except"]
    assert set(network_policies(documents(chart, None))) == {(NAMESPACE, "detour-operator")}


def test_resource_quota_on_routes(chart) -> None:
    """The optional ResourceQuota caps ModelRoutes and RoutingPolicies in each listed
    namespace; none by default."""
    quotas = by_kind(documents(chart, ALL_ON), "ResourceQuota")
    assert [q["metadata"]["namespace"] for q in quotas] == ["shop", "web"]
    assert quotas[0]["spec"]["hard"] == {"count/modelroutes.detour.dev": "5", "count/routingpolicies.detour.dev": "10"}
    assert not by_kind(documents(chart, None), "ResourceQuota")


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


def test_notes_give_the_next_commands(chart) -> None:
    """NOTES.txt tells the user what to type next: a Secret, a ModelRoute, the namespace and
    pod labels."""
    notes = render(chart, None)["detour/templates/NOTES.txt"]
    assert "kubectl label namespace my-app detour.dev/injection=enabled" in notes
    assert "kubectl -n my-app create secret generic openai" in notes
    assert "kind: ModelRoute" in notes and "kubectl -n my-app get modelroutes" in notes
    assert '"detour.dev/inject":"true"' in notes


def test_dashboard_is_valid_json_with_the_key_panels(chart) -> None:
    """The Grafana dashboard parses and shows fallback rate, breaker state, latency, overhead and
    fleet health (the share of pods holding each target open)."""
    (cm,) = by_kind(documents(chart, ALL_ON), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["detour.json"])
    titles = " | ".join(p["title"] for p in dashboard["panels"])
    for word in ["Fallback rate", "Breaker", "latency", "overhead", "Fleet health"]:
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
    (threshold 0.25); an open breaker for 5 minutes fires DetourBreakerOpen, except on a pod
    that holds it open only because the fleet does; a target open on most pods of a namespace
    (on their own observations) for 2 minutes fires DetourTargetOpenOnFleet, once."""
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
                    # Fleet: 3 of 4 pods hold "backup" open on their own, one only because the
                    # fleet does; a fleet-held pod alone fires nothing.
                    *[{"series": f'detour_breaker_state{{route="chat",target="backup",namespace="shop",pod="web-{i}"}}',
                       "values": "2x30"} for i in range(1, 5)],
                    *[{"series": f'detour_breaker_fleet_held{{route="chat",target="backup",namespace="shop",pod="web-{i}"}}',
                       "values": ("1x30" if i == 4 else "0x30")} for i in range(1, 5)],
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
                                         "description": "Target primary of route chat in pod shop/web-1 is skipped: it kept failing. Traffic is on its fallbacks."}},
                                    *[{"exp_labels": {"severity": "warning", "route": "chat", "target": "backup", "namespace": "shop", "pod": f"web-{i}"},
                                       "exp_annotations": {
                                           "summary": "A Detour circuit breaker has been open for 5 minutes",
                                           "description": f"Target backup of route chat in pod shop/web-{i} is skipped: it kept failing. Traffic is on its fallbacks."}}
                                      for i in range(1, 4)]]},
                    {"eval_time": "1m", "alertname": "DetourTargetOpenOnFleet", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "DetourTargetOpenOnFleet",
                     "exp_alerts": [{"exp_labels": {"severity": "critical", "namespace": "shop", "route": "chat", "target": t},
                                     "exp_annotations": {
                                         "summary": "A provider target is open on most of the fleet",
                                         "description": f"Target {t} of route chat is open on {share} of the pods of namespace shop, on their own observations: the provider is failing for everyone, and every pod serves from its fallbacks. `kubectl get modelroutes -n shop` shows the failure class."}}
                                    for t, share in [("primary", "100%"), ("backup", "75%")]]},
                ],
            }
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
