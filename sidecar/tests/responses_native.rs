//! `POST /v1/responses` passed through to targets with the `responses` capability, in-process:
//! the client's body with only `model` spliced, the answer as the provider wrote it, failover
//! across chains mixing native and translated targets, stream completeness, stateful requests
//! and `previous_response_id` pinning.

#![expect(
    clippy::unwrap_used,
    reason = "integration tests: a failed unwrap is a failed test"
)]

#[expect(dead_code, reason = "shared test support; this file uses part of it")]
mod support;

use bytes::Bytes;
use detour_fake_upstream::openai::{Fake, Step};
use detour_fake_upstream::responses::{Fake as NativeFake, Step as Native, response_object};
use serde_json::{Value, json};
use support::{metric, start};

/// The policy of these routes: fail over on 5xx, timeouts and connection errors, with
/// deadlines generous enough that a loaded machine does not turn a slow fake into a timeout
/// (every failure here is scripted, and immediate).
fn policy(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: detour.dev/v1alpha1\nkind: RoutingPolicy\nmetadata:\n  name: {name}\nspec:\n  retry:\n    attempts: 1\n    on: [\"5xx\", \"429\", \"timeout\", \"connect-error\"]\n  timeouts:\n    perAttempt: 10s\n    firstByte: 5s\n    total: 20s\n  health:\n    failureThreshold: 50\n{extra}\n"
    )
}

/// A route of `(name, endpoint, native)` openai-compatible targets; native ones declare the
/// `responses` capability.
fn mixed_route(model: &str, targets: &[(&str, String, bool)]) -> String {
    let mut out = format!(
        "---\napiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: {}\nspec:\n  model: {model}\n  policyRef: {{name: p}}\n  targets:\n",
        model.replace('/', "-")
    );
    for (name, endpoint, native) in targets {
        out.push_str(&format!(
            "    - name: {name}\n      provider: openai-compatible\n      model: up-{name}\n      endpoint: {endpoint}\n      cost: {{input: 1, output: 2}}\n"
        ));
        if *native {
            out.push_str("      capabilities: [tools, json_schema, vision, streaming, responses]\n");
        }
    }
    out
}

fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| serde_json::from_str(e.split_once("data: ").unwrap().1).unwrap())
        .collect()
}

async fn post(sc: &support::Sidecar, body: &Value) -> support::SidecarResponse {
    sc.send("POST", "/v1/responses", Bytes::from(body.to_string()), &[])
        .await
}

/// A native target gets the client's bytes with only `model` spliced, at its Responses URL;
/// the client gets the provider's Response object byte for byte, and its usage is counted in
/// the same token metrics as a translated answer's.
#[tokio::test]
async fn native_json_is_passed_through_with_the_model_spliced() {
    let native = NativeFake::start().await;
    let yaml = policy("p", "") + &mixed_route("m/n", &[("n", native.endpoint("n"), true)]);
    let sc = start(&yaml).await;
    // Odd spacing and key order: the bytes are the client's, not a re-serialisation.
    let sent = r#"{"input": [{"type":"item_reference","id":"msg_at_provider"}],  "model":"m/n", "store":true, "tools":[{"type":"web_search"}]}"#;
    let r = sc
        .send("POST", "/v1/responses", Bytes::from_static(sent.as_bytes()), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-target"), "n");
    assert_eq!(r.header("x-request-id"), "req-n-1");
    assert_eq!(native.last_path("n"), "/n/v1/responses");
    assert_eq!(
        native.last_raw("n"),
        Bytes::from(sent.replace(r#""model":"m/n""#, r#""model":"up-n""#))
    );
    assert_eq!(r.json(), response_object("n", "up-n", 1, "completed"));
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, r#"detour_tokens_total{kind="prompt",route="m/n",target="n"}"#),
        11.0
    );
    sc.stop().await;
}

/// Failover across a mixed chain: a native primary's 503 goes to a translated backup (which
/// gets a chat request and answers as a Response), and a translated primary's 503 to a native
/// backup (which gets the client's body) — JSON and streams alike.
#[tokio::test]
async fn mixed_chains_fail_over_both_ways() {
    let native = NativeFake::start().await;
    let chat = Fake::start().await;
    native.script("n", vec![Native::Status(503)]);
    chat.script("c", vec![Step::Status(503)]);
    let yaml = policy("p", "")
        + &mixed_route(
            "m/nc",
            &[
                ("n", native.endpoint("n"), true),
                ("t", chat.endpoint("t"), false),
            ],
        )
        + &mixed_route(
            "m/cn",
            &[
                ("c", chat.endpoint("c"), false),
                ("b", native.endpoint("b"), true),
            ],
        );
    let sc = start(&yaml).await;

    let r = post(&sc, &json!({"model": "m/nc", "input": "hi"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-target"), "t");
    assert_eq!(r.header("x-detour-fallback-count"), "1");
    assert_eq!(r.json()["output"][0]["content"][0]["text"], "hello from t");
    assert!(chat.last_body("t").unwrap()["messages"].is_array());

    let r = post(&sc, &json!({"model": "m/cn", "input": "hi"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-target"), "b");
    assert_eq!(r.json()["output"][0]["content"][0]["text"], "native b");
    let up: Value = serde_json::from_slice(&native.last_raw("b")).unwrap();
    assert_eq!(up, json!({"model": "up-b", "input": "hi"}));

    chat.script("t", vec![Step::Stream(2)]);
    let r = post(&sc, &json!({"model": "m/nc", "input": "hi", "stream": true})).await;
    assert!(r.complete);
    let kinds: Vec<Value> = events(&r.text()).iter().map(|v| v["type"].clone()).collect();
    assert_eq!(kinds.last().unwrap(), "response.completed");
    assert_eq!(r.header("x-detour-target"), "t");

    let r = post(&sc, &json!({"model": "m/cn", "input": "hi", "stream": true})).await;
    assert!(r.complete);
    assert_eq!(r.header("x-detour-target"), "b");
    let ev = events(&r.text());
    assert_eq!(ev.last().unwrap()["type"], "response.completed");
    assert_eq!(ev.last().unwrap()["response"]["id"], "resp_b_2");
    assert!(!r.text().contains("[DONE]"));
    sc.stop().await;
}

/// A native stream passes through event for event and is complete at `response.completed` or
/// `response.incomplete`; `response.failed` right after `response.created` fails over (nothing
/// reached the client); a cut or an `error` event after output is a broken stream: an `error`
/// event and an abnormal end.
#[tokio::test]
async fn native_stream_completeness() {
    let native = NativeFake::start().await;
    let chat = Fake::start().await;
    chat.script("t", vec![Step::Stream(1)]);
    let yaml = policy("p", "")
        + &mixed_route(
            "m/s",
            &[
                ("n", native.endpoint("n"), true),
                ("t", chat.endpoint("t"), false),
            ],
        );
    let sc = start(&yaml).await;
    let body = json!({"model": "m/s", "input": "hi", "stream": true});

    native.script("n", vec![Native::Stream]);
    let r = post(&sc, &body).await;
    assert!(r.complete);
    assert_eq!(r.header("x-detour-target"), "n");
    let ev = events(&r.text());
    let kinds: Vec<&str> = ev.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_text.delta",
            "response.completed"
        ]
    );
    assert!(r.text().starts_with("event: response.created\ndata: {"));
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"detour_tokens_total{kind="completion",route="m/s",target="n"}"#
        ),
        4.0,
        "the usage of response.completed is counted"
    );

    native.script("n", vec![Native::Incomplete]);
    let r = post(&sc, &body).await;
    assert!(r.complete);
    assert_eq!(events(&r.text()).last().unwrap()["type"], "response.incomplete");

    native.script("n", vec![Native::FailedAtStart]);
    let r = post(&sc, &body).await;
    assert!(r.complete);
    assert_eq!(r.header("x-detour-target"), "t");
    assert!(!r.text().contains("resp_n_"), "{}", r.text());

    for step in [Native::CutAfterOutput, Native::ErrorAfterOutput] {
        native.script("n", vec![step.clone()]);
        let r = post(&sc, &body).await;
        assert!(!r.complete, "{step:?}: the transfer ends abnormally");
        assert_eq!(r.header("x-detour-target"), "n");
        let ev = events(&r.text());
        assert_eq!(ev[2]["type"], "response.output_text.delta", "{step:?}");
        let last = ev.last().unwrap();
        assert_eq!(last["type"], "error", "{step:?}");
        assert_eq!(last["error"]["type"], "upstream_error", "{step:?}");
    }
    sc.stop().await;
}

/// Stateful requests go only to native targets (translated ones are skipped, never called);
/// with none, the 400 names the capability that would serve them. A `previous_response_id`
/// goes only to the target that served it — not the healthy primary, and with no failover
/// when that target fails — while an unknown id takes the native chain. (The stubs' names are
/// this test's own: response ids are remembered process-wide, and tests run side by side.)
#[tokio::test]
async fn stateful_requests_go_native_and_pin_to_their_target() {
    let native = NativeFake::start().await;
    let chat = Fake::start().await;
    let yaml = policy("p", "")
        + &mixed_route(
            "m/p",
            &[
                ("t", chat.endpoint("t"), false),
                ("a", native.endpoint("pin-a"), true),
                ("b", native.endpoint("pin-b"), true),
            ],
        )
        + &mixed_route("m/only", &[("u", chat.endpoint("u"), false)]);
    let mut sc = start(&yaml).await;

    let r = post(&sc, &json!({"model": "m/only", "input": "hi", "store": true})).await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("`responses` capability"), "{msg}");
    assert_eq!(chat.hits("u"), 0);

    // b serves the first response (a is down for it).
    native.script("pin-a", vec![Native::Status(503), Native::Json]);
    let r = post(&sc, &json!({"model": "m/p", "input": "hi", "store": true})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-target"), "b");
    assert_eq!(chat.hits("t"), 0);
    let rec = sc.audit_of(&r).await;
    assert!(
        rec.skipped
            .iter()
            .any(|s| s.target == "t" && s.reason == "capability"),
        "{:?}",
        rec.skipped
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(id, "resp_pin-b_1");

    let a_hits = native.hits("pin-a");
    let r = post(
        &sc,
        &json!({"model": "m/p", "input": "more", "previous_response_id": id}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-target"), "b");
    assert_eq!(native.hits("pin-a"), a_hits, "a healthy primary is not asked");
    let follow = r.json()["id"].as_str().unwrap().to_owned();

    native.script("pin-b", vec![Native::Status(503)]);
    let r = post(
        &sc,
        &json!({"model": "m/p", "input": "again", "previous_response_id": follow}),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-detour-target"), "b");
    assert_eq!(
        native.hits("pin-a"),
        a_hits,
        "no failover away from the response's account"
    );

    let r = post(
        &sc,
        &json!({"model": "m/p", "input": "hi", "previous_response_id": "resp_unknown"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-target"), "a");
    sc.stop().await;
}

/// An `item_reference` to an item this sidecar answered with by translation is sent to a
/// native target as that item (without the id only this sidecar knows); other references go
/// untouched.
#[tokio::test]
async fn known_item_references_are_inlined_for_native_targets() {
    let native = NativeFake::start().await;
    let chat = Fake::start().await;
    let yaml = policy("p", "")
        + &mixed_route("m/t", &[("t", chat.endpoint("t"), false)])
        + &mixed_route("m/n", &[("n", native.endpoint("n"), true)]);
    let sc = start(&yaml).await;
    let r = post(&sc, &json!({"model": "m/t", "input": "hi"})).await;
    let item = r.json()["output"][0].clone();
    let id = item["id"].as_str().unwrap().to_owned();

    let r = post(
        &sc,
        &json!({"model": "m/n", "input": [
            {"role": "user", "content": "hi"},
            {"type": "item_reference", "id": id},
            {"type": "item_reference", "id": "msg_provider_side"},
        ]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let up: Value = serde_json::from_slice(&native.last_raw("n")).unwrap();
    let mut inlined = item.clone();
    inlined.as_object_mut().unwrap().remove("id");
    assert_eq!(up["input"][1], inlined);
    assert_eq!(
        up["input"][2],
        json!({"type": "item_reference", "id": "msg_provider_side"})
    );
    assert_eq!(up["model"], "up-n");
    sc.stop().await;
}

/// Under `responseModel: route` a native answer names the route's id as its `model`: the
/// Response object, and the events of a stream that carry it; other events pass as they came.
#[tokio::test]
async fn route_model_in_native_answers() {
    let native = NativeFake::start().await;
    let yaml =
        policy("p", "  responseModel: route") + &mixed_route("m/r", &[("n", native.endpoint("n"), true)]);
    let sc = start(&yaml).await;
    let r = post(&sc, &json!({"model": "m/r", "input": "hi"})).await;
    assert_eq!(r.json()["model"], "m/r", "{}", r.text());
    let r = post(&sc, &json!({"model": "m/r", "input": "hi", "stream": true})).await;
    assert!(r.complete);
    let text = r.text();
    let ev = events(&text);
    for v in ev.iter().filter(|v| v.get("response").is_some()) {
        assert_eq!(v["response"]["model"], "m/r", "{v}");
    }
    assert_eq!(ev.len(), 4);
    assert!(text.contains("event: response.completed\ndata: {"), "{text}");
    sc.stop().await;
}
