//! The sidecar end to end, in-process, against one scripted loopback fake provider.

mod support;

use std::time::Duration;

use bytes::Bytes;
use detour_fake_upstream::openai::{Fake, Step};
use detour_sidecar::class::Class;
use serde_json::json;
use support::{
    FLEET_KEY, compiled_json, kubelet_publish, metric, policy, route, start, start_with_budget, wait_for,
};

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
    let yaml = policy("p", "")
        + &route(
            "m",
            "p",
            &[
                ("primary", fake.endpoint("primary")),
                ("backup", fake.endpoint("backup")),
            ],
        );
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

/// The serving provider's request id reaches the client as `x-request-id` and the audit line,
/// with its rate-limit headers: for a JSON answer after a failover (the backup's, not the
/// failed primary's; the primary's id is in its attempt's record), for a stream, and for a
/// client error returned as the upstream sent it. Other upstream headers stay behind.
#[tokio::test]
async fn upstream_request_id_and_rate_limits_reach_the_client() {
    let fake = Fake::start().await;
    fake.script(
        "primary",
        vec![Step::Status(503), Step::Stream(2), Step::Status(400)],
    );
    let yaml = policy("p", "")
        + &route(
            "m",
            "p",
            &[
                ("primary", fake.endpoint("primary")),
                ("backup", fake.endpoint("backup")),
            ],
        );
    let mut sc = start(&yaml).await;
    let r = sc.chat("m", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-target"), "backup");
    assert_eq!(r.header("x-request-id"), "req-backup-1");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), "999");
    assert_eq!(r.header("openai-organization"), "");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.upstream_request_id.as_deref(), Some("req-backup-1"));
    assert_eq!(
        rec.attempts[0].upstream_request_id.as_deref(),
        Some("req-primary-1")
    );

    let r = sc.chat_stream("m").await;
    assert_eq!(r.header("x-detour-target"), "primary");
    assert_eq!(r.header("x-request-id"), "req-primary-2");
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.upstream_request_id.as_deref(), Some("req-primary-2"));

    let r = sc.chat("m", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-request-id"), "req-primary-3");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), "997");
    sc.stop().await;
}

/// After `failureThreshold` consecutive failures the primary's breaker opens and the dead
/// primary stops receiving traffic, while every request is still answered; metrics and the
/// admin port's `GET /v1/health` report it open.
#[tokio::test]
async fn breaker_opens_and_dead_primary_stops_receiving_traffic() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::Status(500)]);
    let yaml = policy("p", "  health:\n    failureThreshold: 3\n    cooldown: 1m\n")
        + &route(
            "m",
            "p",
            &[
                ("primary", fake.endpoint("primary")),
                ("backup", fake.endpoint("backup")),
            ],
        );
    let mut sc = start(&yaml).await;
    for _ in 0..10 {
        let r = sc.chat("m", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-detour-target"), "backup");
        assert_eq!(r.header("x-detour-fallback-count"), "1");
    }
    assert_eq!(fake.hits("primary"), 3, "no traffic once open");
    assert_eq!(fake.hits("backup"), 10);
    let r = sc.chat("m", &[]).await;
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.skipped[0].reason, "circuit-open");
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, r#"detour_breaker_state{route="m",target="primary"}"#),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            r#"detour_fallbacks_total{from="primary",reason="circuit-open",route="m",to="backup"}"#
        ),
        8.0
    );
    // The admin port's health document says the same, per route and target.
    let doc: serde_json::Value = serde_json::from_str(&sc.admin_get("/v1/health").await).unwrap();
    assert_eq!(doc["version"], 1);
    let route = &doc["routes"][0];
    assert_eq!(route["route"], "m");
    let (primary, backup) = (&route["targets"][0], &route["targets"][1]);
    assert_eq!(primary["name"], "primary");
    assert_eq!(primary["state"], "open");
    assert_eq!(primary["lastFailureClass"], "5xx");
    assert!(primary["openForMs"].as_u64().unwrap() > 50_000, "{primary}");
    assert_eq!(backup["state"], "closed");
    assert_eq!(backup["windowRequests"], 11);
    assert_eq!(backup["errorRate"], 0.0);
    assert!(backup["latencyMs"].as_f64().is_some());
    assert!(backup["lastFailureClass"].is_null());
    sc.stop().await;
}

/// The fleet's view, sent with the pod's key, holds a healthy primary open: requests go to
/// the backup without touching it, the health report and metrics say it is held by the
/// fleet, and a view without it hands it back. A wrong key or a malformed view is refused
/// and changes nothing.
#[tokio::test]
async fn the_fleet_view_holds_a_target_open() {
    let fake = Fake::start().await;
    let yaml = policy("p", "  health:\n    failureThreshold: 3\n    cooldown: 1m\n")
        + &route(
            "m",
            "p",
            &[
                ("primary", fake.endpoint("primary")),
                ("backup", fake.endpoint("backup")),
            ],
        );
    let sc = start(&yaml).await;
    let open = r#"{"version":1,"ttlMs":10000,"open":[{"route":"m","target":"primary","podsOpen":2,"podsReporting":5}]}"#;
    let (status, _) = sc.admin_post("/v1/health", "wrong", open).await;
    assert_eq!(status, 401);
    let (status, why) = sc
        .admin_post("/v1/health", FLEET_KEY, r#"{"version":7,"ttlMs":1}"#)
        .await;
    assert_eq!(status, 400);
    assert!(why.contains("version 7"), "{why}");
    assert_eq!(sc.chat("m", &[]).await.header("x-detour-target"), "primary");

    let (status, doc) = sc.admin_post("/v1/health", FLEET_KEY, open).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let primary = &doc["routes"][0]["targets"][0];
    assert_eq!(
        (primary["state"].as_str(), primary["fleet"].as_bool()),
        (Some("open"), Some(true))
    );
    for _ in 0..3 {
        assert_eq!(sc.chat("m", &[]).await.header("x-detour-target"), "backup");
    }
    assert_eq!(fake.hits("primary"), 1, "held open: not tried");
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, r#"detour_breaker_fleet_held{route="m",target="primary"}"#),
        1.0
    );

    let (status, _) = sc
        .admin_post(
            "/v1/health",
            FLEET_KEY,
            r#"{"version":1,"ttlMs":10000,"open":[]}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(sc.chat("m", &[]).await.header("x-detour-target"), "primary");
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, r#"detour_breaker_fleet_held{route="m",target="primary"}"#),
        0.0
    );
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
    ) + &route(
        "m",
        "p",
        &[
            ("primary", fake.endpoint("primary")),
            ("backup", fake.endpoint("backup")),
        ],
    );
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

/// SSE passes through event by event, with the upstream's `model` and `[DONE]`.
#[tokio::test]
async fn streams_pass_through() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::Stream(3)]);
    let yaml = policy("p", "") + &route("m", "p", &[("primary", fake.endpoint("primary"))]);
    let mut sc = start(&yaml).await;
    let r = sc.chat_stream("m").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "text/event-stream");
    let text = r.text();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{text}");
    assert!(events[0].contains("\"model\":\"up-primary\""), "{text}");
    assert!(events[2].contains("tok2"));
    assert_eq!(events[3], "data: [DONE]");
    assert_eq!(fake.last_body("primary").unwrap()["model"], "up-primary");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.outcome, "ok");
    assert!(rec.stream);
    sc.stop().await;
}

/// Upstream keep-alive connections are reused across requests, streams included: a stream's
/// connection goes back to the pool once its body has ended after `[DONE]`.
#[tokio::test]
async fn upstream_connections_are_reused_for_answers_and_streams() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::Ok, Step::Stream(2)]);
    let yaml = policy("p", "") + &route("m", "p", &[("primary", fake.endpoint("primary"))]);
    let sc = start(&yaml).await;
    for _ in 0..3 {
        let r = sc.chat("m", &[]).await;
        assert_eq!(r.status, 200);
        let r = sc.chat_stream("m").await;
        assert_eq!(r.status, 200);
        assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    }
    assert_eq!(fake.hits("primary"), 6);
    assert_eq!(fake.connections(), 1, "one upstream connection served all six");
    sc.stop().await;
}

/// A stream that breaks after bytes reached the client ends with an OpenAI-style error event,
/// no `[DONE]` and an abnormal end of the body, and `detour_stream_errors_total` counts it.
/// One that breaks before its first event still fails over.
#[tokio::test]
async fn broken_streams() {
    let fake = Fake::start().await;
    fake.script("mid", vec![Step::StreamBreak(2)]);
    fake.script("early", vec![Step::StreamBreak(0)]);
    fake.script("backup", vec![Step::Stream(1)]);
    let yaml = policy("p", "")
        + &route(
            "mid",
            "p",
            &[
                ("primary", fake.endpoint("mid")),
                ("backup", fake.endpoint("backup")),
            ],
        )
        + &route(
            "early",
            "p",
            &[
                ("primary", fake.endpoint("early")),
                ("backup", fake.endpoint("backup")),
            ],
        );
    let mut sc = start(&yaml).await;
    let r = sc.chat_stream("mid").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text}");
    assert!(events[1].contains("tok1"));
    let err: serde_json::Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "reset");
    assert_eq!(err["error"]["type"], "upstream_error");
    assert!(!r.complete, "the body ends abnormally");
    assert_eq!(fake.hits("backup"), 0, "no failover once bytes were sent");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.outcome, "stream_error");
    assert_eq!(rec.stream_error, Some(Class::Reset));
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, r#"detour_stream_errors_total{route="mid",target="primary"}"#),
        1.0
    );

    let r = sc.chat_stream("early").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-target"), "backup");
    assert!(r.text().ends_with("data: [DONE]\n\n"));
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

/// Bodies over the limit get 413, malformed JSON 400, unknown and missing models 404 naming
/// the model and the known ones (with a "did you mean" when one is close); all in OpenAI's
/// error shape and with the x-detour headers.
#[tokio::test]
async fn request_errors() {
    let fake = Fake::start().await;
    let yaml = policy("p", "") + &route("known/a", "p", &[("t", fake.endpoint("t"))]);
    let sc = support::start_limited(&yaml, 1024).await;
    let big = json!({"model": "known/a", "messages": [{"role": "user", "content": "x".repeat(2000)}]});
    let r = sc
        .send("POST", "/v1/chat/completions", Bytes::from(big.to_string()), &[])
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    assert!(!r.header("x-detour-request-id").is_empty());
    assert_eq!(r.header("x-detour-target"), "none");

    let r = sc
        .send(
            "POST",
            "/v1/chat/completions",
            Bytes::from_static(b"{\"model\": "),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "invalid_json");
    assert!(e["error"].as_object().unwrap().contains_key("param"));

    let r = sc.chat("nope/x", &[]).await;
    assert_eq!(r.status, 404);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("\"nope/x\"") && msg.contains("known/a"), "{msg}");
    assert!(!msg.contains("did you mean"), "{msg}");
    assert_eq!(r.json()["error"]["param"], "model");
    let r = sc.chat("known-a", &[]).await;
    assert_eq!(r.status, 404);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("did you mean \"known/a\"?"), "{msg}");

    let r = sc
        .send("POST", "/v1/chat/completions", Bytes::from_static(b"{}"), &[])
        .await;
    assert_eq!(r.status, 404);

    let r = sc.get("/v1/models").await;
    assert_eq!(r.json()["data"][0]["id"], "known/a");
    assert_eq!(fake.hits("t"), 0);
    sc.stop().await;
}

/// `GET /v1/models/{id}` answers a route id in OpenAI's model shape, its `/` sent as it is or
/// percent-encoded; an unknown id is OpenAI's 404 `model_not_found`; other methods are 405.
#[tokio::test]
async fn retrieve_one_model() {
    let fake = Fake::start().await;
    let yaml = policy("p", "") + &route("known/a", "p", &[("t", fake.endpoint("t"))]);
    let sc = start(&yaml).await;
    for path in [
        "/v1/models/known/a",
        "/v1/models/known%2Fa",
        "/v1/models/known%2fa/",
    ] {
        let r = sc.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.json(),
            json!({"id": "known/a", "object": "model", "created": 0, "owned_by": "detour"}),
            "{path}"
        );
        assert!(!r.header("x-detour-request-id").is_empty());
    }
    let r = sc.get("/v1/models/nope%2Fx").await;
    assert_eq!(r.status, 404);
    let e = r.json();
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("'nope/x'"),
        "{e}"
    );
    let r = sc.send("DELETE", "/v1/models/known/a", Bytes::new(), &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(fake.hits("t"), 0);
    sc.stop().await;
}

/// The client's body reaches an OpenAI-compatible upstream byte for byte — key order,
/// spacing, number spelling — with only `model` replaced. A value that only a full parse
/// refuses (an unpaired surrogate escape, a number too large for a float) is passed on where
/// nothing reads it — the upstream decides — and refused with 400 where routing must read the
/// body (a target declares capabilities). A key the first reading reads is checked in full.
#[tokio::test]
async fn request_body_passes_through_with_only_model_replaced() {
    let fake = Fake::start().await;
    let mut yaml = policy("p", "") + &route("plain", "p", &[("t", fake.endpoint("t"))]);
    yaml.push_str(&route_yaml(
        "caps",
        "p",
        &target_yaml("c", &fake.endpoint("c"), "      capabilities: [tools]\n"),
        "",
    ));
    let sc = start(&yaml).await;
    let body = r#"{ "zeta": 1.0e2, "messages":[{"role":"user","content":"hi \u00e9"}],"model" : "plain", "alpha":{"b":2,"a":1} }"#;
    let r = sc
        .send("POST", "/v1/chat/completions", Bytes::from(body), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "up-t");
    let got = fake.last_raw("t").unwrap();
    // Sent as a stream to be assembled: the stream fields go first, nothing else changes.
    assert_eq!(
        std::str::from_utf8(&got).unwrap(),
        body.replace(r#""model" : "plain""#, r#""model" : "up-t""#)
            .replacen(
                '{',
                r#"{"stream":true,"stream_options":{"include_usage":true},"#,
                1
            )
    );

    let bad_key = r#"{"model":"plain","\ud800":1}"#;
    let r = sc
        .send("POST", "/v1/chat/completions", Bytes::from(bad_key), &[])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_json");
    assert_eq!(fake.hits("t"), 1);

    let lone =
        |model: &str| format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"\ud800"}}]}}"#);
    let huge = |model: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"seed":1e400}}"#)
    };
    for body in [lone("plain"), huge("plain")] {
        let r = sc
            .send("POST", "/v1/chat/completions", Bytes::from(body), &[])
            .await;
        assert_eq!(
            r.status, 200,
            "nothing in the sidecar reads the value: the upstream decides"
        );
    }
    assert_eq!(fake.hits("t"), 3);
    for body in [lone("caps"), huge("caps")] {
        let r = sc
            .send("POST", "/v1/chat/completions", Bytes::from(body), &[])
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"]["code"], "invalid_json");
    }
    assert_eq!(fake.hits("c"), 0);
    sc.stop().await;
}

/// `x-detour-target` and `x-detour-fallback: off` are refused with 403 unless the policy
/// allows them, and honoured when it does.
#[tokio::test]
async fn overrides_need_policy_permission() {
    let fake = Fake::start().await;
    fake.script("a", vec![Step::Status(500)]);
    let yaml = policy("strict", "")
        + &policy(
            "open",
            "  overrides:\n    allowTarget: true\n    allowDisableFallback: true\n",
        )
        .replace("apiVersion", "---\napiVersion")
        + &route(
            "strict",
            "strict",
            &[("a", fake.endpoint("a")), ("b", fake.endpoint("b"))],
        )
        + &route(
            "open",
            "open",
            &[("a", fake.endpoint("a")), ("b", fake.endpoint("b"))],
        );
    let sc = start(&yaml).await;
    let r = sc.chat("strict", &[("x-detour-target", "b")]).await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allowTarget")
    );
    let r = sc.chat("strict", &[("x-detour-fallback", "off")]).await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allowDisableFallback")
    );
    assert_eq!(fake.hits("a") + fake.hits("b"), 0);

    let r = sc.chat("open", &[("x-detour-target", "b")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-target"), "b");
    assert_eq!(fake.hits("a"), 0);
    let r = sc
        .chat(
            "open",
            &[("x-detour-fallback", "off"), ("x-detour-tags", "tier=free")],
        )
        .await;
    assert_eq!(r.status, 503, "primary fails and fallback is off");
    assert_eq!(fake.hits("a"), 1);
    assert_eq!(fake.hits("b"), 1);
    let h = fake.last_headers("b").unwrap();
    assert!(
        h.keys().all(|k| !k.as_str().starts_with("x-detour")),
        "never forwarded: {h:?}"
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

/// Kubelet's `..data` symlink swap is picked up within a second; a request in flight during
/// the swap finishes on the table it started with; an invalid file keeps the previous table
/// and counts `detour_config_reloads_total{result="error"}`.
#[tokio::test]
async fn reload_follows_kubelet_swap_and_keeps_old_table_on_error() {
    let fake = Fake::start().await;
    fake.script("slow", vec![Step::Slow(150)]);
    let v1 = policy("p", "") + &route("old", "p", &[("t", fake.endpoint("slow"))]);
    let v2 = policy("p", "") + &route("new", "p", &[("t", fake.endpoint("fast"))]);
    let dir = tempfile::tempdir().unwrap();
    kubelet_publish(dir.path(), "2026_01", &compiled_json(&v1));
    let source = detour_sidecar::config::Source::Json(dir.path().join("routes.json"));
    let sc = support::start_with(source, dir, 1 << 20).await;
    let dir = sc.dir.path().to_owned();

    let (in_flight, ()) = tokio::join!(sc.chat("old", &[]), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = tokio::time::Instant::now();
        kubelet_publish(&dir, "2026_02", &compiled_json(&v2));
        wait_for("the new table", async || {
            sc.get("/v1/models").await.text().contains("\"new\"")
        })
        .await;
        assert!(t0.elapsed() < Duration::from_secs(1), "reloaded within a second");
    });
    assert_eq!(
        in_flight.status,
        200,
        "in-flight request unaffected: {}",
        in_flight.text()
    );
    assert_eq!(in_flight.header("x-detour-target"), "t");
    assert_eq!(sc.chat("old", &[]).await.status, 404);
    assert_eq!(sc.chat("new", &[]).await.status, 200);

    kubelet_publish(&dir, "2026_03", "{\"version\": 1, \"hash\": 5}");
    wait_for("the reload error", async || {
        metric(
            &sc.metrics().await,
            r#"detour_config_reloads_total{result="error"}"#,
        ) >= 1.0
    })
    .await;
    assert_eq!(sc.chat("new", &[]).await.status, 200, "previous table kept");
    let m = sc.metrics().await;
    assert_eq!(metric(&m, r#"detour_config_reloads_total{result="ok"}"#), 2.0);
    sc.stop().await;
}

/// Breaker state survives a reload for targets whose identity did not change, and starts
/// fresh for one whose upstream model changed.
#[tokio::test]
async fn health_survives_reload_for_unchanged_targets() {
    let fake = Fake::start().await;
    fake.script("dead", vec![Step::Status(500)]);
    let pol = policy("p", "  health:\n    failureThreshold: 2\n    cooldown: 1m\n");
    let v1 = pol.clone()
        + &route(
            "m",
            "p",
            &[
                ("primary", fake.endpoint("dead")),
                ("backup", fake.endpoint("ok")),
            ],
        );
    let sc = start(&v1).await;
    for _ in 0..4 {
        assert_eq!(sc.chat("m", &[]).await.status, 200);
    }
    assert_eq!(fake.hits("dead"), 2);
    // Same targets, one more route: the open breaker is kept.
    let v2 = v1.clone() + &route("other", "p", &[("x", fake.endpoint("ok"))]);
    std::fs::write(sc.dir.path().join("routes.yaml"), &v2).unwrap();
    wait_for("reload", async || {
        sc.get("/v1/models").await.text().contains("other")
    })
    .await;
    for _ in 0..3 {
        assert_eq!(sc.chat("m", &[]).await.status, 200);
    }
    assert_eq!(fake.hits("dead"), 2, "still open after reload");
    // The primary's upstream model changes: a new target, a fresh breaker.
    let v3 = v2.replace("model: up-primary", "model: up-primary-2");
    std::fs::write(sc.dir.path().join("routes.yaml"), &v3).unwrap();
    wait_for("reload", async || {
        metric(&sc.metrics().await, r#"detour_config_reloads_total{result="ok"}"#) >= 3.0
    })
    .await;
    assert_eq!(sc.chat("m", &[]).await.status, 200);
    assert_eq!(fake.hits("dead"), 3, "fresh breaker lets traffic through");
    // The new primary has the old one's labels: its breaker state is still exported.
    let m = sc.metrics().await;
    assert!(
        m.contains(r#"detour_breaker_state{route="m",target="primary"} 0"#),
        "breaker state of the replaced target missing:\n{m}"
    );
    sc.stop().await;
}

/// A distinctive key and prompt never appear in any log line (stderr), audit line (stdout),
/// metric, response header or error body of the real binary — while the key does reach the
/// upstream's `Authorization` header, and the app's own `Authorization` does not.
#[tokio::test]
async fn secrets_and_prompts_never_leak() {
    const KEY: &str = "sk-canary-KEY-5f3a9c";
    const PROMPT: &str = "PROMPT-CANARY-7d21e";
    const APP_KEY: &str = "app-canary-AUTH-0b4e";
    let fake = Fake::start().await;
    fake.script("dead", vec![Step::Status(500)]);
    fake.script("bad", vec![Step::Status(400)]);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let target = |name: &str, stub: &str| {
        format!(
            "    - name: {name}\n      provider: openai\n      model: up-{name}\n      endpoint: {}\n      allowPlainHttp: true\n      credentials: {{apiKeyFile: {}}}\n",
            fake.endpoint(stub),
            key_file.display()
        )
    };
    let mut yaml = policy("p", "");
    for (model, targets) in [
        ("fails-over", vec![("primary", "dead"), ("backup", "ok")]),
        ("all-fail", vec![("a", "dead"), ("b", "dead")]),
        ("client-error", vec![("a", "bad")]),
    ] {
        yaml.push_str(&format!(
            "---\napiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: {model}\nspec:\n  model: {model}\n  policyRef: {{name: p}}\n  targets:\n"
        ));
        for (name, stub) in targets {
            yaml.push_str(&target(name, stub));
        }
    }
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, yaml).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (listen, admin) = (free(), free());
    let out = std::fs::File::create(dir.path().join("stdout")).unwrap();
    let err = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_detour-sidecar"))
        .args(["--routes", routes.to_str().unwrap()])
        .args(["--credentials-dir", dir.path().to_str().unwrap()])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .env("DETOUR_LOG", "debug")
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let client = support::client();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let req = http::Request::get(url)
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            match tokio::time::timeout(Duration::from_secs(2), client.request(req)).await {
                Ok(Ok(r)) => {
                    let status = r.status();
                    let body = http_body_util::BodyExt::collect(r.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    Some((status, String::from_utf8_lossy(&body).into_owned()))
                }
                _ => None,
            }
        }
    };
    let mut ready = false;
    for _ in 0..100 {
        if get(format!("http://{admin}/readyz"))
            .await
            .is_some_and(|(s, _)| s == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = String::new();
    if ready {
        for (model, stream) in [
            ("fails-over", false),
            ("fails-over", true),
            ("all-fail", false),
            ("client-error", false),
        ] {
            let body =
                json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]});
            let req = http::Request::post(format!("http://{listen}/v1/chat/completions"))
                .header("authorization", format!("Bearer {APP_KEY}"))
                .header("x-detour-tags", format!("note={PROMPT}"))
                .body(http_body_util::Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let r = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                .await
                .unwrap()
                .unwrap();
            seen.push_str(&format!("{:?}\n", r.headers()));
            let b = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            seen.push_str(&String::from_utf8_lossy(&b));
        }
        seen.push_str(&get(format!("http://{admin}/metrics")).await.unwrap().1);
    }
    // Stop only the process this test started: SIGTERM (graceful, flushes the audit lines),
    // then SIGKILL if it has not exited within 10 s.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut exited = false;
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !exited {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(exited, "the sidecar did not stop on SIGTERM");
    assert!(
        ready,
        "sidecar never became ready: {}",
        std::fs::read_to_string(dir.path().join("stderr")).unwrap()
    );
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert_eq!(stdout.lines().count(), 4, "one audit line per request: {stdout}");
    for (what, text) in [
        ("stdout", &stdout),
        ("stderr", &stderr),
        ("responses and metrics", &seen),
    ] {
        for canary in [KEY, PROMPT, APP_KEY] {
            assert!(!text.contains(canary), "{canary} leaked into {what}:\n{text}");
        }
    }
    let auth = fake.last_headers("ok").unwrap()["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(auth, format!("Bearer {KEY}"), "the key reaches the upstream");
    for stub in ["ok", "dead", "bad"] {
        let h = fake.last_headers(stub).unwrap();
        assert!(
            !format!("{h:?}").contains(APP_KEY),
            "app's Authorization forwarded to {stub}"
        );
        assert!(h.keys().all(|k| !k.as_str().starts_with("x-detour")));
    }
}

fn target_yaml(name: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "    - name: {name}\n      provider: openai-compatible\n      model: up-{name}\n      endpoint: {endpoint}\n{extra}"
    )
}

fn route_yaml(model: &str, policy: &str, targets: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: {model}\nspec:\n  model: {model}\n  policyRef: {{name: {policy}}}\n  targets:\n{targets}{rules}"
    )
}

/// `lowest-cost` tries the cheapest target first and `weighted` never picks a weight-0 target
/// first; tag rules (first match wins) restrict the targets; targets that cannot serve the
/// request's capabilities or context window are skipped before any call.
#[tokio::test]
async fn strategies_rules_and_capabilities() {
    let fake = Fake::start().await;
    let (a, b) = (fake.endpoint("a"), fake.endpoint("b"));
    let mut yaml = policy("p", "");
    yaml.push_str(&policy("cheap", "  strategy: lowest-cost\n").replace("apiVersion", "---\napiVersion"));
    yaml.push_str(&policy("weighted", "  strategy: weighted\n").replace("apiVersion", "---\napiVersion"));
    yaml.push_str(&route_yaml(
        "cost",
        "cheap",
        &(target_yaml("a", &a, "      cost: {input: 10, output: 30}\n")
            + &target_yaml("b", &b, "      cost: {input: 0.1, output: 0.4}\n")),
        "",
    ));
    yaml.push_str(&route_yaml(
        "weights",
        "weighted",
        &(target_yaml("a", &a, "      weight: 0\n") + &target_yaml("b", &b, "      weight: 5\n")),
        "",
    ));
    yaml.push_str(&route_yaml(
        "tagged",
        "p",
        &(target_yaml("a", &a, "") + &target_yaml("b", &b, "")),
        "  rules:\n    - name: free-tier\n      when: {all: [{tag: tier, op: eq, value: free}, {tag: score, op: lt, value: \"5\"}]}\n      then: {targets: [b]}\n",
    ));
    yaml.push_str(&route_yaml(
        "caps",
        "p",
        &(target_yaml(
            "a",
            &a,
            "      capabilities: [streaming]\n      contextWindow: 50\n",
        ) + &target_yaml("b", &b, "")),
        "",
    ));
    let mut sc = start(&yaml).await;
    for _ in 0..5 {
        assert_eq!(sc.chat("cost", &[]).await.header("x-detour-target"), "b");
        assert_eq!(sc.chat("weights", &[]).await.header("x-detour-target"), "b");
    }
    assert_eq!(fake.hits("a"), 0);

    let r = sc.chat("tagged", &[("x-detour-tags", "tier=free,score=3")]).await;
    assert_eq!(r.header("x-detour-target"), "b");
    assert_eq!(sc.audit_of(&r).await.rule.as_deref(), Some("free-tier"));
    let r = sc.chat("tagged", &[("x-detour-tags", "tier=free,score=9")]).await;
    assert_eq!(r.header("x-detour-target"), "a", "all: one condition fails");
    assert_eq!(sc.audit_of(&r).await.rule, None);

    let tools = json!({"model": "caps", "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [{"role": "user", "content": "hi"}]});
    let r = sc
        .send(
            "POST",
            "/v1/chat/completions",
            Bytes::from(tools.to_string()),
            &[],
        )
        .await;
    assert_eq!(r.header("x-detour-target"), "b");
    let rec = sc.audit_of(&r).await;
    assert_eq!(
        (rec.skipped[0].target.as_str(), rec.skipped[0].reason),
        ("a", "capability")
    );
    let long = json!({"model": "caps", "messages": [{"role": "user", "content": "x".repeat(400)}]});
    let r = sc
        .send("POST", "/v1/chat/completions", Bytes::from(long.to_string()), &[])
        .await;
    assert_eq!(r.header("x-detour-target"), "b");
    assert_eq!(sc.audit_of(&r).await.skipped[0].reason, "context-window");
    assert_eq!(fake.hits("a"), 1, "only the untagged request reached a");
    sc.stop().await;
}

/// The API also speaks h2c (HTTP/2 with prior knowledge).
#[tokio::test]
async fn serves_h2c() {
    let fake = Fake::start().await;
    let yaml = policy("p", "") + &route("m", "p", &[("t", fake.endpoint("t"))]);
    let sc = start(&yaml).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let req = http::Request::post(format!("http://{}/v1/chat/completions", sc.addr))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-detour-target"], "t");
    sc.stop().await;
}

/// Shutdown drains: a request in flight when shutdown starts still completes.
#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let fake = Fake::start().await;
    fake.script("slow", vec![Step::Slow(150)]);
    let yaml = policy("p", "") + &route("m", "p", &[("t", fake.endpoint("slow"))]);
    let mut sc = start(&yaml).await;
    let running = sc.running.take().unwrap();
    let (r, ()) = tokio::join!(sc.chat("m", &[]), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::time::timeout(Duration::from_secs(5), running.shutdown())
            .await
            .unwrap();
    });
    assert_eq!(r.status, 200);
    assert_eq!(fake.hits("slow"), 1);
}

/// Standalone YAML that compiles to no route makes the binary exit non-zero with the
/// compiler's message naming the field.
#[tokio::test]
async fn invalid_standalone_routes_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        "apiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: r}\nspec:\n  model: m\n  targets:\n    - {name: a, provider: mock, model: x, mock: {latency: soon}}\n",
    )
    .unwrap();
    let out = support::run_standalone(&path, &[]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("latency"), "{stderr}");
}

/// `--upstream-ca-file` naming a file that is missing or holds no certificate stops the start
/// with the path and the reason (the operator's injection passes it for
/// `detour.dev/upstream-ca-configmap`).
#[tokio::test]
async fn unusable_upstream_ca_file_exits_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "apiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: r}\nspec:\n  model: m\n  targets:\n    - {name: a, provider: mock, model: x}\n",
    )
    .unwrap();
    let empty = dir.path().join("empty-ca.crt");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    for (ca, reason) in [
        (dir.path().join("missing-ca.crt"), "No such file"),
        (empty, "no CERTIFICATE block"),
    ] {
        let out = support::run_standalone(&routes, &["--upstream-ca-file", ca.to_str().unwrap()]).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(ca.to_str().unwrap()) && stderr.contains(reason),
            "{stderr}"
        );
    }
}

/// In a pod the ConfigMap may not exist yet: the sidecar serves 503 `not_ready` and `/readyz`
/// is 503 until a valid `routes.json` appears, then it is ready without a restart.
#[tokio::test]
async fn not_ready_until_the_table_appears() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    let sc = support::start_with(detour_sidecar::config::Source::Json(path.clone()), dir, 1 << 20).await;
    let ready = async || {
        let req = http::Request::get(format!("http://{}/readyz", sc.admin))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        support::client().request(req).await.unwrap().status() == 200
    };
    assert!(!ready().await);
    let r = sc.chat("m", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "not_ready");
    let yaml = policy("p", "") + &route("m", "p", &[("t", fake.endpoint("t"))]);
    std::fs::write(&path, compiled_json(&yaml)).unwrap();
    wait_for("ready", ready).await;
    assert_eq!(sc.chat("m", &[]).await.status, 200);
    sc.stop().await;
}

/// `least-latency` moves traffic to the faster target once latencies are measured, and
/// `least-busy` sends a request to the target with fewer requests in flight.
#[tokio::test]
async fn least_latency_and_least_busy() {
    let fake = Fake::start().await;
    fake.script("slow", vec![Step::Slow(60)]);
    fake.script("busy", vec![Step::Slow(150)]);
    let yaml = policy("lat", "  strategy: least-latency\n")
        + &policy("busy", "  strategy: least-busy\n").replace("apiVersion", "---\napiVersion")
        + &route(
            "lat",
            "lat",
            &[("slow", fake.endpoint("slow")), ("fast", fake.endpoint("fast"))],
        )
        + &route(
            "busy",
            "busy",
            &[("a", fake.endpoint("busy")), ("b", fake.endpoint("idle"))],
        );
    let sc = start(&yaml).await;
    for _ in 0..5 {
        assert_eq!(sc.chat("lat", &[]).await.status, 200);
    }
    assert_eq!(fake.hits("slow"), 1, "measured once, then the faster target wins");
    assert_eq!(fake.hits("fast"), 4);

    let (first, second) = tokio::join!(sc.chat("busy", &[]), async {
        tokio::time::sleep(Duration::from_millis(80)).await;
        sc.chat("busy", &[]).await
    });
    assert_eq!(first.header("x-detour-target"), "a");
    assert_eq!(second.header("x-detour-target"), "b", "a had a request in flight");
    sc.stop().await;
}

/// The in-process `mock` provider answers chat, completions and embeddings, streams when
/// asked, and its `usage` feeds the token and cost metrics.
#[tokio::test]
async fn mock_provider_answers_every_endpoint() {
    let yaml = r#"apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: m}
spec:
  model: mock/m
  targets:
    - name: t
      provider: mock
      model: mock-up
      cost: {input: 5000, output: 9000}
      mock: {script: ["ok"], reply: "one two three"}
"#;
    let sc = start(yaml).await;
    let r = sc.chat("mock/m", &[]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "mock-up");
    assert_eq!(v["choices"][0]["message"]["content"], "one two three");
    assert_eq!(r.header("x-detour-provider"), "mock");
    let completions = json!({"model": "mock/m", "prompt": "hi"});
    let r = sc
        .send(
            "POST",
            "/v1/completions",
            Bytes::from(completions.to_string()),
            &[],
        )
        .await;
    assert_eq!(r.json()["choices"][0]["text"], "one two three");
    let emb = json!({"model": "mock/m", "input": ["a", "b"]});
    let r = sc
        .send("POST", "/v1/embeddings", Bytes::from(emb.to_string()), &[])
        .await;
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let r = sc.chat_stream("mock/m").await;
    let text = r.text();
    assert!(
        text.contains("\"content\":\"one \"") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    let m = sc.metrics().await;
    let completion = metric(
        &m,
        r#"detour_tokens_total{kind="completion",route="mock/m",target="t"}"#,
    );
    assert!(completion >= 4.0, "{m}");
    let cost = metric(&m, r#"detour_cost_usd_total{route="mock/m",target="t"}"#);
    assert!(cost > 0.0);
    sc.stop().await;
}

/// A client that goes away mid-stream ends the upstream call: the request is audited as
/// `cancelled`, and the in-flight gauges return to zero (nothing leaks).
#[tokio::test]
async fn client_disconnect_mid_stream_is_cleaned_up() {
    let fake = Fake::start().await;
    fake.script("long", vec![Step::Stream(400)]);
    let yaml = policy("p", "")
        .replace("perAttempt: 400ms", "perAttempt: 10s")
        .replace("total: 3s", "total: 10s")
        + &route("m", "p", &[("t", fake.endpoint("long"))]);
    let mut sc = start(&yaml).await;
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let req = http::Request::post(format!("http://{}/v1/chat/completions", sc.addr))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let client = support::client();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let id = resp.headers()["x-detour-request-id"].to_str().unwrap().to_owned();
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(5), http_body_util::BodyExt::frame(&mut body))
        .await
        .unwrap();
    assert!(frame.is_some());
    assert_eq!(metric(&sc.metrics().await, "detour_in_flight_requests"), 1.0);
    drop(body);
    drop(client);
    let rec = loop {
        let rec = tokio::time::timeout(Duration::from_secs(5), sc.audit.recv())
            .await
            .unwrap()
            .unwrap();
        if rec.request_id == id {
            break rec;
        }
    };
    assert_eq!(rec.outcome, "cancelled");
    assert_eq!(metric(&sc.metrics().await, "detour_in_flight_requests"), 0.0);
    sc.stop().await;
}

/// A JSON answer larger than the sidecar holds passes through once its head is classified: a
/// 5 MiB answer reaches the client byte for byte through a 2 MiB buffer budget, and the budget
/// is whole again after it. With `responseModel: route` the answer must be held whole to put
/// the route's id in its `model`: it is counted in the budget, and the same answer is refused
/// with 503 `buffer_budget_exhausted` — returned, not failed over, and not held against the
/// target's health. So is an answer to be returned as a Response object (`/v1/responses`).
#[tokio::test]
async fn large_answers_pass_through_and_held_ones_are_counted() {
    let fake = Fake::start().await;
    let big = 5 * 1024 * 1024;
    fake.script("t", vec![Step::Large(big)]);
    fake.script("u", vec![Step::Large(big)]);
    fake.script("v", vec![Step::Ok]);
    let yaml = "apiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata:\n  name: p\nspec:\n  streaming: {assemble: false}\n---\n".to_owned()
        + "apiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata:\n  name: q\nspec:\n  responseModel: route\n  streaming: {assemble: false}\n"
        + &route("plain", "p", &[("t", fake.endpoint("t"))])
        + &route("renamed", "q", &[("u", fake.endpoint("u")), ("v", fake.endpoint("v"))]);
    let sc = start_with_budget(&yaml, 2 * 1024 * 1024).await;
    let body = |model: &str| {
        Bytes::from(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
        ))
    };

    let r = sc.send("POST", "/v1/chat/completions", body("plain"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-target"), "t");
    let v = r.json();
    assert_eq!(v["model"], "up-t");
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str().map(str::len),
        Some(big)
    );
    wait_for("the budget to be given back", async || {
        metric(&sc.admin_get("/metrics").await, "detour_buffered_bytes") == 0.0
    })
    .await;

    let r = sc
        .send("POST", "/v1/chat/completions", body("renamed"), &[])
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "buffer_budget_exhausted");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-buffered-bytes"),
        "{}",
        r.text()
    );
    assert_eq!((fake.hits("u"), fake.hits("v")), (1, 0));

    // A Responses API request is answered as a Response object, built from the whole answer:
    // held, never passed through as chat JSON.
    fake.script("t", vec![Step::Large(big)]);
    let r = sc
        .send(
            "POST",
            "/v1/responses",
            Bytes::from(r#"{"model":"plain","input":"hi"}"#),
            &[],
        )
        .await;
    assert_eq!(r.status, 503, "{}", &r.text()[..r.text().len().min(200)]);
    assert_eq!(r.json()["error"]["code"], "buffer_budget_exhausted");
    wait_for("the budget to be given back", async || {
        metric(&sc.admin_get("/metrics").await, "detour_buffered_bytes") == 0.0
    })
    .await;
    sc.stop().await;
}

/// A passed-through answer whose upstream breaks after its head ends the client's transfer
/// abnormally: the client has the 200 and the bytes so far, then a failed read — never a clean
/// end that would look like a complete answer.
#[tokio::test]
async fn a_passed_through_answer_that_breaks_ends_abnormally() {
    let fake = Fake::start().await;
    fake.script("t", vec![Step::LargeBreak(3 * 1024 * 1024)]);
    let yaml = "apiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata:\n  name: p\nspec:\n  streaming: {assemble: false}\n".to_owned()
        + &route("plain", "p", &[("t", fake.endpoint("t"))]);
    let sc = start(&yaml).await;
    let r = sc
        .send(
            "POST",
            "/v1/chat/completions",
            Bytes::from(r#"{"model":"plain","messages":[{"role":"user","content":"hi"}]}"#),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "the transfer must end abnormally");
    assert!(r.body.len() > 1024 * 1024, "{} bytes", r.body.len());
    sc.stop().await;
}
