//! The sidecar end to end, in-process, against the scripted loopback fake provider of
//! `detour-fake-upstream`: one test binary, one module per feature.

#[path = "../support/mod.rs"]
mod support;

mod continuation;
mod failover;
mod health;
mod lifecycle;
mod llm_failover;
mod requests;
mod responses;
mod routing;
mod streams;
