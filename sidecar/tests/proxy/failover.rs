//! Failover: each failure class of the primary moves the request to the next target, classified
//! once; client errors are returned as they are; retries, the first-byte bound and the client's
//! own deadline.

use std::time::Duration;

use detour_fake_upstream::openai::{Fake, Step};
use detour_sidecar::class::Class;

use crate::support::{fallback_route, metric, policy, route, start};

/// Each failure class of the primary fails over to the backup, which serves the request;
/// the attempt is classified once, as that class. (A hung provider is left at the first-byte
/// bound: the non-streaming request is sent as a stream to be assembled.)
#[tokio::test]
async fn fails_over_on_each_class() {
    let fake = Fake::start().await;
    let cases = [
        ("5xx", Step::Status(503), Class::ServerError),
        ("429", Step::RateLimited(0), Class::RateLimited),
        ("hang", Step::Hang, Class::FirstByteTimeout),
        ("reset", Step::Reset, Class::Reset),
        ("badjson", Step::BadJson, Class::BadResponse),
    ];
    let mut yaml = policy("p", "");
    for (name, step, _) in &cases {
        fake.script(name, vec![step.clone()]);
        yaml.push_str(&route(
            &format!("c/{name}"),
            "p",
            &[
                ("primary", fake.endpoint(name)),
                ("backup", fake.endpoint("backup")),
            ],
        ));
    }
    // Nothing listens on port 9 of loopback: a connection error.
    yaml.push_str(&route(
        "c/connect",
        "p",
        &[
            ("primary", "http://127.0.0.1:9/v1".to_owned()),
            ("backup", fake.endpoint("backup")),
        ],
    ));
    let mut sc = start(&yaml).await;
    let mut all = cases
        .iter()
        .map(|(n, _, c)| (n.to_string(), *c))
        .collect::<Vec<_>>();
    all.push(("connect".to_owned(), Class::ConnectError));
    for (name, class) in all {
        let r = sc.chat(&format!("c/{name}"), &[]).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.header("x-detour-target"), "backup", "{name}");
        assert_eq!(r.header("x-detour-provider"), "openai-compatible");
        assert_eq!(r.header("x-detour-fallback-count"), "1", "{name}");
        assert_eq!(r.json()["model"], "up-backup", "model is the one that served");
        assert_eq!(r.header("x-detour-route"), format!("c/{name}"));
        let rec = sc.audit_of(&r).await;
        assert_eq!(rec.attempts.len(), 2, "{name}");
        assert_eq!(rec.attempts[0].class, class, "{name}");
        assert_eq!(rec.attempts[1].class, Class::Ok);
        assert_eq!(rec.fallback_count, 1);
        assert_eq!(rec.target.as_deref(), Some("backup"));
    }
    assert_eq!(fake.hits("backup"), 6);
    for (name, _, _) in &cases {
        assert_eq!(fake.hits(name), 1, "{name}");
    }
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"detour_fallbacks_total{from="primary",reason="5xx",route="c/5xx",to="backup"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"detour_requests_total{fallback="true",outcome="ok",route="c/429",target="backup"}"#
        ),
        1.0
    );
    sc.stop().await;
}

/// A target whose key file is missing fails as `credentials`, naming the file, without being
/// called: the request goes to the next target even when the policy does not fail over on
/// connection errors, and the breaker does not open however often it happens. A route whose
/// only target lacks its key answers 503 naming the file, and `/readyz` says which route and
/// why until the file appears.
#[tokio::test]
async fn missing_key_file_is_a_credentials_failure_not_a_health_signal() {
    let fake = Fake::start().await;
    let mut yaml = policy("p", "  health:\n    failureThreshold: 1\n    cooldown: 1m\n").replace(
        r#"on: ["5xx", "429", "timeout", "connect-error"]"#,
        r#"on: ["5xx"]"#,
    );
    let keyed = |name: &str, file: &str| {
        format!(
            "    - name: {name}\n      provider: openai-compatible\n      model: up-{name}\n      endpoint: {}\n      allowPlainHttp: true\n      credentials: {{apiKeyFile: {file}}}\n",
            fake.endpoint(name)
        )
    };
    yaml.push_str(&route("m", "p", &[("backup", fake.endpoint("backup"))]).replace(
        "  targets:\n",
        &format!("  targets:\n{}", keyed("primary", "missing-key")),
    ));
    yaml.push_str(&route("only", "p", &[]).replace(
        "  targets:\n",
        &format!("  targets:\n{}", keyed("lone", "missing-key")),
    ));
    let mut sc = start(&yaml).await;
    let key_path = sc.dir.path().join("missing-key");
    let missing = format!("key file {} does not exist", key_path.display());
    for _ in 0..3 {
        let r = sc.chat("m", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-detour-target"), "backup");
        let rec = sc.audit_of(&r).await;
        assert_eq!(rec.attempts[0].class, Class::Credentials, "{rec:?}");
        assert_eq!(rec.attempts[0].detail.as_deref(), Some(missing.as_str()));
    }
    assert_eq!(fake.hits("primary"), 0, "never called without its key");
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, r#"detour_breaker_state{route="m",target="primary"}"#),
        0.0,
        "a missing key is no health signal"
    );
    assert_eq!(
        metric(
            &m,
            r#"detour_attempts_total{class="credentials",route="m",target="primary"}"#
        ),
        3.0
    );

    let r = sc.chat("only", &[]).await;
    assert_eq!(r.status, 503);
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(&format!("lone: credentials ({missing})")),
        "{message}"
    );
    assert_eq!(r.json()["error"]["attempts"][0]["detail"], missing.as_str());
    let (status, why) = sc.admin_status("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(
        why,
        format!("route \"only\": no target has a usable credential: lone: {missing}\n")
    );

    std::fs::write(&key_path, "sk-test\n").unwrap();
    assert_eq!(sc.admin_status("/readyz").await, (200, "ready\n".to_owned()));
    sc.stop().await;
}

/// An upstream client error (400) is returned as the upstream sent it, not retried and not
/// failed over.
#[tokio::test]
async fn client_error_is_returned_not_retried() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::Status(400)]);
    let yaml = policy("p", "") + &fallback_route(&fake, "m", "p", "primary", "backup");
    let mut sc = start(&yaml).await;
    let r = sc.chat("m", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "scripted status");
    assert_eq!(r.header("x-detour-target"), "primary");
    assert_eq!(fake.hits("primary"), 1);
    assert_eq!(fake.hits("backup"), 0);
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.attempts[0].class, Class::ClientError);
    assert_eq!(rec.outcome, "client_error");
    sc.stop().await;
}

/// When every target fails: 503, Retry-After, and an OpenAI-shaped error listing each attempt.
#[tokio::test]
async fn all_fail_is_503_with_retry_after_and_attempts() {
    let fake = Fake::start().await;
    fake.script("a", vec![Step::Status(502)]);
    fake.script("b", vec![Step::RateLimited(7)]);
    let yaml = policy("p", "") + &route("m", "p", &[("a", fake.endpoint("a")), ("b", fake.endpoint("b"))]);
    let mut sc = start(&yaml).await;
    let r = sc.chat("m", &[]).await;
    assert_eq!(r.status, 503);
    let ra: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=7).contains(&ra), "retry-after {ra}");
    let body = r.json();
    let err = &body["error"];
    assert_eq!(err["code"], "all_targets_failed");
    assert_eq!(err["type"], "server_error");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("a: 5xx (502)") && msg.contains("b: 429 (429)"),
        "{msg}"
    );
    let attempts = err["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["target"], "a");
    assert_eq!(attempts[0]["class"], "5xx");
    assert_eq!(attempts[0]["status"], 502);
    assert!(attempts[1]["latency_ms"].as_f64().is_some());
    assert_eq!(r.header("x-detour-fallback-count"), "1");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.outcome, "exhausted");
    assert_eq!(rec.status, 503);
    sc.stop().await;
}

/// Same-target retries follow `retry.attempts` and the backoff before moving on.
#[tokio::test]
async fn retries_same_target_then_fails_over() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::Status(500), Step::Status(500), Step::Ok]);
    let yaml = policy("p", "").replace(
        "attempts: 1",
        "attempts: 3\n    backoff: {base: 5ms, max: 20ms, jitter: 0}",
    ) + &fallback_route(&fake, "m", "p", "primary", "backup");
    let mut sc = start(&yaml).await;
    let r = sc.chat("m", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-target"), "primary");
    assert_eq!(r.header("x-detour-fallback-count"), "0");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.attempts.len(), 3);
    assert_eq!(fake.hits("primary"), 3);
    assert_eq!(fake.hits("backup"), 0);
    sc.stop().await;
}

/// A stream whose first event does not arrive within the first-byte timeout fails over.
#[tokio::test]
async fn first_byte_timeout_fails_over() {
    let fake = Fake::start().await;
    fake.script("slow", vec![Step::Hang]);
    fake.script("backup", vec![Step::Stream(1)]);
    let yaml = policy("p", "")
        + &route(
            "m",
            "p",
            &[
                ("slow", fake.endpoint("slow")),
                ("backup", fake.endpoint("backup")),
            ],
        );
    let mut sc = start(&yaml).await;
    let r = sc.chat_stream("m").await;
    assert_eq!(r.header("x-detour-target"), "backup");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.attempts[0].class, Class::FirstByteTimeout);
    assert!(
        rec.attempts[0].latency_ms < 390.0,
        "first-byte (200 ms) before per-attempt (400 ms)"
    );
    sc.stop().await;
}

/// `x-detour-timeout-ms` shortens the total deadline across the chain.
#[tokio::test]
async fn client_timeout_shortens_deadline() {
    let fake = Fake::start().await;
    fake.script("a", vec![Step::Hang]);
    let yaml = policy("p", "") + &route("m", "p", &[("a", fake.endpoint("a")), ("b", fake.endpoint("a"))]);
    let sc = start(&yaml).await;
    let t0 = tokio::time::Instant::now();
    let r = sc.chat("m", &[("x-detour-timeout-ms", "150")]).await;
    assert_eq!(r.status, 503);
    assert!(t0.elapsed() < Duration::from_millis(380), "{:?}", t0.elapsed());
    sc.stop().await;
}
