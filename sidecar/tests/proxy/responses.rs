//! `POST /v1/responses` end to end, in-process, translated to chat for an OpenAI-compatible
//! fake provider: the same failover as chat, Responses JSON and typed stream events back.

#![expect(
    clippy::unwrap_used,
    reason = "integration tests: a failed unwrap is a failed test"
)]

use crate::support::{fallback_route, policy, route, start};
use bytes::Bytes;
use detour_fake_upstream::openai::{Fake, Step};
use serde_json::{Value, json};

fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let data = e.split_once("data: ").unwrap().1;
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

/// A Responses request fails over like a chat request (the primary's 503 → the backup) and
/// gets a Response object naming the model that served, the upstream's text as an
/// `output_text`, the usage under the Responses names, the x-detour headers and the
/// provider's request id; the upstream got a chat request with the instructions as a system
/// message.
#[tokio::test]
async fn json_answer_after_failover() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::Status(503)]);
    let yaml = policy("p", "") + &fallback_route(&fake, "m/a", "p", "primary", "backup");
    let mut sc = start(&yaml).await;
    let body = json!({"model": "m/a", "instructions": "be brief", "input": "hi", "store": false,
                      "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}, "strict": false}]});
    let r = sc
        .send("POST", "/v1/responses", Bytes::from(body.to_string()), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-target"), "backup");
    assert_eq!(r.header("x-detour-fallback-count"), "1");
    assert_eq!(r.header("x-request-id"), "req-backup-1");
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["text"], "hello from backup");
    assert_eq!(v["usage"]["input_tokens"], 7);
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert_eq!(v["tools"][0]["name"], "get");
    let sent = fake.last_body("backup").unwrap();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(sent["messages"][1], json!({"role": "user", "content": "hi"}));
    assert_eq!(sent["tools"][0]["function"]["name"], "get");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.endpoint, "responses");
    assert_eq!(rec.fallback_count, 1);
    sc.stop().await;
}

/// A streamed Responses request: the typed events from `response.created` to
/// `response.completed`, the text deltas in order, `[DONE]` never sent; the upstream was asked
/// for the usage chunk. A stream that breaks after its first event ends with
/// `response.failed` and an `error` event, and the transfer is cut.
#[tokio::test]
async fn stream_events_and_break() {
    let fake = Fake::start().await;
    fake.script("t", vec![Step::Stream(2), Step::StreamBreak(1)]);
    let yaml = policy("p", "") + &route("m/a", "p", &[("t", fake.endpoint("t"))]);
    let sc = start(&yaml).await;
    let body = json!({"model": "m/a", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}], "stream": true});
    let r = sc
        .send("POST", "/v1/responses", Bytes::from(body.to_string()), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "text/event-stream");
    assert!(r.complete);
    let text = r.text();
    assert!(!text.contains("[DONE]"), "{text}");
    let ev = events(&text);
    let kinds: Vec<&str> = ev.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"));
    assert_eq!(kinds.last(), Some(&"response.completed"));
    let deltas: String = ev
        .iter()
        .filter(|v| v["type"] == "response.output_text.delta")
        .map(|v| v["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "tok0 tok1 ");
    assert_eq!(
        fake.last_body("t").unwrap()["stream_options"]["include_usage"],
        true
    );

    let r = sc
        .send("POST", "/v1/responses", Bytes::from(body.to_string()), &[])
        .await;
    assert!(!r.complete, "a broken stream ends the transfer abnormally");
    let ev = events(&r.text());
    let kinds: Vec<&str> = ev.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(&kinds[kinds.len() - 2..], ["response.failed", "error"]);
    sc.stop().await;
}

/// Stateful requests are 400s naming the field, an unknown model is the usual 404, and no
/// upstream is called for either.
#[tokio::test]
async fn refusals() {
    let fake = Fake::start().await;
    let yaml = policy("p", "") + &route("m/a", "p", &[("t", fake.endpoint("t"))]);
    let sc = start(&yaml).await;
    let send = |b: Value| sc.send("POST", "/v1/responses", Bytes::from(b.to_string()), &[]);
    let r = send(json!({"model": "m/a", "input": "x", "previous_response_id": "resp_1"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "previous_response_id");
    assert!(!r.header("x-detour-request-id").is_empty());
    let r = send(json!({"model": "m/a", "input": "x", "store": true})).await;
    assert_eq!(r.status, 400);
    let r = send(json!({"model": "nope", "input": "x"})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = sc.send("GET", "/v1/responses", Bytes::new(), &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(fake.hits("t"), 0);
    sc.stop().await;
}
