//! Translation across providers: the usual production chain, the model an answer reports,
//! and mid-stream continuation from one wire format into another.

use detour_fake_upstream::providers::{Kind, Step, prefill};
use serde_json::{Value, json};

use crate::harness::*;

/// The common production chain: openai (down) → anthropic (overloaded) → bedrock serves.
#[tokio::test]
async fn chain_openai_anthropic_bedrock() {
    let mut e = env(
        ROUTE,
        &[
            ("oai", Kind::OpenAi),
            ("ant", Kind::Anthropic),
            ("bed", Kind::Bedrock),
        ],
    )
    .await;
    e.fake.script("oai", vec![Step::Overloaded]);
    e.fake.script("ant", vec![Step::Overloaded]);
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), "bedrock");
    assert_eq!(r.header("x-detour-fallback-count"), "2");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "hello from bedrock");
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// The translated answer carries the model the upstream reported (Anthropic's from its
/// response, Bedrock's the target's model id), in JSON and in every chunk; `responseModel:
/// route` (or the deprecated `exposeUpstreamModel: false`) puts the route's id there.
#[tokio::test]
async fn response_model() {
    for (kind, policy, want) in [
        (Kind::Anthropic, "", "claude-up-20250101"),
        (Kind::Bedrock, "", Kind::Bedrock.model()),
        (Kind::Anthropic, "  responseModel: route", ROUTE),
        (Kind::Bedrock, "  exposeUpstreamModel: false", ROUTE),
    ] {
        let mut e = env_with(ROUTE, &[("primary", kind)], policy).await;
        let r = post(&e.sidecar, &text_request()).await;
        assert_eq!(r.json()["model"], want);
        assert_eq!(r.header("x-detour-route"), ROUTE);
        let req = json!({"model": ROUTE, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let r = post(&e.sidecar, &req).await;
        let events = sse_events(&r.text());
        assert!(
            events[..events.len() - 1].iter().all(|v| v["model"] == want),
            "{events:?}"
        );
        e.fake.assert_clean();
        e.sidecar.stop().await;
    }
}

/// Mid-stream continuation across translations, through the provider fakes: an OpenAI stream
/// cut after "hello " is finished by Anthropic and by Bedrock with assistant prefill (the
/// delivered text, its trailing space taken off, as the final assistant turn: the fakes
/// continue it as the real APIs do), and an Anthropic or Bedrock stream cut the same way is
/// finished by OpenAI with the continuation prompt. The client reads one stream: the first
/// stream's id, one role chunk, "hello from <next>" once, one finish_reason, [DONE].
#[tokio::test]
async fn continuation_across_providers() {
    let pairs = [
        (Kind::OpenAi, Kind::Anthropic),
        (Kind::OpenAi, Kind::Bedrock),
        (Kind::Anthropic, Kind::OpenAi),
        (Kind::Bedrock, Kind::OpenAi),
    ];
    for (first, next) in pairs {
        let mut e = env_with(
            ROUTE,
            &[("primary", first), ("backup", next)],
            "  streaming: {continueOnFailure: true}",
        )
        .await;
        e.fake.script("primary", vec![Step::StreamBreak]);
        let req = json!({"model": ROUTE, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let r = post(&e.sidecar, &req).await;
        let events = sse_events(&r.text());
        let text: String = events
            .iter()
            .filter_map(|v| v.pointer("/choices/0/delta/content").and_then(Value::as_str))
            .collect();
        let who = if next == Kind::OpenAi {
            "backup".to_owned()
        } else {
            next.name().to_owned()
        };
        assert_eq!(
            text,
            format!("hello from {who}"),
            "{first:?} -> {next:?}: {}",
            r.text()
        );
        let roles = events
            .iter()
            .filter(|v| v.pointer("/choices/0/delta/role").is_some())
            .count();
        assert_eq!(roles, 1, "{}", r.text());
        let finishes = events
            .iter()
            .filter(|v| {
                v.pointer("/choices/0/finish_reason")
                    .is_some_and(|f| !f.is_null())
            })
            .count();
        assert_eq!(finishes, 1, "{}", r.text());
        let ids: std::collections::BTreeSet<String> = events
            .iter()
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
        let asked = e.fake.last_body("backup");
        let last = asked["messages"].as_array().unwrap().last().unwrap().clone();
        if next == Kind::OpenAi {
            assert_eq!(last["role"], "user", "{asked}");
        } else {
            assert_eq!(last["role"], "assistant", "{asked}");
            assert_eq!(prefill(&asked).as_deref(), Some("hello"), "{asked}");
        }
        e.fake.assert_clean();
        e.sidecar.stop().await;
    }
}
