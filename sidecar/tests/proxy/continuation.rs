//! Mid-stream continuation (`streaming.continueOnFailure`), in-process against the scripted
//! loopback fake: a committed stream that breaks (cut, stall, upstream error event) is
//! finished by the next target and the client reads one coherent stream; every guard ends the
//! stream as before (one error event, no `[DONE]`); what happened is in the audit line, the
//! metrics and the final chunk's `detour` field.

#![expect(
    clippy::unwrap_used,
    reason = "integration tests: a failed unwrap is a failed test"
)]

use crate::support::{Sidecar, SidecarResponse, fallback_route, metric, route, short_policy, start};
use bytes::Bytes;
use detour_fake_upstream::openai::{Fake, Step, Tail};
use detour_sidecar::class::Class;
use serde_json::{Value, json};

/// Short bounds (first event 200 ms, 300 ms between events), continuation on.
fn policy(extra: &str) -> String {
    short_policy(
        "2s",
        &format!("  streaming:\n    continueOnFailure: true\n{extra}"),
    )
}

/// The chunks of an SSE body as JSON (`None` for `[DONE]`).
fn chunks(r: &SidecarResponse) -> Vec<Option<Value>> {
    r.text()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let d = e.strip_prefix("data: ").unwrap();
            (d != "[DONE]").then(|| serde_json::from_str(d).unwrap())
        })
        .collect()
}

/// The text the client assembled, its role chunks, its finish reasons.
fn read(r: &SidecarResponse) -> (String, usize, Vec<String>) {
    let cs: Vec<Value> = chunks(r).into_iter().flatten().collect();
    let text = cs
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str))
        .collect();
    let roles = cs
        .iter()
        .filter(|c| c.pointer("/choices/0/delta/role").is_some())
        .count();
    let finishes = cs
        .iter()
        .filter_map(|c| c.pointer("/choices/0/finish_reason").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    (text, roles, finishes)
}

fn say(texts: Vec<&'static str>, tail: Tail) -> Step {
    Step::Say {
        id: "first",
        texts,
        gap_ms: 20,
        tail,
    }
}

/// Stub `first` streams "a b " and is cut; stub `next` finishes with "c.".
fn script_cut_then_next(fake: &Fake) {
    fake.script("first", vec![say(vec!["a ", "b "], Tail::Cut)]);
    fake.script("next", vec![say(vec!["c."], Tail::Done)]);
}

async fn stream(sc: &Sidecar, model: &str, extra: Value, headers: &[(&str, &str)]) -> SidecarResponse {
    let mut body = json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "tell me"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    sc.send(
        "POST",
        "/v1/chat/completions",
        Bytes::from(body.to_string()),
        headers,
    )
    .await
}

/// A broken stream ends as before: an error event with this code, no `[DONE]`, an abnormal end.
fn assert_broken(r: &SidecarResponse, code: &str) {
    assert!(!r.complete, "a broken stream ends abnormally");
    assert!(!r.text().contains("[DONE]"), "{}", r.text());
    let last = chunks(r).pop().flatten().unwrap();
    assert_eq!(last["error"]["code"], code, "{}", r.text());
}

/// A stream cut after three chunks, one that stalls past `streamIdle`, and one that ends with
/// an upstream error event are each finished by the next target: the client reads one stream
/// with the first stream's id, one role chunk, the exact text once, one finish_reason, the
/// `detour` field on the final chunk, and `[DONE]`. The continuing target was asked with the partial answer
/// and the continuation prompt; the audit line and the metric say what happened.
#[tokio::test]
async fn broken_streams_are_finished_by_the_next_target() {
    let fake = Fake::start().await;
    let full = "The quick brown fox jumps over the lazy dog.";
    for (name, tail) in [
        ("cut", Tail::Cut),
        ("stall", Tail::Stall(700)),
        ("err", Tail::ErrorEvent),
    ] {
        fake.script(name, vec![say(vec!["The quick ", "brown ", "fox"], tail)]);
    }
    // The next target restarts the answer, as models asked to continue sometimes do.
    fake.script(
        "next",
        vec![Step::Say {
            id: "other",
            texts: vec!["The quick brown fox", " jumps over", " the lazy dog."],
            gap_ms: 5,
            tail: Tail::Done,
        }],
    );
    let yaml = policy("")
        + &fallback_route(&fake, "cut", "p", "cut", "next")
        + &fallback_route(&fake, "stall", "p", "stall", "next")
        + &fallback_route(&fake, "err", "p", "err", "next");
    let mut sc = start(&yaml).await;
    for (model, class) in [
        ("cut", Class::Reset),
        ("stall", Class::Timeout),
        ("err", Class::ServerError),
    ] {
        let r = stream(&sc, model, json!({}), &[]).await;
        assert!(r.complete, "{model}: {}", r.text());
        let (text, roles, finishes) = read(&r);
        assert_eq!(text, full, "{model}");
        assert_eq!(roles, 1, "{model}: {}", r.text());
        assert_eq!(finishes, ["stop"], "{model}");
        let cs: Vec<Value> = chunks(&r).into_iter().flatten().collect();
        assert!(
            cs.iter().all(|c| c["id"] == "first" && c["created"] == 7),
            "{}",
            r.text()
        );
        assert_eq!(chunks(&r).last().unwrap(), &None, "ends with [DONE]");
        let fin = cs
            .iter()
            .find(|c| {
                c.pointer("/choices/0/finish_reason")
                    .is_some_and(|f| !f.is_null())
            })
            .unwrap();
        assert_eq!(
            fin["detour"],
            json!({"continued": [{"from": "primary", "to": "backup", "class": class.as_str()}]})
        );
        let asked = fake.last_body("next").unwrap();
        let msgs = asked["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "{asked}");
        assert_eq!(
            msgs[1],
            json!({"role": "assistant", "content": "The quick brown fox"})
        );
        assert_eq!(msgs[2]["role"], "user");
        let rec = sc.audit_of(&r).await;
        assert_eq!(rec.outcome, "ok", "{model}");
        assert_eq!(rec.target.as_deref(), Some("backup"));
        assert_eq!(rec.stream_error, None);
        assert_eq!(rec.attempts.len(), 2);
        assert_eq!(rec.attempts[0].class, class);
        assert_eq!(rec.attempts[1].class, Class::Ok);
        assert_eq!(rec.fallback_count, 1);
        let c = &rec.continuations[0];
        assert_eq!(
            (c.from.as_str(), c.class, c.to.as_deref(), c.result),
            ("primary", class, Some("backup"), "ok")
        );
        assert_eq!((c.bytes, c.chunks, c.style), (19, 3, Some("prompt")));
        let m = sc.metrics().await;
        let series = format!(
            r#"detour_stream_continuations_total{{from="primary",result="ok",route="{model}",to="backup"}}"#
        );
        assert_eq!(metric(&m, &series), 1.0, "{m}");
    }
    sc.stop().await;
}

/// A continuation's usage is passed on as reported when the broken stream reported none
/// (summing is covered where both report it, in the unit tests of `continuation`).
#[tokio::test]
async fn usage_of_both_attempts_is_summed() {
    let fake = Fake::start().await;
    script_cut_then_next(&fake);
    let yaml = policy("") + &fallback_route(&fake, "m", "p", "first", "next");
    let mut sc = start(&yaml).await;
    let r = stream(&sc, "m", json!({}), &[]).await;
    let (text, _, finishes) = read(&r);
    assert_eq!(text, "a b c.");
    assert_eq!(finishes, ["stop"]);
    let usage: Vec<Value> = chunks(&r)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("usage").cloned())
        .collect();
    // Only the continuation reported usage: it is passed on, not invented.
    assert_eq!(
        usage,
        [json!({"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})]
    );
    let _ = sc.audit_of(&r).await;
    sc.stop().await;
}

/// A guard case: model, body fields, headers, the refusal expected.
type Case = (
    &'static str,
    Value,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// The guards: a tool call in progress, `n > 1`, `logprobs`, a JSON schema response format,
/// and too little time before the client's deadline each end the stream with the error event
/// and no `[DONE]`, and the next target is never asked.
#[tokio::test]
async fn guards_end_the_stream_as_before() {
    let fake = Fake::start().await;
    fake.script("first", vec![say(vec!["a ", "b "], Tail::Cut)]);
    fake.script("tool", vec![Step::ToolCut]);
    fake.script("next", vec![say(vec!["c."], Tail::Done)]);
    let yaml = policy("")
        + &fallback_route(&fake, "m", "p", "first", "next")
        + &fallback_route(&fake, "t", "p", "tool", "next");
    let mut sc = start(&yaml).await;
    let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}});
    let cases: [Case; 5] = [
        ("t", json!({}), &[], "tool-call"),
        ("m", json!({"n": 2}), &[], "n"),
        ("m", json!({"logprobs": true}), &[], "logprobs"),
        ("m", json!({"response_format": schema}), &[], "json-format"),
        ("m", json!({}), &[("x-detour-timeout-ms", "900")], "deadline"),
    ];
    for (model, extra, headers, why) in cases {
        let r = stream(&sc, model, extra, headers).await;
        assert_broken(&r, "reset");
        let rec = sc.audit_of(&r).await;
        assert_eq!(rec.outcome, "stream_error", "{why}");
        assert_eq!(rec.stream_error, Some(Class::Reset));
        assert_eq!(rec.continuations.len(), 1, "{why}");
        assert_eq!(
            (rec.continuations[0].to.as_deref(), rec.continuations[0].result),
            (None, why)
        );
        assert_eq!(rec.target.as_deref(), Some("primary"));
    }
    assert_eq!(fake.hits("next"), 0, "no guarded stream asked the next target");
    let m = sc.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"detour_stream_continuations_total{from="primary",result="tool-call",route="t",to="none"}"#
        ),
        1.0
    );
    sc.stop().await;
}

/// A target that refuses the continuation (here a 400, as a server that does not take the
/// request's shape) is skipped for the next one; when no target can continue, the stream
/// ends with the error event and no `[DONE]`, and the target that served is the broken one.
#[tokio::test]
async fn a_refusing_target_is_skipped_and_none_left_is_an_error() {
    let fake = Fake::start().await;
    fake.script("first", vec![say(vec!["a ", "b "], Tail::Cut)]);
    fake.script(
        "refuse",
        vec![Step::Refuse(
            "invalid_request",
            "assistant prefill is not supported",
        )],
    );
    fake.script("next", vec![say(vec!["c."], Tail::Done)]);
    let yaml = policy("")
        + &route(
            "m",
            "p",
            &[
                ("primary", fake.endpoint("first")),
                ("picky", fake.endpoint("refuse")),
                ("backup", fake.endpoint("next")),
            ],
        )
        + &route(
            "none",
            "p",
            &[
                ("primary", fake.endpoint("first")),
                ("picky", fake.endpoint("refuse")),
            ],
        );
    let mut sc = start(&yaml).await;
    let r = stream(&sc, "m", json!({}), &[]).await;
    assert!(r.complete);
    assert_eq!(read(&r).0, "a b c.");
    let rec = sc.audit_of(&r).await;
    let results: Vec<_> = rec
        .continuations
        .iter()
        .map(|c| (c.to.as_deref(), c.result))
        .collect();
    assert_eq!(results, [(Some("picky"), "client-error"), (Some("backup"), "ok")]);
    assert_eq!(rec.target.as_deref(), Some("backup"));

    let r = stream(&sc, "none", json!({}), &[]).await;
    assert_broken(&r, "reset");
    let rec = sc.audit_of(&r).await;
    let results: Vec<_> = rec
        .continuations
        .iter()
        .map(|c| (c.to.as_deref(), c.result))
        .collect();
    assert_eq!(results, [(Some("picky"), "client-error"), (None, "no-target")]);
    assert_eq!(rec.target.as_deref(), Some("primary"));
    assert_eq!(rec.outcome, "stream_error");
    sc.stop().await;
}

/// Off unless the policy (or a matching rule) turns it on; a request may turn it off with
/// `x-detour-continue: off` only when the policy allows disabling fallback.
#[tokio::test]
async fn off_by_default_and_per_request() {
    let fake = Fake::start().await;
    script_cut_then_next(&fake);
    let plain = policy("")
        .replace("  streaming:\n    continueOnFailure: true\n", "")
        .replace("name: p", "name: plain");
    let rule = plain.replace("name: plain", "name: ruled")
        + "  rules:\n    - name: chat\n      when: {all: [{tag: app, op: eq, value: chat}]}\n      then: {continueOnFailure: true}\n";
    let allow = policy("  overrides:\n    allowDisableFallback: true").replace("name: p", "name: allow");
    let targets = |_: ()| {
        [
            ("primary", fake.endpoint("first")),
            ("backup", fake.endpoint("next")),
        ]
    };
    let yaml = format!(
        "{plain}---\n{rule}---\n{allow}{}{}{}{}",
        route("plain", "plain", &targets(())),
        route("ruled", "ruled", &targets(())),
        route("allow", "allow", &targets(())),
        route("strict", "plain", &targets(())),
    );
    let mut sc = start(&yaml).await;
    let r = stream(&sc, "plain", json!({}), &[]).await;
    assert_broken(&r, "reset");
    assert!(sc.audit_of(&r).await.continuations.is_empty());
    let r = stream(&sc, "ruled", json!({}), &[]).await;
    assert_broken(&r, "reset");
    let _ = sc.audit_of(&r).await;
    let r = stream(&sc, "ruled", json!({}), &[("x-detour-tags", "app=chat")]).await;
    assert_eq!(read(&r).0, "a b c.");
    let _ = sc.audit_of(&r).await;
    let r = stream(&sc, "allow", json!({}), &[("x-detour-continue", "off")]).await;
    assert_broken(&r, "reset");
    let _ = sc.audit_of(&r).await;
    let r = stream(&sc, "strict", json!({}), &[("x-detour-continue", "off")]).await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    sc.stop().await;
}

/// A Responses API client gets the continuation too: the splice happens on the chat events,
/// before the Responses encoding, so the client reads the whole text in
/// `response.output_text.delta` events and one `response.completed`, no `response.failed`.
#[tokio::test]
async fn a_responses_stream_is_continued_too() {
    let fake = Fake::start().await;
    script_cut_then_next(&fake);
    let yaml = policy("") + &fallback_route(&fake, "m", "p", "first", "next");
    let mut sc = start(&yaml).await;
    let body = json!({"model": "m", "stream": true, "input": "tell me"});
    let r = sc
        .send("POST", "/v1/responses", Bytes::from(body.to_string()), &[])
        .await;
    assert!(r.complete, "{}", r.text());
    let events: Vec<Value> = r
        .text()
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(text, "a b c.", "{}", r.text());
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "response.completed").count(),
        1,
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"response.failed"), "{kinds:?}");
    let rec = sc.audit_of(&r).await;
    assert_eq!(rec.continuations[0].result, "ok");
    sc.stop().await;
}
