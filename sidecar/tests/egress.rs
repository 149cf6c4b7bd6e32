//! The credential-exfiltration attacks against the sidecar itself: a route table (standalone
//! YAML, or a `routes.json` as a tenant who can write the ConfigMap would forge it) that
//! points credentials at a loopback listener. The sidecar refuses the table or the target,
//! and the listener sees no connection at all; the same table made legitimate reaches it,
//! so the count is a real measurement.

#![expect(
    clippy::unwrap_used,
    reason = "integration tests: a failed unwrap is a failed test"
)]

#[expect(
    dead_code,
    reason = "the support module serves several test binaries; this one uses a part"
)]
mod support;

use detour_api::RouteTable;
use detour_api::egress::AllowedHosts;
use detour_fake_upstream::openai::Fake;
use detour_sidecar::config::Source;
use detour_sidecar::egress::Guard;
use serde_json::json;
use support::Sidecar;

/// A forged table with one route `exfil` whose one target is `target` merged over an
/// `openai-compatible` target reading `<dir>/db-creds/password` (`@DIR@` in `target` is
/// `dir`).
fn forged(dir: &std::path::Path, target: serde_json::Value) -> String {
    std::fs::create_dir_all(dir.join("db-creds")).unwrap();
    std::fs::write(dir.join("db-creds/password"), "hunter2").unwrap();
    let mut t = json!({
        "name": "attacker", "provider": "openai-compatible", "model": "any",
        "endpoint": null, "region": null, "apiVersion": null,
        "credentials": {"secret": "db-creds", "apiKey": {"file": "@DIR@/db-creds/password"},
                        "accessKeyId": null, "secretAccessKey": null, "sessionToken": null, "webIdentity": null},
        "weight": 1, "cost": null, "quality": null, "contextWindow": null, "capabilities": null,
        "perAttemptMs": 2000, "firstByteMs": 2000, "streamIdleMs": 2000, "mock": null
    });
    for (k, v) in target.as_object().unwrap() {
        t[k] = v.clone();
    }
    let t: serde_json::Value =
        serde_json::from_str(&t.to_string().replace("@DIR@", &dir.display().to_string())).unwrap();
    let route = json!({
        "model": "exfil", "source": {"namespace": "shop", "name": "exfil"}, "rules": [],
        "policy": detour_api::defaults::policy(), "targets": [t]
    });
    RouteTable::new(vec![serde_json::from_value(route).unwrap()], Vec::new()).to_json()
}

/// Starts a sidecar on a forged `routes.json` with `target`, allowing `allowed` hosts and
/// credential files in its own directory.
async fn sidecar_on(target: serde_json::Value, allowed: AllowedHosts) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    std::fs::write(&path, forged(dir.path(), target)).unwrap();
    let guard = Guard::new(allowed, dir.path());
    support::start_guarded(Source::Json(path), dir, 1 << 20, guard).await
}

/// In a pod (the operator's allowlist: the providers' hosts only), a forged table sending
/// an unlabelled Secret's file over plain http to a loopback listener — even with the
/// opt-in flag set — is refused: the sidecar stays not ready, the request gets 503, and the
/// listener receives nothing. The region trick (a region that makes the Bedrock host a
/// loopback listener) and the token-file trick (the pod's service-account token) likewise.
#[tokio::test]
async fn forged_tables_send_nothing() {
    let fake = Fake::start().await;
    let port = fake
        .endpoint("x")
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let cases = [
        json!({"endpoint": fake.endpoint("loot"), "allowPlainHttp": true}),
        json!({"endpoint": fake.endpoint("loot")}),
        json!({"provider": "bedrock", "region": format!("x@127.0.0.1:{port}/loot#"),
               "credentials": {"secret": "db-creds",
                               "apiKey": null,
                               "accessKeyId": {"file": "@DIR@/db-creds/password"},
                               "secretAccessKey": {"file": "@DIR@/db-creds/password"},
                               "sessionToken": null, "webIdentity": null}}),
        json!({"provider": "bedrock", "region": "us-east-1", "endpoint": fake.endpoint("loot"), "allowPlainHttp": true,
               "credentials": {"secret": null, "apiKey": null, "accessKeyId": null, "secretAccessKey": null,
                               "sessionToken": null,
                               "webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/x",
                                               "tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}}}),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let sc = sidecar_on(case, AllowedHosts::providers()).await;
        let reply = sc.chat("exfil", &[]).await;
        assert_eq!(
            reply.status,
            503,
            "case {i}: the forged table was loaded: {}",
            reply.text()
        );
        sc.stop().await;
    }
    assert_eq!(fake.connections(), 0, "the listener was reached");
}

/// Standalone, the attack route (plain http, credentials, no opt-in) is left out by the
/// sidecar's own compile: the model is unknown and the listener receives nothing, while a
/// route beside it keeps serving.
#[tokio::test]
async fn standalone_attack_route_is_left_out() {
    let fake = Fake::start().await;
    let yaml = format!(
        "{}---\napiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata: {{name: exfil}}\nspec:\n  model: exfil\n  \
         policyRef: {{name: p}}\n  targets:\n    - name: attacker\n      provider: openai-compatible\n      model: any\n      \
         endpoint: {}\n      credentials: {{apiKeyFile: password}}\n",
        support::policy("p", "")
            + &support::route("ok", "p", &[("mock", "http://127.0.0.1:9/unused".to_owned())]),
        fake.endpoint("loot"),
    );
    let sc = support::start(&yaml).await;
    let reply = sc.chat("exfil", &[]).await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    sc.stop().await;
    assert_eq!(fake.connections(), 0, "the listener was reached");
}

/// The control: the same loopback listener *is* reached when the table is legitimate for
/// the sidecar's rules (loopback allowed, the opt-in set, the key file in the credentials
/// directory), so "no connection" above is the rules' doing.
#[tokio::test]
async fn a_legitimate_table_reaches_the_listener() {
    let fake = Fake::start().await;
    let sc = sidecar_on(
        json!({"endpoint": fake.endpoint("ok"), "allowPlainHttp": true}),
        AllowedHosts::standalone(),
    )
    .await;
    let reply = sc.chat("exfil", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(fake.connections() >= 1);
    sc.stop().await;
}
