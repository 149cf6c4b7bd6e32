//! Detour's one fake provider: loopback upstreams that answer as the real providers do and
//! fail as they do, scripted per stub, counting what they got. Every test that needs an
//! upstream uses it — the sidecar's integration tests in-process, the end-to-end tests, the
//! soak and the benchmark through the `detour-fake-upstream` binary.
//!
//! One server core ([`server`]: a listener, a task per connection, panics re-raised in the
//! test) and one set of wire pieces ([`wire`]: JSON answers, SSE events, paced and broken
//! bodies) carry four ways of scripting it, each fitting the tests that use it:
//!
//! - [`openai`]: an in-process OpenAI fake scripted with a list of [`openai::Step`]s per stub,
//!   cycled one per request — the failover, streaming and continuation tests.
//! - [`providers`]: every translated provider's wire format (OpenAI, Azure, Anthropic,
//!   Bedrock with SigV4 checked, Vertex, an STS), strict about the requests it accepts — the
//!   provider suite.
//! - [`responses`]: the Responses API served natively, scripted the same way — the native
//!   Responses tests.
//! - [`modes`]: an OpenAI upstream whose stubs switch modes over HTTP while traffic flows,
//!   with a timed request log — the binary, for processes outside the test.

pub mod modes;
pub mod openai;
pub mod providers;
pub mod responses;
pub mod server;
pub mod wire;
