//! Target order: strategies, tag rules and capability filtering, least latency and least busy.

use std::time::Duration;

use bytes::Bytes;
use detour_fake_upstream::openai::{Fake, Step};
use serde_json::json;

use crate::support::{policy, route, route_yaml, start, target_yaml};

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
