//! `detour-sidecar`: the proxy. Applications call it as if it were OpenAI; it routes each
//! request by `model` to the targets of the route table, fails over on 5xx, 429, timeouts and
//! connection errors, keeps failing providers out with circuit breakers, and reports every
//! decision in metrics and a JSON audit line.
//!
//! The request path, outermost first (assembled in [`server::stack`]):
//! [`layers::request_id`] → [`layers::body_limit`] → [`layers::router`] → [`proxy`], which
//! uses [`routing`] (order of targets), [`health`] (breakers), [`retry`] (backoff, budget),
//! [`deadline`] and the [`providers`].

pub mod audit;
pub mod body;
pub mod budget;
pub mod class;
pub mod cli;
pub mod config;
pub mod conn;
pub mod continuation;
pub mod credentials;
pub mod deadline;
pub mod demo;
pub mod egress;
pub mod encode;
pub mod error;
pub mod fleet;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod headers;
pub mod health;
pub mod heap;
pub mod layers;
pub mod metrics;
pub mod providers;
pub mod proxy;
pub mod responses;
pub mod retry;
pub mod routing;
pub mod scoring;
pub mod server;
pub mod share;
pub mod state;
