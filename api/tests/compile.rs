//! `compile`: the clean case against a golden table, and every diagnostic with its exact field
//! path and message.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use detour_api::compile::{Kind, ObjectKey, Reason, SecretState, Severity};
use detour_api::egress::AllowedHosts;
use detour_api::table::CredentialSource;
use detour_api::{Compiled, Input, ModelRoute, RoutingPolicy, SecretIndex, compile, parse_yaml};
use pretty_assertions::assert_eq;

const OPERATOR_NS: &str = "detour-system";

fn objects(yaml: &str) -> (Vec<ModelRoute>, Vec<RoutingPolicy>) {
    let o = parse_yaml(yaml).unwrap();
    (o.routes, o.policies)
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../examples/{name}", manifest_dir())).unwrap()
}

fn all_secrets(ns: &str) -> SecretIndex {
    let mut s = SecretIndex::new();
    s.opted_in(ns, "openai");
    s.opted_in(ns, "anthropic");
    s.opted_in(ns, "aws-bedrock");
    s.opted_in(ns, "gcp");
    s
}

fn compile_cluster(yaml: &str, secrets: &SecretIndex) -> Compiled {
    let (routes, policies) = objects(yaml);
    compile(&Input::cluster(&routes, &policies, secrets, OPERATOR_NS))
}

fn route_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::ModelRoute,
        namespace: ns.into(),
        name: name.into(),
    }
}

fn policy_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::RoutingPolicy,
        namespace: ns.into(),
        name: name.into(),
    }
}

/// `(field, message)` of every diagnostic about `object`.
fn diags(c: &Compiled, object: &ObjectKey) -> Vec<(String, String)> {
    c.diagnostics_for(object)
        .map(|d| (d.field.clone(), d.message.clone()))
        .collect()
}

const ROUTE: &str = r#"
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: chat, namespace: team-a}
spec:
  model: chat/default
  targets:
    - {name: openai, provider: openai, model: gpt-4o, credentials: {secretName: openai}}
    - {name: claude, provider: anthropic, model: claude-sonnet-4-5, credentials: {secretName: anthropic}}
"#;

/// The three-provider example compiles cleanly into the golden route table: every knob
/// resolved, durations in ms, credentials as mounted file paths. `DETOUR_BLESS=1` rewrites it.
#[test]
fn three_provider_chain_compiles_to_the_golden_table() {
    let c = compile_cluster(&example("three-provider-chain.yaml"), &all_secrets("default"));
    assert_eq!(c.diagnostics, vec![]);
    assert_eq!(c.table.routes.len(), 1);
    assert!(c.table.excluded.is_empty());
    let route = &c.table.routes[0];
    assert_eq!(route.policy.source, "default/resilient");
    assert_eq!(route.policy.retry.backoff_base_ms, 80);
    assert_eq!(route.policy.timeouts.per_attempt_ms, 600_000);
    assert_eq!(route.policy.timeouts.stream_idle_ms, 60_000);
    assert_eq!(route.policy.health.cooldown_ms, 60_000);
    assert_eq!(route.policy.health.probe_first_byte_ms, 5_000);
    assert_eq!(route.policy.retry.rate_limit_max_wait_ms, 10_000);
    let names: Vec<_> = route.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["openai", "anthropic", "bedrock"]);
    assert_eq!(
        route.targets[2].first_byte_ms, 20_000,
        "the target's own timeout overrides the policy's"
    );
    assert_eq!(route.targets[2].stream_idle_ms, 60_000, "the policy's");
    let bedrock = route.targets[2].credentials.as_ref().unwrap();
    assert_eq!(
        bedrock.access_key_id,
        Some(CredentialSource::File(
            "/var/run/detour/credentials/aws-bedrock/aws-access-key-id".into()
        ))
    );
    assert_eq!(
        bedrock.session_token, None,
        "no keys.sessionToken, no session token"
    );

    let golden_path = format!("{}/tests/golden/three-provider-chain.routes.json", manifest_dir());
    let actual = c.table.to_json();
    if std::env::var_os("DETOUR_BLESS").is_some() {
        std::fs::write(&golden_path, &actual).unwrap();
    }
    let golden =
        std::fs::read_to_string(&golden_path).expect("golden file; run with DETOUR_BLESS=1 to create");
    assert_eq!(actual, golden);
}

/// The built-in defaults fit LLM calls and recovery: a several-minute non-streaming attempt
/// fits `perAttempt` and `total`, streams are bounded by `streamIdle`, timeouts and 429s are
/// not retried on the same target, `maxCooldown` follows `cooldown` (also when only
/// `cooldown` is set), answers name the upstream model and non-streaming requests are
/// assembled from streams.
#[test]
fn defaults_fit_llm_calls() {
    use detour_api::table::{ResponseModel, RetryOn};
    let policy = |spec: &str| {
        let yaml = format!(
            "apiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata: {{name: p, namespace: team-a}}\nspec:\n{spec}\n---\n{}",
            ROUTE.replace(
                "  model: chat/default",
                "  model: chat/default\n  policyRef: {name: p}"
            )
        );
        let c = compile_cluster(&yaml, &all_secrets("team-a"));
        assert_eq!(c.diagnostics, vec![], "{spec}");
        c.table.routes[0].policy.clone()
    };
    let p = policy("  strategy: priority");
    assert!(p.timeouts.per_attempt_ms >= 5 * 60_000 && p.timeouts.total_ms >= p.timeouts.per_attempt_ms);
    assert_eq!(p.timeouts.first_byte_ms, 15_000);
    assert_eq!(p.timeouts.stream_idle_ms, 60_000);
    assert_eq!(
        p.retry.same_target,
        vec![RetryOn::ServerError, RetryOn::ConnectError]
    );
    assert_eq!(p.health.max_cooldown_ms, p.health.cooldown_ms);
    assert_eq!(p.response_model, ResponseModel::Upstream);
    assert!(p.streaming.assemble);
    let p = policy("  health: {cooldown: 45s}");
    assert_eq!(p.health.max_cooldown_ms, 45_000, "maxCooldown follows cooldown");
    let p = policy("  exposeUpstreamModel: false");
    assert_eq!(
        p.response_model,
        ResponseModel::Route,
        "the deprecated field still applies"
    );
    let p = policy("  retry: {sameTarget: [timeout]}\n  streaming: {assemble: false}");
    assert_eq!(p.retry.same_target, vec![RetryOn::Timeout]);
    assert!(!p.streaming.assemble);
}

/// Invalid new knobs are reported on their fields: a class that cannot be retried on the same
/// target, a zero stream-idle bound, a `responseModel` that contradicts the deprecated
/// `exposeUpstreamModel`.
#[test]
fn invalid_llm_knobs_are_reported_on_their_fields() {
    for (spec, field) in [
        ("  retry: {sameTarget: [\"429\"]}", "spec.retry.sameTarget"),
        ("  timeouts: {streamIdle: 0s}", "spec.timeouts.streamIdle"),
        ("  health: {probeFirstByte: 0ms}", "spec.health.probeFirstByte"),
        (
            "  responseModel: route\n  exposeUpstreamModel: true",
            "spec.exposeUpstreamModel",
        ),
    ] {
        let yaml = format!(
            "apiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata: {{name: p, namespace: team-a}}\nspec:\n{spec}\n---\n{}",
            ROUTE.replace(
                "  model: chat/default",
                "  model: chat/default\n  policyRef: {name: p}"
            )
        );
        let c = compile_cluster(&yaml, &all_secrets("team-a"));
        let d = diags(&c, &policy_key("team-a", "p"));
        assert!(d.iter().any(|(f, _)| f == field), "{spec}: {d:?}");
    }
}

/// Compiling is deterministic: objects in another order give a byte-equal table and hash.
#[test]
fn input_order_does_not_change_the_table() {
    let yaml = example("tag-routing.yaml") + "---\n" + &example("three-provider-chain.yaml");
    let (mut routes, mut policies) = objects(&yaml);
    let secrets = {
        let mut s = all_secrets("default");
        s.opted_in("default", "azure-openai-eu");
        s
    };
    let a = compile(&Input::cluster(&routes, &policies, &secrets, OPERATOR_NS));
    routes.reverse();
    policies.reverse();
    let b = compile(&Input::cluster(&routes, &policies, &secrets, OPERATOR_NS));
    assert_eq!(a.table.to_json(), b.table.to_json());
    assert!(a.table.hash.starts_with("sha256:"));
    assert_eq!(a.diagnostics, vec![]);
}

/// A policyRef naming a policy that does not exist leaves the route out and says how to fix it.
#[test]
fn missing_policy_is_reported_on_the_route_field() {
    let yaml = ROUTE.replace(
        "  model: chat/default\n",
        "  model: chat/default\n  policyRef: {name: prod}\n",
    );
    let c = compile_cluster(&yaml, &all_secrets("team-a"));
    let key = route_key("team-a", "chat");
    assert_eq!(
        diags(&c, &key),
        vec![(
            "spec.policyRef.name".to_owned(),
            "RoutingPolicy \"prod\" not found in namespace \"team-a\"; create it or remove policyRef to use the default"
                .to_owned()
        )]
    );
    assert!(c.table.routes.is_empty());
    assert_eq!(c.table.excluded.len(), 1);
    assert_eq!(c.table.excluded[0].target, None);
    assert!(
        c.table.excluded[0]
            .reason
            .starts_with("spec.policyRef.name: RoutingPolicy \"prod\" not found")
    );
    let r = c.readiness(&key);
    assert!(!r.ready);
    assert_eq!(r.reason, "PolicyNotFound");
}

/// A missing Secret leaves out only that target; the route keeps serving with the others and
/// is reported as degraded with the command that fixes it.
#[test]
fn missing_secret_leaves_out_only_that_target() {
    let mut secrets = SecretIndex::new();
    secrets.opted_in("team-a", "openai");
    let c = compile_cluster(ROUTE, &secrets);
    let key = route_key("team-a", "chat");
    assert_eq!(
        diags(&c, &key),
        vec![(
            "spec.targets[1].credentials.secretName".to_owned(),
            "Secret \"anthropic\" not found in namespace \"team-a\"; create it (kubectl -n team-a create secret \
             generic anthropic --from-literal=api-key=...), label it detour.dev/credentials=true, or fix the name; \
             this target is left out until then"
                .to_owned()
        )]
    );
    let route = c.table.route("chat/default").unwrap();
    assert_eq!(
        route.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["openai"]
    );
    assert_eq!(c.table.excluded.len(), 1);
    assert_eq!(c.table.excluded[0].target.as_deref(), Some("claude"));
    let r = c.readiness(&key);
    assert!(!r.ready);
    assert_eq!(r.reason, "DegradedSecretNotFound");
}

/// A Secret without the opt-in label is refused, naming the label and the command; the
/// operator never learns (and the table never names) the Secret's keys.
#[test]
fn secret_without_the_opt_in_label_is_refused() {
    let mut secrets = all_secrets("team-a");
    secrets.insert("team-a", "db-creds", SecretState::NotOptedIn);
    let yaml = ROUTE.replace(
        "secretName: anthropic}",
        "secretName: db-creds, keys: {apiKey: password}}",
    );
    let c = compile_cluster(&yaml, &secrets);
    assert_eq!(
        diags(&c, &route_key("team-a", "chat")),
        vec![(
            "spec.targets[1].credentials.secretName".to_owned(),
            "Secret \"db-creds\" is not labelled detour.dev/credentials: \"true\"; only Secrets their owner opted \
             in may be referenced by a route (kubectl -n team-a label secret db-creds detour.dev/credentials=true); \
             this target is left out until then"
                .to_owned()
        )]
    );
    assert_eq!(c.table.excluded.len(), 1);
    assert!(
        !c.table.to_json().contains("db-creds/"),
        "no path to the Secret's files"
    );
    assert_eq!(
        c.readiness(&route_key("team-a", "chat")).reason,
        "DegradedSecretNotOptedIn"
    );
}

/// A Secret the operator may not read (no RoleBinding in that namespace) is refused with
/// the binding to create.
#[test]
fn unreadable_secret_names_the_role_binding_to_create() {
    let mut secrets = all_secrets("team-a");
    secrets.insert("team-a", "anthropic", SecretState::Unreadable);
    let c = compile_cluster(ROUTE, &secrets);
    let d: Vec<_> = c.diagnostics_for(&route_key("team-a", "chat")).collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].field, "spec.targets[1].credentials.secretName");
    assert_eq!(d[0].reason, Reason::SecretNotReadable);
    assert!(d[0].message.contains("RoleBinding"), "{}", d[0].message);
}

/// The attacks of a ModelRoute author without Secret read: an unlabelled Secret sent over
/// plain http to a loopback listener, a region that turns the Bedrock and STS URLs into the
/// listener, the pod's service-account token as the web-identity token. Each is refused at
/// compile: nothing is served, and the table names no path to the Secret's files.
#[test]
fn exfiltration_routes_are_refused_at_compile() {
    let yaml = r#"
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: exfil, namespace: team-a}
spec:
  model: exfil
  targets:
    - {name: t, provider: openai-compatible, model: m, endpoint: "http://127.0.0.1:8080/v1", credentials: {secretName: db-creds, keys: {apiKey: password}}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: region-trick, namespace: team-a}
spec:
  model: region-trick
  targets:
    - {name: t, provider: bedrock, model: m, region: "x@127.0.0.1:8080/", credentials: {secretName: aws-bedrock}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: token-trick, namespace: team-a}
spec:
  model: token-trick
  targets:
    - {name: t, provider: bedrock, model: m, region: us-east-1, credentials: {webIdentity: {roleArn: "arn:aws:iam::123456789012:role/x", tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}}}
"#;
    let mut secrets = all_secrets("team-a");
    secrets.insert("team-a", "db-creds", SecretState::NotOptedIn);
    let c = compile_cluster(yaml, &secrets);
    assert!(c.table.routes.is_empty(), "{:?}", c.table.routes);
    let json = c.table.to_json();
    assert!(!json.contains("/var/run/detour/credentials/"), "{json}");
    assert!(!json.contains("serviceaccount/token\""), "{json}");
    let first = |name: &str| {
        c.diagnostics_for(&route_key("team-a", name))
            .next()
            .unwrap()
            .clone()
    };
    let d = first("exfil");
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.targets[0].credentials.secretName", Reason::SecretNotOptedIn)
    );
    let d = first("region-trick");
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.targets[0].region", Reason::DestinationRefused)
    );
    let d = first("token-trick");
    assert_eq!(
        (d.field.as_str(), d.reason),
        (
            "spec.targets[0].credentials.webIdentity.tokenFile",
            Reason::CredentialPathRefused
        )
    );
    // With the Secret opted in, credentials over plain http still need the target's opt-in;
    // with that too, loopback is still not a host the platform allowed.
    secrets.opted_in("team-a", "db-creds");
    let c = compile_cluster(yaml, &secrets);
    let d = c
        .diagnostics_for(&route_key("team-a", "exfil"))
        .next()
        .unwrap()
        .clone();
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.targets[0].allowPlainHttp", Reason::DestinationRefused)
    );
    let yaml = yaml.replace(
        "endpoint: \"http://127.0.0.1:8080/v1\",",
        "endpoint: \"http://127.0.0.1:8080/v1\", allowPlainHttp: true,",
    );
    let c = compile_cluster(&yaml, &secrets);
    let d = c
        .diagnostics_for(&route_key("team-a", "exfil"))
        .next()
        .unwrap()
        .clone();
    assert_eq!(
        (d.field.as_str(), d.reason),
        ("spec.targets[0].endpoint", Reason::DestinationRefused)
    );
    assert!(
        d.message.contains("not in the platform's allowlist"),
        "{}",
        d.message
    );
}

/// Each destination rule refuses the target with the field it is about and the rule.
#[test]
fn destination_rules_name_the_field_and_the_rule() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "{name: t, provider: openai, model: m, endpoint: \"http://api.openai.com/v1\", credentials: {secretName: openai}}",
            "spec.targets[0].endpoint",
            "plain http:// is allowed only to loopback or an in-cluster Service",
        ),
        (
            "{name: t, provider: openai-compatible, model: m, endpoint: \"http://vllm.models.svc:8000/v1\", credentials: {secretName: openai}}",
            "spec.targets[0].allowPlainHttp",
            "credentials go over plain http:// only when the target sets allowPlainHttp: true",
        ),
        (
            "{name: t, provider: openai-compatible, model: m, endpoint: \"https://169.254.169.254/latest\"}",
            "spec.targets[0].endpoint",
            "link-local or cloud-metadata address",
        ),
        (
            "{name: t, provider: openai-compatible, model: m, endpoint: \"http://metadata.google.internal/v1\"}",
            "spec.targets[0].endpoint",
            "link-local or cloud-metadata address",
        ),
        (
            "{name: t, provider: openai-compatible, model: m, endpoint: \"https://llm.evil.example/v1\", credentials: {secretName: openai}}",
            "spec.targets[0].endpoint",
            "host \"llm.evil.example\" is not in the platform's allowlist of endpoint hosts",
        ),
        (
            "{name: t, provider: openai, model: m, endpoint: \"https://user:pw@api.openai.com/v1\", credentials: {secretName: openai}}",
            "spec.targets[0].endpoint",
            "must not carry user:password@",
        ),
        (
            "{name: t, provider: bedrock, model: m, region: \"x@evil.example/\", credentials: {secretName: aws-bedrock}}",
            "spec.targets[0].region",
            "is not a region",
        ),
        (
            "{name: t, provider: bedrock, model: m, region: us-east-1, credentials: {webIdentity: {roleArn: \"arn:aws:iam::123456789012:role/x\", tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}}}",
            "spec.targets[0].credentials.webIdentity.tokenFile",
            "is not a file in the projected-token directory",
        ),
        (
            "{name: t, provider: bedrock, model: m, region: us-east-1, credentials: {webIdentity: {roleArn: \"arn:aws:iam::123456789012:role/x\", tokenFile: /var/run/secrets/eks.amazonaws.com/serviceaccount/../../kubernetes.io/serviceaccount/token}}}",
            "spec.targets[0].credentials.webIdentity.tokenFile",
            "is not a file in the projected-token directory",
        ),
        (
            "{name: t, provider: azure-openai, model: m, endpoint: \"https://x.openai.azure.com\", credentials: {azureWorkloadIdentity: {tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}}}",
            "spec.targets[0].credentials.azureWorkloadIdentity.tokenFile",
            "is not a file in the projected-token directory",
        ),
        (
            "{name: t, provider: azure-openai, model: m, endpoint: \"https://x.openai.azure.com\", credentials: {azureWorkloadIdentity: {tokenFile: /var/run/secrets/azure/tokens/../../kubernetes.io/serviceaccount/token}}}",
            "spec.targets[0].credentials.azureWorkloadIdentity.tokenFile",
            "is not a file in the projected-token directory",
        ),
    ];
    for (target, field, rule) in cases {
        let yaml = format!(
            "apiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata: {{name: r, namespace: team-a}}\nspec:\n  model: m\n  targets:\n    - {target}\n"
        );
        let c = compile_cluster(&yaml, &all_secrets("team-a"));
        let d: Vec<_> = c.diagnostics_for(&route_key("team-a", "r")).collect();
        assert_eq!(d[0].field, *field, "{target}");
        assert!(d[0].message.contains(rule), "{target}: {}", d[0].message);
        assert!(c.table.routes.is_empty(), "{target}");
        let left_out: Vec<_> = c.table.excluded.iter().filter(|e| e.target.is_some()).collect();
        assert_eq!(left_out.len(), 1, "{target}");
        assert!(left_out[0].reason.starts_with(field), "{target}");
    }
}

/// What the rules allow: https to the providers' hosts and to hosts the platform added,
/// plain http with credentials to an in-cluster Service only with the opt-in, and plain
/// http without credentials to loopback when the platform allows loopback.
#[test]
fn destination_rules_allow_what_the_platform_allows() {
    let allowed =
        AllowedHosts::parse(["*.openai.azure.com", "vllm.models.svc.cluster.local", "127.0.0.1"]).unwrap();
    let yaml = r#"
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: r, namespace: team-a}
spec:
  model: m
  targets:
    - {name: az, provider: azure-openai, model: m, endpoint: "https://contoso.openai.azure.com", credentials: {secretName: openai}}
    - {name: vllm, provider: openai-compatible, model: m, endpoint: "http://vllm.models.svc.cluster.local:8000/v1", allowPlainHttp: true, credentials: {secretName: openai}}
    - {name: local, provider: openai-compatible, model: m, endpoint: "http://127.0.0.1:8000/v1"}
    - {name: oai, provider: openai, model: m, credentials: {secretName: openai}}
"#;
    let (routes, policies) = objects(yaml);
    let secrets = all_secrets("team-a");
    let c = compile(&Input::cluster(&routes, &policies, &secrets, OPERATOR_NS).with_allowed_hosts(&allowed));
    let d: Vec<_> = c
        .diagnostics_for(&route_key("team-a", "r"))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        d,
        vec![
            "spec.targets[3].endpoint: host \"api.openai.com\" is not in the platform's allowlist of endpoint hosts \
             (*.openai.azure.com, vllm.models.svc.cluster.local, 127.0.0.1); the operator's --allowed-hosts (chart value) \
             or the standalone sidecar's --allowed-hosts decides it, not the route; this target is left out until then"
        ],
        "a narrowed allowlist applies to the providers' default hosts too"
    );
    let route = c.table.route("m").unwrap();
    assert_eq!(route.targets.len(), 3);
    assert!(route.targets[1].allow_plain_http);

    let c = compile_cluster(yaml, &secrets);
    let fields: Vec<_> = c
        .diagnostics_for(&route_key("team-a", "r"))
        .map(|d| d.field.clone())
        .collect();
    assert_eq!(
        fields,
        ["spec.targets[1].endpoint", "spec.targets[2].endpoint"],
        "the cluster default allows only the providers' public hosts"
    );
}

/// Standalone, credential files must be inside the credentials directory: a relative
/// `apiKeyFile` resolves there, an absolute one elsewhere is refused naming the directory.
#[test]
fn standalone_credential_files_stay_inside_the_credentials_directory() {
    let yaml = |file: &str| {
        ROUTE.replace(
            "credentials: {secretName: openai}",
            &format!("credentials: {{apiKeyFile: {file}}}"),
        )
    };
    let allowed = AllowedHosts::standalone();
    let c = detour_api::compile_yaml_with(&yaml("openai.key"), "/home/me/keys", &allowed).unwrap();
    let t = &c.table.route("chat/default").unwrap().targets[0];
    assert_eq!(
        t.credentials.as_ref().unwrap().api_key,
        Some(CredentialSource::File("/home/me/keys/openai.key".into()))
    );
    assert_eq!(
        c.table.route("chat/default").unwrap().targets[1]
            .credentials
            .as_ref()
            .unwrap()
            .api_key,
        Some(CredentialSource::File("/home/me/keys/anthropic/api-key".into())),
        "secretName resolves under the credentials directory"
    );
    for bad in ["/etc/passwd", "../x", "/home/me/keys/../.ssh/id_rsa"] {
        let c = detour_api::compile_yaml_with(&yaml(bad), "/home/me/keys", &allowed).unwrap();
        let d: Vec<_> = c.diagnostics_for(&route_key("team-a", "chat")).collect();
        assert_eq!(d[0].field, "spec.targets[0].credentials.apiKeyFile", "{bad}");
        assert_eq!(d[0].reason, Reason::CredentialPathRefused, "{bad}");
        assert!(
            d[0].message
                .contains("outside the credentials directory \"/home/me/keys\""),
            "{bad}"
        );
    }
}

/// Two routes claiming one model id: the oldest serves, the newer is left out, both are told.
#[test]
fn duplicate_model_id_is_reported_on_both_routes() {
    let yaml = format!(
        "{}\n---\n{}",
        ROUTE.replace(
            "namespace: team-a}",
            "namespace: team-a, creationTimestamp: \"2026-01-01T00:00:00Z\"}"
        ),
        ROUTE.replace("name: chat,", "name: chat-copy,").replace(
            "namespace: team-a}",
            "namespace: team-a, creationTimestamp: \"2026-02-01T00:00:00Z\"}"
        )
    );
    let c = compile_cluster(&yaml, &all_secrets("team-a"));
    assert_eq!(
        diags(&c, &route_key("team-a", "chat-copy")),
        vec![(
            "spec.model".to_owned(),
            "model \"chat/default\" is already served by ModelRoute team-a/chat; change spec.model or delete one of them"
                .to_owned()
        )]
    );
    assert_eq!(
        diags(&c, &route_key("team-a", "chat")),
        vec![(
            "spec.model".to_owned(),
            "model \"chat/default\" is also claimed by team-a/chat-copy; this route (the oldest) serves it"
                .to_owned()
        )]
    );
    assert_eq!(c.table.routes.len(), 1);
    assert_eq!(c.table.routes[0].source.name, "chat");
    let winner = c.readiness(&route_key("team-a", "chat"));
    assert!(winner.ready);
    assert_eq!(
        winner.conflict.as_ref().map(|c| c.0.as_str()),
        Some("DuplicateModel")
    );
    let loser = c.readiness(&route_key("team-a", "chat-copy"));
    assert!(!loser.ready);
    assert_eq!(loser.reason, "DuplicateModel");
    assert!(loser.conflict.is_some());
}

const TWO_DEFAULTS: &str = r#"
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: fast, namespace: team-a}
spec: {default: true, strategy: least-latency}
---
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: cheap, namespace: team-a}
spec: {default: true, strategy: lowest-cost}
"#;

/// Two default policies in one namespace: both get a Conflict, neither is picked, and routes
/// without policyRef use the built-in defaults and say so.
#[test]
fn two_defaults_in_one_scope_conflict_and_neither_is_picked() {
    let c = compile_cluster(&format!("{ROUTE}---{TWO_DEFAULTS}"), &all_secrets("team-a"));
    let expected = "RoutingPolicies \"cheap\", \"fast\" are all default for namespace \"team-a\"; set default: \
                    false on all but one (until then routes without policyRef use the built-in defaults)";
    for name in ["fast", "cheap"] {
        assert_eq!(
            diags(&c, &policy_key("team-a", name)),
            vec![("spec.default".to_owned(), expected.to_owned())]
        );
        let r = c.readiness(&policy_key("team-a", name));
        assert!(!r.ready);
        assert_eq!(r.conflict.map(|c| c.0), Some("DefaultConflict".to_owned()));
    }
    let route_diags = diags(&c, &route_key("team-a", "chat"));
    assert_eq!(
        route_diags,
        vec![(
            "spec.policyRef".to_owned(),
            "namespace \"team-a\" has more than one default RoutingPolicy; using the built-in defaults until only \
             one is left, or set policyRef"
                .to_owned()
        )]
    );
    assert_eq!(c.table.route("chat/default").unwrap().policy.source, "builtin");
}

/// A default policy in the operator's namespace applies cluster-wide; a namespace's own
/// default takes precedence over it.
#[test]
fn namespace_default_beats_cluster_default() {
    let cluster_default = r#"
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: global, namespace: detour-system}
spec: {default: true}
"#;
    let c = compile_cluster(&format!("{ROUTE}---{cluster_default}"), &all_secrets("team-a"));
    assert_eq!(
        c.table.route("chat/default").unwrap().policy.source,
        "detour-system/global"
    );
    let ns_default = cluster_default
        .replace("namespace: detour-system", "namespace: team-a")
        .replace("global", "mine");
    let c = compile_cluster(
        &format!("{ROUTE}---{cluster_default}---{ns_default}"),
        &all_secrets("team-a"),
    );
    assert_eq!(
        c.table.route("chat/default").unwrap().policy.source,
        "team-a/mine"
    );
    assert_eq!(
        c.policies
            .iter()
            .find(|p| p.object.name == "mine")
            .map(|p| p.route_count),
        Some(1)
    );
    assert_eq!(
        c.policies
            .iter()
            .find(|p| p.object.name == "global")
            .map(|p| p.route_count),
        Some(0)
    );
}

/// A bad duration in a policy is reported on the policy's field; routes using it are left out
/// rather than served with other timeouts than declared.
#[test]
fn bad_duration_invalidates_the_policy_and_its_routes() {
    let yaml = format!(
        "{}---\n{}",
        ROUTE.replace(
            "  model: chat/default\n",
            "  model: chat/default\n  policyRef: {name: p}\n"
        ),
        "apiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata: {name: p, namespace: team-a}\nspec:\n  timeouts: {perAttempt: 30sec}\n"
    );
    let c = compile_cluster(&yaml, &all_secrets("team-a"));
    assert_eq!(
        diags(&c, &policy_key("team-a", "p")),
        vec![(
            "spec.timeouts.perAttempt".to_owned(),
            "\"30sec\" is not a duration; write a number and a unit (ms, s, m, h), e.g. \"80ms\", \"30s\", \"2m\""
                .to_owned()
        )]
    );
    assert_eq!(
        diags(&c, &route_key("team-a", "chat")),
        vec![(
            "spec.policyRef.name".to_owned(),
            "RoutingPolicy \"p\" is invalid (see its status); fix it or point policyRef at another policy"
                .to_owned()
        )]
    );
    assert!(c.table.routes.is_empty());
    assert_eq!(c.readiness(&policy_key("team-a", "p")).reason, "InvalidDuration");
}

/// A policy rule naming a target the route lacks leaves the route out, reported on both.
#[test]
fn policy_rule_naming_an_unknown_target_is_reported_on_route_and_policy() {
    let policy = r#"
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: eu, namespace: team-a}
spec:
  rules:
    - name: eu-only
      when: {all: [{tag: region, op: eq, value: eu}]}
      then: {targets: [claude, mistral]}
"#;
    let yaml = format!(
        "{}---{policy}",
        ROUTE.replace(
            "  model: chat/default\n",
            "  model: chat/default\n  policyRef: {name: eu}\n"
        )
    );
    let c = compile_cluster(&yaml, &all_secrets("team-a"));
    assert_eq!(
        diags(&c, &route_key("team-a", "chat")),
        vec![(
            "spec.policyRef.name".to_owned(),
            "RoutingPolicy team-a/eu rule \"eu-only\" names target \"mistral\", which this route does not have \
             (targets: claude, openai); add the target or change the rule"
                .to_owned()
        )]
    );
    assert_eq!(
        diags(&c, &policy_key("team-a", "eu")),
        vec![(
            "spec.rules[0].then.targets[1]".to_owned(),
            "target \"mistral\" is not a target of ModelRoute team-a/chat (targets: claude, openai); that route is \
             not served until the names agree"
                .to_owned()
        )]
    );
    assert!(c.table.routes.is_empty());
    assert_eq!(c.readiness(&route_key("team-a", "chat")).reason, "UnknownTarget");
}

/// Environment-variable and file credentials are for the standalone sidecar only; in a
/// cluster they are errors that point at secretName. Standalone, they resolve as written.
#[test]
fn standalone_only_credentials_are_rejected_in_a_cluster() {
    let yaml = ROUTE.replace(
        "credentials: {secretName: openai}",
        "credentials: {apiKeyEnv: OPENAI_API_KEY}",
    );
    let c = compile_cluster(&yaml, &all_secrets("team-a"));
    let d: Vec<_> = c.diagnostics_for(&route_key("team-a", "chat")).collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].field, "spec.targets[0].credentials.apiKeyEnv");
    assert_eq!(d[0].reason, Reason::StandaloneOnly);
    assert_eq!(d[0].severity, Severity::Error);

    let (routes, policies) = objects(&yaml);
    let c = compile(&Input::standalone(&routes, &policies));
    assert_eq!(c.diagnostics, vec![]);
    let creds = c.table.route("chat/default").unwrap().targets[0]
        .credentials
        .clone()
        .unwrap();
    assert_eq!(
        creds.api_key,
        Some(CredentialSource::Env("OPENAI_API_KEY".into()))
    );
}

/// A route-local rule naming an unknown target is caught even where no apiserver ran CEL.
#[test]
fn route_rule_naming_an_unknown_target_is_caught_standalone() {
    let yaml = format!(
        "{ROUTE}  rules:\n    - name: eu\n      when: {{any: [{{tag: region, op: eq, value: eu}}]}}\n      then: {{targets: [gemini]}}\n"
    );
    let (routes, policies) = objects(&yaml);
    let c = compile(&Input::standalone(&routes, &policies));
    assert_eq!(
        diags(&c, &route_key("team-a", "chat")),
        vec![(
            "spec.rules[0].then.targets[0]".to_owned(),
            "\"gemini\" is not one of spec.targets[].name (claude, openai); fix the name or add the target"
                .to_owned()
        )]
    );
    assert!(c.table.routes.is_empty());
}

/// A route with no problems reports Ready with the policy and target count.
#[test]
fn healthy_route_is_ready_with_a_useful_message() {
    let c = compile_cluster(ROUTE, &all_secrets("team-a"));
    let r = c.readiness(&route_key("team-a", "chat"));
    assert!(r.ready);
    assert_eq!(r.reason, "Compiled");
    assert_eq!(r.message, "serving 2 target(s) with policy builtin");
    assert_eq!(r.conflict, None);
}

/// The demo file compiles standalone with no diagnostics and only mock targets.
#[test]
fn demo_compiles_standalone() {
    let c = detour_api::compile_yaml(&example("demo.yaml")).unwrap();
    assert_eq!(c.diagnostics, vec![]);
    assert!(c.table.routes.len() >= 2);
    for route in &c.table.routes {
        for t in &route.targets {
            assert_eq!(t.provider, detour_api::crd::Provider::Mock, "{}", t.name);
            assert!(t.mock.is_some());
        }
    }
}

/// This package's directory, read when the test runs (cargo sets it), so a test binary built
/// from another checkout sharing the target directory reads this checkout's files.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

fn with_scoring(scoring: &str) -> String {
    let route = ROUTE.replace(
        "  model: chat/default\n",
        "  model: chat/default\n  policyRef: {name: costly}\n",
    );
    format!(
        "{route}---\napiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata: {{name: costly, namespace: team-a}}\nspec:\n  strategy: cost-optimized\n  scoring: {scoring}\n"
    )
}

/// The scorer defaults to `v2`; thresholds set without naming a scorer keep `v1`, on whose
/// scale they were chosen; a named scorer is kept; a share compiles through.
#[test]
fn scorer_version_and_share_compile() {
    use detour_api::table::Scorer;
    let scoring = |yaml: &str| {
        let c = compile_cluster(&with_scoring(yaml), &all_secrets("team-a"));
        assert_eq!(diags(&c, &policy_key("team-a", "costly")), vec![], "{yaml}");
        c.table.routes[0].policy.scoring.clone()
    };
    assert_eq!(scoring("{}").scorer, Scorer::V2);
    assert_eq!(scoring("{simpleBelow: 0.5}").scorer, Scorer::V1);
    assert_eq!(scoring("{simpleBelow: 0.5, scorer: v2}").scorer, Scorer::V2);
    assert_eq!(scoring("{scorer: v1}").scorer, Scorer::V1);
    let share = scoring("{cheapShare: 0.6}");
    assert_eq!((share.scorer, share.cheap_share), (Scorer::V2, Some(0.6)));
    let length = scoring("{scorer: length, cheapShare: 0.6}");
    assert_eq!((length.scorer, length.cheap_share), (Scorer::Length, Some(0.6)));
    assert_eq!(scoring("{scorer: length}").scorer, Scorer::Length);
}

/// Under every scorer, `cost-optimized` sends more to cheap targets than `balanced`, and
/// `balanced` more than `quality-first`; no default has `complexAbove` below `simpleBelow`.
#[test]
fn every_scorer_orders_its_default_thresholds_by_strategy() {
    use detour_api::defaults::scoring_thresholds;
    use detour_api::table::{Scorer, Strategy};
    for scorer in [Scorer::V1, Scorer::V2, Scorer::Length] {
        let [cost, balanced, quality] = [
            Strategy::CostOptimized,
            Strategy::Balanced,
            Strategy::QualityFirst,
        ]
        .map(|s| scoring_thresholds(s, scorer));
        assert!(
            cost.0 > balanced.0 && balanced.0 > quality.0,
            "{scorer:?}: {cost:?} {balanced:?} {quality:?}"
        );
        for (lo, hi) in [cost, balanced, quality] {
            assert!(0.0 < lo && lo <= hi && hi < 1.0, "{scorer:?}: {lo} {hi}");
        }
    }
}

/// A share and thresholds together are refused on the share's field; a share outside [0, 1]
/// is refused with the range.
#[test]
fn share_with_thresholds_is_refused() {
    let c = compile_cluster(
        &with_scoring("{cheapShare: 0.6, complexAbove: 0.9}"),
        &all_secrets("team-a"),
    );
    assert_eq!(
        diags(&c, &policy_key("team-a", "costly")),
        vec![(
            "spec.scoring.cheapShare".to_owned(),
            "cheapShare replaces simpleBelow and complexAbove: set the share or the thresholds".to_owned()
        )]
    );
    let c = compile_cluster(&with_scoring("{cheapShare: 1.5}"), &all_secrets("team-a"));
    assert_eq!(
        diags(&c, &policy_key("team-a", "costly")),
        vec![(
            "spec.scoring.cheapShare".to_owned(),
            "1.5 is out of range; use a number from 0 to 1".to_owned()
        )]
    );
}

/// A route table written before scorers were versioned has no `scorer`: it reads as `v1`,
/// the scorer its thresholds were chosen for.
#[test]
fn tables_without_a_scorer_read_as_v1() {
    let old = r#"{"simpleBelow": 0.4, "complexAbove": null, "disabled": false}"#;
    let s: detour_api::table::Scoring = serde_json::from_str(old).unwrap();
    assert_eq!((s.scorer, s.cheap_share), (detour_api::table::Scorer::V1, None));
}

/// A Vertex AI target compiles with its project, publisher, Google region and key file
/// (default key `key.json`), or with no credentials (application default credentials);
/// a missing region or project, an AWS-shaped region, a bare Gemini id, a bad project id and
/// a `vertex` block on another provider are each reported on their field.
#[test]
fn vertex_targets_compile_and_their_mistakes_name_the_field() {
    let route = |extra: &str| {
        format!(
            r#"
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {{name: r, namespace: team-a}}
spec:
  model: m
  targets:
    - {{name: gemini, provider: vertex, model: google/gemini-2.5-flash, region: europe-west4, vertex: {{project: my-project}}, credentials: {{secretName: gcp}}}}
    - {{name: claude, provider: vertex, model: "claude-sonnet-4@20250514", region: global, vertex: {{project: my-project, publisher: anthropic}}}}
{extra}"#
        )
    };
    let c = compile_cluster(&route(""), &all_secrets("team-a"));
    let d: Vec<_> = c
        .diagnostics_for(&route_key("team-a", "r"))
        .map(ToString::to_string)
        .collect();
    assert!(d.is_empty(), "{d:?}");
    let r = c.table.route("m").unwrap();
    let gemini = &r.targets[0];
    let v = gemini.vertex.as_ref().unwrap();
    assert_eq!(
        (v.project.as_str(), v.publisher),
        ("my-project", detour_api::crd::VertexPublisher::Google)
    );
    assert_eq!(
        gemini.credentials.as_ref().unwrap().api_key,
        Some(CredentialSource::File(
            "/var/run/detour/credentials/gcp/key.json".to_owned()
        ))
    );
    let claude = &r.targets[1];
    assert_eq!(
        claude.vertex.as_ref().unwrap().publisher,
        detour_api::crd::VertexPublisher::Anthropic
    );
    assert!(claude.credentials.is_none(), "application default credentials");
    for (bad, field) in [
        (
            "{name: x, provider: vertex, model: google/g, vertex: {project: my-project}}",
            "region",
        ),
        (
            "{name: x, provider: vertex, model: google/g, region: us-east-1, vertex: {project: my-project}}",
            "region",
        ),
        (
            "{name: x, provider: vertex, model: gemini-2.5-flash, region: us-central1, vertex: {project: my-project}}",
            "model",
        ),
        (
            "{name: x, provider: vertex, model: google/g, region: us-central1}",
            "vertex",
        ),
        (
            "{name: x, provider: vertex, model: google/g, region: us-central1, vertex: {project: My Project}}",
            "vertex.project",
        ),
        (
            "{name: x, provider: openai, model: gpt-4o, vertex: {project: my-project}, credentials: {secretName: gcp}}",
            "vertex",
        ),
    ] {
        let c = compile_cluster(&route(&format!("    - {bad}\n")), &all_secrets("team-a"));
        let fields: Vec<_> = c
            .diagnostics_for(&route_key("team-a", "r"))
            .map(|d| d.field.clone())
            .collect();
        assert_eq!(fields, [format!("spec.targets[2].{field}")], "{bad}");
    }
}

/// `responses` (the Responses API served natively) is refused on a provider that cannot
/// serve it, on the capability's own field and with the fix, and carried into the table for
/// the providers that can, through the standalone path too.
#[test]
fn responses_capability_only_for_openai_shaped_providers() {
    let yaml = ROUTE.replace(
        "credentials: {secretName: anthropic}}",
        "credentials: {secretName: anthropic}, capabilities: [tools, responses]}",
    );
    let c = compile_cluster(&yaml, &all_secrets("team-a"));
    assert_eq!(
        diags(&c, &route_key("team-a", "chat")),
        vec![(
            "spec.targets[1].capabilities[1]".to_owned(),
            "responses (the Responses API served natively) is only for providers openai, azure-openai and openai-compatible, not anthropic; remove it: Responses requests to this target are translated"
                .to_owned()
        )]
    );

    let yaml = ROUTE.replace(
        "credentials: {secretName: openai}}",
        "credentials: {secretName: openai}, capabilities: [responses, streaming, tools]}",
    );
    let (routes, policies) = objects(&yaml);
    for c in [
        compile_cluster(&yaml, &all_secrets("team-a")),
        compile(&Input::standalone(&routes, &policies)),
    ] {
        assert_eq!(c.diagnostics, vec![]);
        let caps = c.table.route("chat/default").unwrap().targets[0]
            .capabilities
            .clone()
            .unwrap();
        assert_eq!(
            caps,
            vec![
                detour_api::table::Capability::Tools,
                detour_api::table::Capability::Streaming,
                detour_api::table::Capability::Responses
            ]
        );
        let json = c.table.to_json();
        assert!(json.contains("\"responses\""), "{json}");
        assert_eq!(detour_api::table::RouteTable::from_json(&json).unwrap(), c.table);
    }
}
