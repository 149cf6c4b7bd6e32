//! One suite over every provider (`openai`, `azure-openai`, `anthropic`, `bedrock`, and
//! `vertex` with Gemini and with Claude): the same
//! cases — text, tools, streaming, errors, a stream that breaks, failover to the next
//! provider — run through the sidecar against one loopback fake that speaks each provider's
//! real wire format and checks request shapes strictly (for Bedrock, it recomputes the SigV4
//! signature and rejects a wrong one). A capability matrix says which cases apply.
//!
//! Translations are pinned by golden JSON in `tests/data/providers/`, both directions: the
//! body the provider received, and what the client got (responses and stream chunks).
//! `DETOUR_BLESS=1 cargo test -p detour-sidecar --test providers` rewrites them.
//!
//! The fake is `detour_fake_upstream::providers`; one module here per feature.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration tests: a failed unwrap is a failed test"
)]

#[expect(
    dead_code,
    reason = "shared test support: this suite uses the sidecar half, not the OpenAI fake's helpers"
)]
#[path = "../support/mod.rs"]
mod support;

mod credentials;
mod harness;
mod suite;
mod translation;
