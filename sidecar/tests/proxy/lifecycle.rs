//! The process around the proxy: table reloads as kubelet publishes them, readiness, h2c,
//! draining on shutdown, and start-up refusals.

use std::time::Duration;

use bytes::Bytes;
use detour_fake_upstream::openai::{Fake, Step};
use serde_json::json;

use crate::support::{compiled_json, kubelet_publish, metric, policy, route, start, wait_for};

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
    let sc = crate::support::start_with(source, dir, 1 << 20).await;
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

/// In a pod the ConfigMap may not exist yet: the sidecar serves 503 `not_ready` and `/readyz`
/// is 503 until a valid `routes.json` appears, then it is ready without a restart.
#[tokio::test]
async fn not_ready_until_the_table_appears() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.json");
    let sc =
        crate::support::start_with(detour_sidecar::config::Source::Json(path.clone()), dir, 1 << 20).await;
    let ready = async || {
        let req = http::Request::get(format!("http://{}/readyz", sc.admin))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        crate::support::client().request(req).await.unwrap().status() == 200
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

/// The API also speaks h2c (HTTP/2 with prior knowledge).
#[tokio::test]
async fn serves_h2c() {
    let fake = Fake::start().await;
    let yaml = policy("p", "") + &route("m", "p", &[("t", fake.endpoint("t"))]);
    let sc = start(&yaml).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let resp = sc.h2c_chat(&body).await;
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
    let out = crate::support::run_standalone(&path, &[]).await;
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
        let out =
            crate::support::run_standalone(&routes, &["--upstream-ca-file", ca.to_str().unwrap()]).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(ca.to_str().unwrap()) && stderr.contains(reason),
            "{stderr}"
        );
    }
}
