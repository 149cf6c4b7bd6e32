//! Provider credentials as each provider checks them: a wrong SigV4 secret is refused by the
//! fake's own check, a static session token is sent and signed, a rotated key file is read.

use std::time::Duration;

use detour_fake_upstream::providers::{AKID, Kind, SECRET};

use crate::harness::*;

/// A Bedrock request signed with the wrong secret is rejected by the fake's own signature
/// check (so the check is real), and the 403 is a client error in OpenAI's shape.
#[tokio::test]
async fn bedrock_wrong_signature_is_rejected() {
    let mut e = env(ROUTE, &[("primary", Kind::Bedrock)]).await;
    e.fake.expect_aws(AKID, "another-secret", None);
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let v = e.fake.take_violations();
    assert!(v.iter().any(|v| v.contains("signature does not match")), "{v:?}");
    assert!(!r.text().contains(SECRET));
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// Bedrock with static temporary keys: the mounted session token is sent as
/// `x-amz-security-token` and signed; the fake checks both.
#[tokio::test]
async fn bedrock_static_session_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws-session-token"), "static-session-token\n").unwrap();
    let mut e = env_in(dir, ROUTE, &[("primary", Kind::Bedrock)], "").await;
    e.fake.expect_aws(AKID, SECRET, Some("static-session-token"));
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    e.fake.assert_clean();
    e.sidecar.stop().await;
}

/// Anthropic: a rotated key file is picked up without a reload.
#[tokio::test]
async fn anthropic_key_rotation() {
    let mut e = env(ROUTE, &[("primary", Kind::Anthropic)]).await;
    let r = post(&e.sidecar, &text_request()).await;
    assert_eq!(r.status, 200);
    let key_file = e.sidecar.dir.path().join("api-key");
    std::fs::write(&key_file, "sk-rotated-key-longer").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _ = post(&e.sidecar, &text_request()).await;
    assert_eq!(
        e.fake
            .last_headers("primary")
            .get("x-api-key")
            .unwrap()
            .to_str()
            .unwrap(),
        "sk-rotated-key-longer"
    );
    // The fake flags the rotated key as wrong; that is the point here.
    e.fake.take_violations();
    e.fake.assert_clean();
    e.sidecar.stop().await;
}
