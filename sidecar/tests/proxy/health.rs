//! Target health: the breaker keeps a dead primary out of traffic, the fleet view holds a
//! target open, and health survives a reload for targets that did not change.

use detour_fake_upstream::openai::{Fake, Step};

use crate::support::{FLEET_KEY, fallback_route, metric, policy, route, start, wait_for};

/// After `failureThreshold` consecutive failures the primary's breaker opens and the dead
/// primary stops receiving traffic, while every request is still answered; metrics and the
/// admin port's `GET /v1/health` report it open.
#[tokio::test]
async fn breaker_opens_and_dead_primary_stops_receiving_traffic() {
    let fake = Fake::start().await;
    fake.script("primary", vec![Step::Status(500)]);
    let yaml = policy("p", "  health:\n    failureThreshold: 3\n    cooldown: 1m\n")
        + &fallback_route(&fake, "m", "p", "primary", "backup");
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
        + &fallback_route(&fake, "m", "p", "primary", "backup");
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

/// Breaker state survives a reload for targets whose identity did not change, and starts
/// fresh for one whose upstream model changed.
#[tokio::test]
async fn health_survives_reload_for_unchanged_targets() {
    let fake = Fake::start().await;
    fake.script("dead", vec![Step::Status(500)]);
    let pol = policy("p", "  health:\n    failureThreshold: 2\n    cooldown: 1m\n");
    let v1 = pol.clone() + &fallback_route(&fake, "m", "p", "dead", "ok");
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
