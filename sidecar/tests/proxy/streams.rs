//! Streams and large answers through the proxy: passed through, upstream connections reused,
//! broken streams ended honestly, a client that goes away cleaned up, large answers passed
//! through or counted while held.

use std::time::Duration;

use bytes::Bytes;
use detour_fake_upstream::openai::{Fake, Step};
use detour_sidecar::class::Class;
use serde_json::json;

use crate::support::{fallback_route, metric, policy, route, start, start_with_budget, wait_for};

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
        + &fallback_route(&fake, "mid", "p", "mid", "backup")
        + &fallback_route(&fake, "early", "p", "early", "backup");
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
    let client = crate::support::client();
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
