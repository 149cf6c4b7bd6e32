//! The generated CRDs, checked the way an apiserver would: the OpenAPI schema (types, enums,
//! patterns, ranges) and the CEL rules (evaluated locally with kube-cel). Every example must
//! pass; every object in the table of invalid ones must fail for its stated reason.

#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed expectation is a failed test"
)]

use detour_api::{ModelRoute, RoutingPolicy};
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let version = crd.spec.versions.first().expect("one version");
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("schema serialises")
}

fn schema_for(kind: &str) -> Value {
    match kind {
        "ModelRoute" => schema_of(&ModelRoute::crd()),
        "RoutingPolicy" => schema_of(&RoutingPolicy::crd()),
        other => panic!("not a Detour kind: {other}"),
    }
}

/// Every reason the apiserver would reject `object`, as `path: message` lines.
fn admission_errors(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().expect("kind");
    let schema = schema_for(kind);
    let mut errors = Vec::new();
    let validator = jsonschema::validator_for(&schema).expect("schema is valid JSON schema");
    for e in validator.iter_errors(object) {
        errors.push(format!("{}: {}", e.instance_path(), e));
    }
    if let Err(cel) = kube_cel::validate(&schema, object, None) {
        for e in cel.into_vec() {
            errors.push(format!("{}: {}", e.field_path, e.message));
        }
    }
    errors
}

fn yaml_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("example is valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn walk_rules(node: &Value, at: &str, out: &mut Vec<(String, Value, String)>) {
    if let Some(rules) = node.get("x-kubernetes-validations").and_then(Value::as_array) {
        for r in rules {
            out.push((
                at.to_owned(),
                node.clone(),
                r["rule"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk_rules(v, &format!("{at}.{k}"), out);
        }
    }
    if let Some(items) = node.get("items") {
        walk_rules(items, &format!("{at}[]"), out);
    }
}

/// Every CEL rule in both CRDs compiles and stays within the apiserver's cost budget, so the
/// CRDs install on a real cluster.
#[test]
fn every_cel_rule_compiles_within_the_cost_budget() {
    for kind in ["ModelRoute", "RoutingPolicy"] {
        let schema = schema_for(kind);
        let compiled = kube_cel::compile_schema(&schema);
        assert!(
            compiled.compilation_errors().is_empty(),
            "{kind}: {:?}",
            compiled.compilation_errors()
        );
        let mut rules = Vec::new();
        walk_rules(&schema, kind, &mut rules);
        assert!(!rules.is_empty(), "{kind} has CEL rules");
        for (at, node, rule) in rules {
            let node_schema = kube_cel::compile_schema(&node);
            let warnings = kube_cel::estimate_rule_cost(&rule, &node_schema);
            let over: Vec<_> = warnings
                .iter()
                .filter(|w| w.kind == kube_cel::WarningKind::CostExceeded)
                .collect();
            assert!(over.is_empty(), "{at}: {rule}: {over:?}");
        }
    }
}

/// Every example in `examples/` is accepted by the generated CRDs.
#[test]
fn every_example_passes_admission() {
    let dir = format!("{}/../examples", manifest_dir());
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        for doc in yaml_documents(&text) {
            let errors = admission_errors(&doc);
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 7, "expected the shipped examples, found {seen} documents");
}

fn route() -> Value {
    json!({
        "apiVersion": "detour.dev/v1alpha1",
        "kind": "ModelRoute",
        "metadata": {"name": "r", "namespace": "team-a"},
        "spec": {
            "model": "smart/balanced",
            "targets": [
                {"name": "openai", "provider": "openai", "model": "gpt-4o", "credentials": {"secretName": "openai"}},
                {"name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5", "credentials": {"secretName": "anthropic"}},
            ],
        }
    })
}

fn policy() -> Value {
    json!({
        "apiVersion": "detour.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "p", "namespace": "team-a"},
        "spec": {
            "strategy": "priority",
            "retry": {"attempts": 2, "backoff": {"base": "80ms", "max": "2s", "jitter": 0.2}, "on": ["5xx", "429"]},
            "timeouts": {"perAttempt": "30s", "firstByte": "10s", "total": "60s"},
            "health": {"failureThreshold": 5, "errorRate": {"threshold": 0.5, "window": "30s", "minRequests": 20}, "cooldown": "60s"},
            "rules": [{"name": "free", "when": {"all": [{"tag": "tier", "op": "eq", "value": "free"}]}, "then": {"strategy": "lowest-cost"}}],
        }
    })
}

/// Sets `value` at a `/`-separated path, creating objects on the way.
fn set(mut doc: Value, path: &str, value: Value) -> Value {
    let mut node = &mut doc;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        node = match node {
            Value::Array(items) => {
                let idx: usize = part.parse().expect("index");
                if last {
                    items[idx] = value;
                    return doc;
                }
                &mut items[idx]
            }
            Value::Object(map) => {
                if last {
                    map.insert((*part).to_owned(), value);
                    return doc;
                }
                map.entry((*part).to_owned()).or_insert_with(|| json!({}))
            }
            _ => panic!("cannot descend into {part}"),
        };
    }
    doc
}

/// `responses` passes admission on the providers that serve the Responses API natively.
#[test]
fn responses_capability_passes_admission_on_openai_shaped_providers() {
    for (provider, extra) in [
        ("openai", json!({})),
        ("azure-openai", json!({"endpoint": "https://x.openai.azure.com"})),
        (
            "openai-compatible",
            json!({"endpoint": "https://llm.example.com/v1"}),
        ),
    ] {
        let mut target = json!({"name": "n", "provider": provider, "model": "m",
                                "credentials": {"secretName": "s"}, "capabilities": ["streaming", "responses"]});
        for (k, v) in extra.as_object().expect("object") {
            target[k] = v.clone();
        }
        let doc = set(route(), "spec/targets/1", target);
        assert_eq!(admission_errors(&doc), Vec::<String>::new(), "{provider}");
    }
}

/// The generated CRDs reject each invalid object, and the error names the field and the reason.
#[test]
fn invalid_objects_are_rejected_for_the_stated_reason() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no targets",
            set(route(), "spec/targets", json!([])),
            "/spec/targets: [] has less than 1 item",
        ),
        (
            "duplicate target names",
            set(route(), "spec/targets/1/name", json!("openai")),
            "spec: spec.targets: target names must be unique within a route",
        ),
        (
            "unknown provider",
            set(route(), "spec/targets/0/provider", json!("opnai")),
            "/spec/targets/0/provider: \"opnai\" is not one of",
        ),
        (
            "uppercase target name",
            set(route(), "spec/targets/0/name", json!("OpenAI")),
            "/spec/targets/0/name: \"OpenAI\" does not match",
        ),
        (
            "bedrock without region",
            set(
                route(),
                "spec/targets/1",
                json!({"name": "b", "provider": "bedrock", "model": "m"}),
            ),
            "region is required for provider bedrock",
        ),
        (
            "azure without endpoint",
            set(
                route(),
                "spec/targets/1",
                json!({"name": "az", "provider": "azure-openai", "model": "m", "credentials": {"secretName": "az"}}),
            ),
            "endpoint is required for providers azure-openai and openai-compatible",
        ),
        (
            "the responses capability on a provider that cannot serve it natively",
            set(
                route(),
                "spec/targets/1/capabilities",
                json!(["tools", "responses"]),
            ),
            "capabilities: responses (the Responses API served natively) is only for providers openai, azure-openai and openai-compatible",
        ),
        (
            "openai without credentials",
            set(
                route(),
                "spec/targets/0",
                json!({"name": "openai", "provider": "openai", "model": "gpt-4o"}),
            ),
            "credentials are required for providers openai, azure-openai and anthropic",
        ),
        (
            "credentials naming nothing",
            set(route(), "spec/targets/0/credentials", json!({})),
            "credentials: set secretName",
        ),
        (
            "credentials over plain http without the opt-in",
            set(
                route(),
                "spec/targets/1",
                json!({"name": "vllm", "provider": "openai-compatible", "model": "m",
                       "endpoint": "http://vllm.models.svc:8000/v1", "credentials": {"secretName": "vllm"}}),
            ),
            "allowPlainHttp: credentials go over plain http:// only when the target sets allowPlainHttp: true",
        ),
        (
            "region that is not a region",
            set(
                route(),
                "spec/targets/1",
                json!({"name": "b", "provider": "bedrock", "model": "m", "region": "x@evil.example/"}),
            ),
            "/spec/targets/1/region: \"x@evil.example/\" does not match",
        ),
        (
            "token file outside the projected-token directory",
            set(
                route(),
                "spec/targets/1",
                json!({"name": "b", "provider": "bedrock", "model": "m", "region": "us-east-1",
                       "credentials": {"webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/x",
                                                       "tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}}}),
            ),
            "/spec/targets/1/credentials/webIdentity/tokenFile: \"/var/run/secrets/kubernetes.io/serviceaccount/token\" does not match",
        ),
        (
            "route rule naming an unknown target",
            set(
                route(),
                "spec/rules",
                json!([{"name": "eu", "when": {"all": [{"tag": "region", "op": "eq", "value": "eu"}]}, "then": {"targets": ["gemini"]}}]),
            ),
            "spec.rules[].then.targets: every name must be one of spec.targets[].name",
        ),
        (
            "weight out of range",
            set(route(), "spec/targets/0/weight", json!(5000)),
            "/spec/targets/0/weight: 5000 is greater than the maximum of 1000",
        ),
        (
            "bad duration",
            set(policy(), "spec/timeouts/perAttempt", json!("30 seconds")),
            "/spec/timeouts/perAttempt: \"30 seconds\" does not match",
        ),
        (
            "per-attempt longer than total",
            set(policy(), "spec/timeouts/perAttempt", json!("2m")),
            "timeouts.perAttempt must not exceed timeouts.total",
        ),
        (
            "backoff base above max",
            set(policy(), "spec/retry/backoff/base", json!("5s")),
            "backoff.base must not exceed backoff.max",
        ),
        (
            "zero attempts",
            set(policy(), "spec/retry/attempts", json!(0)),
            "/spec/retry/attempts: 0 is less than the minimum of 1",
        ),
        (
            "error-rate threshold above 1",
            set(policy(), "spec/health/errorRate/threshold", json!(1.5)),
            "/spec/health/errorRate/threshold: 1.5 is greater than the maximum of 1",
        ),
        (
            "unknown strategy",
            set(policy(), "spec/strategy", json!("fastest")),
            "/spec/strategy: \"fastest\" is not one of",
        ),
        (
            "unknown retry trigger",
            set(policy(), "spec/retry/on", json!(["5xx", "503"])),
            "/spec/retry/on/1: \"503\" is not one of",
        ),
        (
            "repeated retry trigger",
            set(policy(), "spec/retry/on", json!(["5xx", "5xx"])),
            "retry.on: each trigger at most once",
        ),
        (
            "rule with both all and any",
            set(
                policy(),
                "spec/rules/0/when/any",
                json!([{"tag": "a", "op": "exists"}]),
            ),
            "when: set exactly one of all or any",
        ),
        (
            "gt with a non-number",
            set(
                policy(),
                "spec/rules/0/when/all/0",
                json!({"tag": "size", "op": "gt", "value": "big"}),
            ),
            "value must be a number for gt and lt",
        ),
        (
            "in without values",
            set(
                policy(),
                "spec/rules/0/when/all/0",
                json!({"tag": "tier", "op": "in"}),
            ),
            "values is required for op in",
        ),
        (
            "rule without action",
            set(policy(), "spec/rules/0/then", json!({})),
            "then: set targets, strategy, continueOnFailure, or more than one",
        ),
        (
            "scoring thresholds crossed",
            set(
                policy(),
                "spec/scoring",
                json!({"simpleBelow": 0.8, "complexAbove": 0.2}),
            ),
            "scoring.simpleBelow must not exceed scoring.complexAbove",
        ),
        (
            "429 retried on the same target",
            set(policy(), "spec/retry/sameTarget", json!(["429"])),
            "only 5xx, connect-error and timeout may be retried on the same target",
        ),
        (
            "a same-target class twice",
            set(policy(), "spec/retry/sameTarget", json!(["5xx", "5xx"])),
            "retry.sameTarget: each class at most once",
        ),
        (
            "zero stream idle",
            set(policy(), "spec/timeouts/streamIdle", json!("0s")),
            "timeouts.streamIdle must be greater than 0",
        ),
        (
            "unknown response model",
            set(policy(), "spec/responseModel", json!("served")),
            "/spec/responseModel: \"served\" is not one of",
        ),
        (
            "responseModel contradicting exposeUpstreamModel",
            set(
                set(policy(), "spec/responseModel", json!("route")),
                "spec/exposeUpstreamModel",
                json!(true),
            ),
            "responseModel and the deprecated exposeUpstreamModel disagree",
        ),
        (
            "cooldown above maxCooldown",
            set(
                policy(),
                "spec/health",
                json!({"cooldown": "1m", "maxCooldown": "30s"}),
            ),
            "health.cooldown must not exceed health.maxCooldown",
        ),
        (
            "share and thresholds together",
            set(
                policy(),
                "spec/scoring",
                json!({"cheapShare": 0.6, "simpleBelow": 0.2}),
            ),
            "scoring.cheapShare replaces simpleBelow and complexAbove",
        ),
    ];
    // The unmodified objects are valid: each case fails for its own reason only.
    assert_eq!(admission_errors(&route()), Vec::<String>::new());
    assert_eq!(admission_errors(&policy()), Vec::<String>::new());
    let opted_in = set(
        route(),
        "spec/targets/1",
        json!({"name": "vllm", "provider": "openai-compatible", "model": "m", "allowPlainHttp": true,
               "endpoint": "http://vllm.models.svc:8000/v1", "credentials": {"secretName": "vllm"}}),
    );
    assert_eq!(
        admission_errors(&opted_in),
        Vec::<String>::new(),
        "the opt-in admits plain http"
    );
    for (name, object, expected) in cases {
        let errors = admission_errors(&object);
        eprintln!("{name}: {errors:?}");
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "case {name:?}: expected an error containing {expected:?}, got {errors:#?}"
        );
    }
}

/// This package's directory, read when the test runs (cargo sets it), so a test binary built
/// from another checkout sharing the target directory reads this checkout's files.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}
