//! One suite over the providers that need no translation, `openai-compatible` and the
//! in-process `mock`: the same cases through a macro. The translating providers (`openai`,
//! `azure-openai`, `anthropic`, `bedrock`) have their own suite with wire-format fakes in
//! `providers.rs`.

#[expect(
    dead_code,
    reason = "the support module serves several test binaries; this one uses a part"
)]
mod support;

use detour_fake_upstream::openai::{Fake, Step};
use support::{policy, start};

fn target(name: &str, provider: &str, extra: &str) -> String {
    format!("    - name: {name}\n      provider: {provider}\n      model: up-{name}\n{extra}")
}

fn route(model: &str, targets: &[String]) -> String {
    format!(
        "---\napiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata:\n  name: {}\nspec:\n  model: {model}\n  policyRef: {{name: p}}\n  targets:\n{}",
        model.replace('/', "-"),
        targets.concat()
    )
}

/// Routes `s/ok` (one healthy target) and `s/failover` (a primary answering 5xx, then a
/// healthy backup) for the openai-compatible provider against the fake.
fn openai_compatible(fake: &Fake) -> String {
    fake.script("dead", vec![Step::Status(500)]);
    fake.script("ok", vec![Step::Ok, Step::Stream(3)]);
    let t = |name: &str, stub: &str| {
        target(
            name,
            "openai-compatible",
            &format!("      endpoint: {}\n", fake.endpoint(stub)),
        )
    };
    policy("p", "")
        + &route("s/ok", &[t("a", "ok")])
        + &route("s/failover", &[t("primary", "dead"), t("backup", "ok")])
}

/// The same routes for the in-process mock provider.
fn mock(_: &Fake) -> String {
    let t = |name: &str, script: &str| target(name, "mock", &format!("      mock: {{script: [{script}]}}\n"));
    policy("p", "")
        + &route("s/ok", &[t("a", "ok")])
        + &route("s/failover", &[t("primary", "\"5xx\""), t("backup", "ok")])
}

macro_rules! suite {
    ($name:ident, $provider:literal, $routes:path) => {
        mod $name {
            use super::*;

            /// A chat completion comes back OpenAI-shaped under the model that served, with
            /// the route's id in `x-detour-route` and the provider in `x-detour-provider`.
            #[tokio::test]
            async fn chat() {
                let fake = Fake::start().await;
                let sc = start(&$routes(&fake)).await;
                let r = sc.chat("s/ok", &[]).await;
                assert_eq!(r.status, 200, "{}", r.text());
                let v = r.json();
                assert_eq!(v["object"], "chat.completion");
                assert_eq!(v["model"], "up-a");
                assert_eq!(r.header("x-detour-route"), "s/ok");
                assert!(
                    v["choices"][0]["message"]["content"]
                        .as_str()
                        .is_some_and(|c| !c.is_empty())
                );
                assert_eq!(r.header("x-detour-provider"), $provider);
                sc.stop().await;
            }

            /// A stream is OpenAI SSE chunks under the model that served, ending with `[DONE]`.
            #[tokio::test]
            async fn stream() {
                let fake = Fake::start().await;
                let sc = start(&$routes(&fake)).await;
                let _warm = sc.chat("s/ok", &[]).await;
                let r = sc.chat_stream("s/ok").await;
                assert_eq!(r.status, 200);
                assert_eq!(r.header("content-type"), "text/event-stream");
                let text = r.text();
                assert!(
                    text.contains("chat.completion.chunk") && text.contains("\"model\":\"up-a\""),
                    "{text}"
                );
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
                sc.stop().await;
            }

            /// A primary answering 5xx fails over to the backup.
            #[tokio::test]
            async fn failover() {
                let fake = Fake::start().await;
                let mut sc = start(&$routes(&fake)).await;
                let r = sc.chat("s/failover", &[]).await;
                assert_eq!(r.status, 200);
                assert_eq!(r.header("x-detour-target"), "backup");
                assert_eq!(r.header("x-detour-fallback-count"), "1");
                let rec = sc.audit_of(&r).await;
                assert_eq!(
                    rec.attempts[0].class,
                    detour_sidecar::class::Class::ServerError
                );
                sc.stop().await;
            }
        }
    };
}

suite!(openai_compatible_provider, "openai-compatible", openai_compatible);
suite!(mock_provider, "mock", mock);

/// `--demo` on `examples/demo.yaml` prints the fallback rate the README shows, and reaches it
/// with no sleeps of its own: the burst waits for the Retry-After pause rather than for a
/// fixed time, so a slow machine prints the same table.
#[tokio::test]
async fn demo_prints_the_readme_fallback_rate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let yaml = std::fs::read_to_string(root.join("examples/demo.yaml")).unwrap();
    let mut sc = start(&yaml).await;
    let tap = std::mem::replace(&mut sc.audit, tokio::sync::mpsc::unbounded_channel().1);
    let logs = detour_sidecar::demo::LogGate::default();
    let (fallbacks, total) = detour_sidecar::demo::run(sc.running.as_ref().unwrap(), tap, &logs)
        .await
        .unwrap();
    let printed = format!(
        "{fallbacks} of {total} requests = {:.0}%",
        100.0 * fallbacks / total
    );
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&printed),
        "README does not show the demo's rate: {printed}"
    );
    sc.stop().await;
}
