//! The API surface: what a client sends reaches the provider unchanged but for the model, what
//! the provider says (request id, rate limits) reaches the client, request errors, models,
//! overrides, the mock provider, and nothing secret leaks.

use std::time::Duration;

use bytes::Bytes;
use detour_fake_upstream::openai::{Fake, Step};
use serde_json::json;

use crate::support::{fallback_route, metric, policy, route, route_yaml, start, target_yaml};

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
    let yaml = policy("p", "") + &fallback_route(&fake, "m", "p", "primary", "backup");
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

/// Bodies over the limit get 413, malformed JSON 400, unknown and missing models 404 naming
/// the model and the known ones (with a "did you mean" when one is close); all in OpenAI's
/// error shape and with the x-detour headers.
#[tokio::test]
async fn request_errors() {
    let fake = Fake::start().await;
    let yaml = policy("p", "") + &route("known/a", "p", &[("t", fake.endpoint("t"))]);
    let sc = crate::support::start_limited(&yaml, 1024).await;
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
    let client = crate::support::client();
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
