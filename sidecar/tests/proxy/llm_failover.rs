//! Failover semantics that fit LLM calls, in-process against the scripted loopback fake: long
//! streams, per-class retries, honest stream endings, one record per attempt, context-length
//! failover, content filters, undecodable events, recovery, the truthful `model`, assembled
//! non-streaming answers and rate-limit waits. Timeouts are shortened to a few hundred
//! milliseconds; each test names the behaviour it proves.

#![expect(
    clippy::unwrap_used,
    reason = "integration tests: a failed unwrap is a failed test"
)]

use std::time::Duration;

use crate::support::{Sidecar, fallback_route, metric, route, short_policy, start};
use detour_fake_upstream::openai::{Fake, Step, Tail};
use detour_sidecar::class::Class;
use serde_json::{Value, json};
use tokio::time::Instant;

/// A policy with short bounds: first event 200 ms, 300 ms between events, a non-streaming
/// attempt 400 ms, 1 s until committed.
fn policy(extra: &str) -> String {
    short_policy("1s", extra)
}

/// The `data:` payloads of an SSE body, `[DONE]` as the string.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

fn json_of(event: &str) -> Value {
    serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap()
}

async fn breaker(sc: &Sidecar, route: &str, target: &str) -> f64 {
    metric(
        &sc.metrics().await,
        &format!(r#"detour_breaker_state{{route="{route}",target="{target}"}}"#),
    )
}

/// A healthy stream that lasts longer than `perAttempt` and `total` (12 chunks 100 ms apart,
/// 1.3 s against 400 ms and 1 s) completes: only `streamIdle` bounds a committed stream, and
/// the healthy target is charged nothing. A stream silent for longer than `streamIdle` breaks
/// with a `timeout` error event and no `[DONE]`. The wait for the first event is not counted
/// as the sidecar's overhead.
#[tokio::test]
async fn committed_streams_are_bounded_by_stream_idle_only() {
    let fake = Fake::start().await;
    fake.script(
        "long",
        vec![Step::Script {
            n: 12,
            gap_ms: 100,
            tail: Tail::Done,
        }],
    );
    fake.script(
        "stall",
        vec![Step::Script {
            n: 2,
            gap_ms: 20,
            tail: Tail::Stall(700),
        }],
    );
    let yaml = policy("")
        + &route("long", "p", &[("primary", fake.endpoint("long"))])
        + &route("stall", "p", &[("primary", fake.endpoint("stall"))]);
    let mut sc = start(&yaml).await;
    let t = Instant::now();
    let r = sc.chat_stream("long").await;
    assert!(t.elapsed() > Duration::from_millis(1_200), "{:?}", t.elapsed());
    assert!(r.complete);
    let ev = events(&r.text());
    assert_eq!(ev.len(), 12 + 3, "{}", r.text());
    assert_eq!(ev.last().unwrap(), "data: [DONE]");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.outcome, "ok");
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(rec.attempts[0].class, Class::Ok);
    // The 100 ms before the first event were the upstream's, not the sidecar's overhead.
    assert!(rec.overhead_us < 50_000, "{}", rec.overhead_us);

    let r = sc.chat_stream("stall").await;
    assert!(!r.complete, "a broken stream ends abnormally");
    let ev = events(&r.text());
    assert_eq!(ev.len(), 3, "{}", r.text());
    assert_eq!(json_of(&ev[2])["error"]["code"], "timeout");
    assert!(!r.text().contains("[DONE]"));
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.stream_error, Some(Class::Timeout));
    sc.stop().await;
}

/// The client's `x-detour-timeout-ms` bounds a committed stream too: a healthy stream still
/// sending when it runs out breaks with a `timeout` error event and no `[DONE]`, and the
/// target, which was serving, is not charged (a one-failure breaker stays closed).
#[tokio::test]
async fn the_client_deadline_bounds_a_committed_stream() {
    let fake = Fake::start().await;
    fake.script(
        "long",
        vec![Step::Script {
            n: 12,
            gap_ms: 100,
            tail: Tail::Done,
        }],
    );
    let yaml = policy("  health:\n    failureThreshold: 1\n")
        + &route("long", "p", &[("primary", fake.endpoint("long"))]);
    let mut sc = start(&yaml).await;
    let body = json!({"model": "long", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let t = Instant::now();
    let r = sc
        .send(
            "POST",
            "/v1/chat/completions",
            body.to_string().into(),
            &[("x-detour-timeout-ms", "550")],
        )
        .await;
    assert!(t.elapsed() < Duration::from_millis(900), "{:?}", t.elapsed());
    assert!(!r.complete);
    let ev = events(&r.text());
    assert!(ev.len() >= 4 && ev.len() < 12, "{}", r.text());
    assert_eq!(json_of(ev.last().unwrap())["error"]["code"], "timeout");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.stream_error, Some(Class::Timeout));
    assert_eq!(rec.attempts[0].class, Class::Ok, "the target was serving");
    assert_eq!(breaker(&sc, "long", "primary").await, 0.0);
    sc.stop().await;
}

/// With `attempts: 3`, a silent target is tried once (the next target gets the rest of the
/// deadline at once) while a 5xx is retried on the same target; `sameTarget: [timeout]` opts
/// timeouts back into same-target retries.
#[tokio::test]
async fn timeouts_are_not_retried_on_the_same_target_by_default() {
    let fake = Fake::start().await;
    fake.script("silent", vec![Step::Hang]);
    fake.script("broken", vec![Step::Status(503)]);
    fake.script("silent2", vec![Step::Hang]);
    let three = "  retry:\n    attempts: 3\n    backoff: {base: 10ms, max: 20ms, jitter: 0}\n    on: [\"5xx\", \"429\", \"timeout\", \"connect-error\"]\n";
    let optin = "---\napiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata:\n  name: q\nspec:\n  retry:\n    attempts: 3\n    sameTarget: [\"timeout\", \"5xx\"]\n    backoff: {base: 10ms, max: 20ms, jitter: 0}\n  timeouts: {firstByte: 100ms, perAttempt: 400ms, total: 3s}\n";
    let yaml = policy("").replace(
        "  retry:\n    attempts: 1\n    on: [\"5xx\", \"429\", \"timeout\", \"connect-error\"]\n",
        three,
    ) + optin
        + &fallback_route(&fake, "silent", "p", "silent", "backup")
        + &fallback_route(&fake, "broken", "p", "broken", "backup")
        + &fallback_route(&fake, "optin", "q", "silent2", "backup");
    let mut sc = start(&yaml).await;
    let t = Instant::now();
    let r = sc.chat_stream("silent").await;
    assert_eq!(r.header("x-detour-target"), "backup");
    assert!(t.elapsed() < Duration::from_millis(390), "{:?}", t.elapsed());
    assert_eq!(fake.hits("silent"), 1, "a first-byte timeout is not retried");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.attempts[0].class, Class::FirstByteTimeout);

    let r = sc.chat("broken", &[]).await;
    assert_eq!(r.header("x-detour-target"), "backup");
    assert_eq!(fake.hits("broken"), 3, "a 5xx is retried on the same target");

    let r = sc.chat_stream("optin").await;
    assert_eq!(r.header("x-detour-target"), "backup");
    assert_eq!(fake.hits("silent2"), 3, "sameTarget: [timeout] retries timeouts");
    sc.stop().await;
}

/// A stream that ends cleanly after its `finish_reason` and usage but without `[DONE]` is
/// complete: the client gets every chunk, the usage and a `[DONE]` the sidecar adds; ten in a
/// row leave the breaker closed and record ten successes.
#[tokio::test]
async fn stream_without_done_after_finish_is_complete() {
    let fake = Fake::start().await;
    fake.script(
        "primary",
        vec![Step::Script {
            n: 2,
            gap_ms: 5,
            tail: Tail::NoDone,
        }],
    );
    let yaml = policy("  health:\n    failureThreshold: 3\n")
        + &route("m", "p", &[("primary", fake.endpoint("primary"))]);
    let mut sc = start(&yaml).await;
    for _ in 0..10 {
        let r = sc.chat_stream("m").await;
        assert!(r.complete);
        let ev = events(&r.text());
        assert_eq!(ev.len(), 5, "{}", r.text());
        assert_eq!(json_of(&ev[3])["usage"]["completion_tokens"], 2);
        assert_eq!(ev[4], "data: [DONE]");
        let rec = sc.audit_of(&r).await;
        assert_eq!(rec.outcome, "ok");
        assert_eq!(rec.stream_error, None);
    }
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"detour_attempts_total{class="ok",route="m",target="primary"}"#
        ),
        10.0
    );
    assert_eq!(breaker(&sc, "m", "primary").await, 0.0);
    sc.stop().await;
}

/// A stream cut after its first event — a reset, a body that ends before any `finish_reason`,
/// an upstream error event — ends with one error event and no `[DONE]`, and the HTTP body
/// ends abnormally (no last chunk), so clients that ignore error events still fail.
#[tokio::test]
async fn broken_streams_end_abnormally_without_done() {
    let fake = Fake::start().await;
    fake.script("reset", vec![Step::StreamBreak(2)]);
    fake.script(
        "cut",
        vec![Step::Script {
            n: 2,
            gap_ms: 5,
            tail: Tail::Cut,
        }],
    );
    fake.script(
        "errev",
        vec![Step::Script {
            n: 2,
            gap_ms: 5,
            tail: Tail::ErrorEvent,
        }],
    );
    let mut yaml = policy("");
    for name in ["reset", "cut", "errev"] {
        yaml.push_str(&route(
            name,
            "p",
            &[
                ("primary", fake.endpoint(name)),
                ("backup", fake.endpoint("backup")),
            ],
        ));
    }
    let mut sc = start(&yaml).await;
    for (name, code, class) in [
        ("reset", "reset", Class::Reset),
        ("cut", "reset", Class::Reset),
        ("errev", "5xx", Class::ServerError),
    ] {
        let r = sc.chat_stream(name).await;
        assert_eq!(r.status, 200);
        assert!(!r.complete, "{name}: the transfer must fail");
        let ev = events(&r.text());
        assert_eq!(ev.len(), 3, "{name}: {}", r.text());
        assert_eq!(json_of(&ev[2])["error"]["code"], code, "{name}");
        assert!(!r.text().contains("[DONE]"), "{name}");
        let rec = sc.audit_of(&r).await;
        assert_eq!(rec.outcome, "stream_error");
        assert_eq!(rec.stream_error, Some(class));
        assert_eq!(rec.attempts.len(), 1, "{name}: one attempt, recorded once");
        assert_eq!(rec.attempts[0].class, class, "{name}");
    }
    assert_eq!(fake.hits("backup"), 0, "no failover once bytes were sent");
    sc.stop().await;
}

/// Over HTTP/2 (h2c) too, a broken stream delivers the chunks so far and the error event,
/// then the stream is reset: the client's body read fails.
#[tokio::test]
async fn broken_streams_reset_the_h2_stream_after_the_error_event() {
    use http_body_util::BodyExt as _;
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::StreamBreak(2)]);
    let yaml = policy("") + &route("m", "p", &[("primary", fake.endpoint("primary"))]);
    let mut sc = start(&yaml).await;
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = sc.h2c_chat(&body).await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let id = resp.headers()["x-detour-request-id"].to_str().unwrap().to_owned();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    let failed = loop {
        match tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
        {
            None => break false,
            Some(Ok(f)) => text.extend_from_slice(&f.into_data().unwrap_or_default()),
            Some(Err(_)) => break true,
        }
    };
    assert!(failed, "the h2 stream must be reset");
    let text = String::from_utf8(text).unwrap();
    let ev = events(&text);
    assert_eq!(ev.len(), 3, "{text}");
    assert_eq!(json_of(&ev[2])["error"]["code"], "reset");
    loop {
        let rec = tokio::time::timeout(Duration::from_secs(5), sc.audit.recv())
            .await
            .unwrap()
            .unwrap();
        if rec.request_id == id {
            assert_eq!(rec.outcome, "stream_error");
            break;
        }
    }
    sc.stop().await;
}

/// A target that breaks every stream after its first event opens its breaker after
/// `failureThreshold` streams (each is one failure, not a success and a failure), the
/// transition is counted, and the next request skips it.
#[tokio::test]
async fn a_target_that_breaks_every_stream_trips_its_breaker() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::StreamBreak(1)]);
    fake.script("backup", vec![Step::Stream(1)]);
    let yaml = policy("  health:\n    failureThreshold: 3\n    cooldown: 30s\n")
        + &fallback_route(&fake, "m", "p", "primary", "backup");
    let mut sc = start(&yaml).await;
    for _ in 0..3 {
        let r = sc.chat_stream("m").await;
        assert!(!r.complete);
        let _ = sc.audit_of(&r).await;
    }
    assert_eq!(breaker(&sc, "m", "primary").await, 2.0, "open");
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"detour_breaker_transitions_total{route="m",target="primary",to="open"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"detour_attempts_total{class="reset",route="m",target="primary"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            r#"detour_attempts_total{class="ok",route="m",target="primary"}"#
        ),
        0.0
    );
    let r = sc.chat_stream("m").await;
    assert_eq!(r.header("x-detour-target"), "backup");
    assert_eq!(fake.hits("primary"), 3);
    sc.stop().await;
}

const TOO_LONG: &str =
    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9001 tokens.";

/// A `context_length_exceeded` 400 fails over only to a target with a larger (or unknown)
/// context window — a smaller one is skipped — booked as a `context-length` fallback and not
/// charged to health; with no larger target the original 400 comes back.
#[tokio::test]
async fn context_length_fails_over_to_a_larger_window() {
    let fake = Fake::start().await;
    fake.script("small", vec![Step::Refuse("context_length_exceeded", TOO_LONG)]);
    fake.script("large", vec![Step::Refuse("context_length_exceeded", TOO_LONG)]);
    let with_window = |model: &str, targets: &[(&str, &str, u32)]| {
        let mut out = format!(
            "---\napiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: {model}\nspec:\n  model: {model}\n  policyRef: {{name: p}}\n  targets:\n"
        );
        for (name, stub, window) in targets {
            out.push_str(&format!(
                "    - name: {name}\n      provider: openai-compatible\n      model: up-{name}\n      endpoint: {}\n      contextWindow: {window}\n",
                fake.endpoint(stub)
            ));
        }
        out
    };
    let yaml = policy("  health:\n    failureThreshold: 1\n")
        + &with_window(
            "grow",
            &[
                ("small", "small", 8192),
                ("tiny", "tiny", 4096),
                ("big", "big", 128_000),
            ],
        )
        + &with_window("shrink", &[("large", "large", 128_000), ("mini", "mini", 8192)]);
    let mut sc = start(&yaml).await;
    let r = sc.chat("grow", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-target"), "big");
    assert_eq!(
        (fake.hits("small"), fake.hits("tiny"), fake.hits("big")),
        (1, 0, 1)
    );
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.attempts[0].class, Class::ContextLength);
    assert!(
        rec.skipped
            .iter()
            .any(|s| s.target == "tiny" && s.reason == "context-window")
    );
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"detour_fallbacks_total{from="small",reason="context-length",route="grow",to="big"}"#
        ),
        1.0
    );
    assert_eq!(
        breaker(&sc, "grow", "small").await,
        0.0,
        "not charged (threshold 1)"
    );

    let r = sc.chat("shrink", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(r.json()["error"]["message"], TOO_LONG);
    assert_eq!(fake.hits("mini"), 0);
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.outcome, "client_error");
    sc.stop().await;
}

/// OpenAI's `content_policy_violation` is a content filter: with `retry.on: [content-filter]`
/// it fails over, and the attempt is labelled `content-filter`.
#[tokio::test]
async fn content_policy_violation_is_a_content_filter() {
    let fake = Fake::start().await;
    fake.script(
        "primary",
        vec![Step::Refuse(
            "content_policy_violation",
            "Your request was rejected",
        )],
    );
    let yaml = policy("").replace("\"connect-error\"]", "\"connect-error\", \"content-filter\"]")
        + &fallback_route(&fake, "m", "p", "primary", "backup");
    let mut sc = start(&yaml).await;
    let r = sc.chat("m", &[]).await;
    assert_eq!(r.header("x-detour-target"), "backup");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.attempts[0].class, Class::ContentFilter);
    sc.stop().await;
}

/// An event that is not JSON in a pass-through stream reaches the client as it came, the
/// stream goes on to its `[DONE]`, and `detour_stream_anomalies_total` counts it; the target
/// is not charged.
#[tokio::test]
async fn undecodable_events_pass_through() {
    let fake = Fake::start().await;
    fake.script(
        "primary",
        vec![Step::Script {
            n: 1,
            gap_ms: 5,
            tail: Tail::Opaque,
        }],
    );
    let yaml = policy("") + &route("m", "p", &[("primary", fake.endpoint("primary"))]);
    let mut sc = start(&yaml).await;
    let r = sc.chat_stream("m").await;
    assert!(r.complete);
    let ev = events(&r.text());
    assert_eq!(ev[1], "event: note\ndata: <keep-alive>", "{}", r.text());
    assert_eq!(ev.last().unwrap(), "data: [DONE]");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.outcome, "ok");
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, r#"detour_stream_anomalies_total{route="m",target="primary"}"#),
        1.0
    );
    sc.stop().await;
}

/// Recovery: with `maxCooldown` left to default (= `cooldown`), a target that failed its
/// probe is probed again after one cooldown, not a doubled one; a probe to a silent target is
/// cut at `probeFirstByte`, so the probing request loses little before it fails over.
#[tokio::test]
async fn recovered_target_is_back_within_one_cooldown() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::Hang]);
    let yaml = policy(
        "  health:\n    failureThreshold: 1\n    cooldown: 300ms\n    halfOpenProbes: 1\n    probeFirstByte: 50ms\n",
    ) + &fallback_route(&fake, "m", "p", "primary", "backup");
    let mut sc = start(&yaml).await;
    let r = sc.chat_stream("m").await;
    assert_eq!(r.header("x-detour-target"), "backup");
    let _ = sc.audit_of(&r).await;
    // Open for 300 ms; the probe after it fails (silent) and must be cut at 50 ms.
    tokio::time::sleep(Duration::from_millis(320)).await;
    let r = sc.chat_stream("m").await;
    let rec = sc.audit_of(&r).await;
    assert_eq!(&*rec.attempts[0].target, "primary", "probed after one cooldown");
    assert!(
        rec.attempts[0].latency_ms < 150.0,
        "{}",
        rec.attempts[0].latency_ms
    );
    // The primary recovers; after one more cooldown (not a doubled one) it serves again.
    fake.script("primary", vec![Step::Stream(1)]);
    tokio::time::sleep(Duration::from_millis(320)).await;
    let r = sc.chat_stream("m").await;
    assert_eq!(r.header("x-detour-target"), "primary");
    sc.stop().await;
}

/// The body's `model` (JSON and every chunk) is what the serving provider reported, the
/// route's id is in `x-detour-route`; `responseModel: route` opts back into the route's id.
#[tokio::test]
async fn the_model_is_the_one_that_served() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::Status(503)]);
    fake.script("backup", vec![Step::Ok, Step::Stream(2)]);
    fake.script("r", vec![Step::Ok, Step::Stream(2)]);
    let yaml = policy("")
        + &fallback_route(&fake, "m", "p", "primary", "backup")
        + "---\napiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata:\n  name: q\nspec:\n  responseModel: route\n  streaming: {assemble: false}\n"
        + &route("r", "q", &[("primary", fake.endpoint("r"))]);
    let sc = start(&yaml).await;
    let r = sc.chat("m", &[]).await;
    assert_eq!(r.json()["model"], "up-backup");
    assert_eq!(r.header("x-detour-route"), "m");
    let r = sc.chat_stream("m").await;
    for e in events(&r.text()).iter().filter(|e| !e.contains("[DONE]")) {
        assert_eq!(json_of(e)["model"], "up-backup", "{e}");
    }
    let r = sc.chat("r", &[]).await;
    assert_eq!(r.json()["model"], "r");
    let r = sc.chat_stream("r").await;
    for e in events(&r.text()).iter().filter(|e| !e.contains("[DONE]")) {
        assert_eq!(json_of(e)["model"], "r", "{e}");
    }
    sc.stop().await;
}

/// A non-streaming request is sent as a stream and assembled: a hung provider is left after
/// `firstByte` (not `perAttempt`); a slow-but-alive generation, far longer than `firstByte`,
/// keeps going while its events come within `streamIdle` and comes back as one
/// `chat.completion` with content, finish reason and usage; `assemble: false` keeps the
/// plain call, bounded by `perAttempt`.
#[tokio::test]
async fn non_streaming_requests_fail_over_from_a_hung_provider_after_first_byte() {
    let fake = Fake::start().await;
    fake.script("hung", vec![Step::Hang]);
    fake.script("hung2", vec![Step::Hang]);
    fake.script(
        "alive",
        vec![Step::Script {
            n: 4,
            gap_ms: 150,
            tail: Tail::NoDone,
        }],
    );
    let yaml = policy("")
        + &fallback_route(&fake, "hung", "p", "hung", "backup")
        + "---\napiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata:\n  name: long\nspec:\n  timeouts: {firstByte: 200ms, streamIdle: 300ms, perAttempt: 3s, total: 3s}\n"
        + &route("alive", "long", &[("primary", fake.endpoint("alive"))])
        + "---\napiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata:\n  name: plain\nspec:\n  streaming: {assemble: false}\n  timeouts: {firstByte: 200ms, perAttempt: 400ms, total: 1s}\n"
        + &fallback_route(&fake, "plain", "plain", "hung2", "backup");
    let mut sc = start(&yaml).await;
    let r = sc.chat("hung", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-target"), "backup");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.attempts[0].class, Class::FirstByteTimeout);
    assert!(
        rec.attempts[0].latency_ms < 300.0,
        "{}",
        rec.attempts[0].latency_ms
    );
    assert_eq!(fake.last_body("hung").unwrap()["stream"], true);
    assert_eq!(
        fake.last_body("hung").unwrap()["stream_options"],
        json!({"include_usage": true})
    );

    let r = sc.chat("alive", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/json");
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "up-primary");
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 tok3 ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 4);

    let r = sc.chat("plain", &[]).await;
    assert_eq!(r.header("x-detour-target"), "backup");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.attempts[0].class, Class::Timeout);
    assert!(
        rec.attempts[0].latency_ms >= 390.0,
        "{}",
        rec.attempts[0].latency_ms
    );
    assert_eq!(fake.last_body("hung2").unwrap().get("stream"), None);
    sc.stop().await;
}

/// With one target, a 429 with `Retry-After: 1` is waited out and retried inside the deadline;
/// with `rateLimit.maxWait: 0s` the 503 comes at once.
#[tokio::test]
async fn a_single_target_waits_for_retry_after() {
    let fake = Fake::start().await;
    fake.script("wait", vec![Step::RateLimited(1), Step::Ok]);
    fake.script("nowait", vec![Step::RateLimited(1), Step::Ok]);
    let yaml = policy("").replace("total: 1s", "total: 3s")
        + "---\napiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata:\n  name: q\nspec:\n  retry:\n    rateLimit: {maxWait: 0s}\n"
        + &route("wait", "p", &[("primary", fake.endpoint("wait"))])
        + &route("nowait", "q", &[("primary", fake.endpoint("nowait"))]);
    let mut sc = start(&yaml).await;
    let t = Instant::now();
    let r = sc.chat("wait", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t.elapsed() >= Duration::from_millis(950), "{:?}", t.elapsed());
    assert_eq!(fake.hits("wait"), 2);
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.attempts.len(), 2);
    assert_eq!(rec.attempts[0].class, Class::RateLimited);

    let t = Instant::now();
    let r = sc.chat("nowait", &[]).await;
    assert_eq!(r.status, 503);
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(fake.hits("nowait"), 1);
    sc.stop().await;
}
