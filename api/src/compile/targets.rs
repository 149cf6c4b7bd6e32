//! One target of a route → a [`Target`]: its timeouts over the policy's, its provider's own
//! settings (mock, Vertex), its credentials, and whether the platform lets it be reached.
//! Any error leaves this target out; the route keeps its others.

use std::collections::BTreeSet;

use super::credentials;
use super::diagnostics::{Diagnostic, Diags, ObjectKey, Reason};
use super::fields::Fields;
use super::{Input, Mode};
use crate::crd::{MockBehavior, Provider, TargetSpec, VertexPublisher};
use crate::egress::{self, AllowedHosts, TargetDest};
use crate::table::{Cost, Mock, Policy, Target, Vertex};

/// Resolves `spec.targets[i]` of route `key` under `policy`. `Err`: the first error that
/// leaves it out.
pub(super) fn resolve(
    t: &TargetSpec,
    i: usize,
    key: &ObjectKey,
    policy: &Policy,
    input: &Input<'_>,
    diags: &mut Diags,
) -> Result<Target, Diagnostic> {
    let at = format!("spec.targets[{i}]");
    let mark = diags.mark();
    let f = &mut Fields { key, diags };
    let timeouts = t.timeouts.clone().unwrap_or_default();
    let (tt, pt) = (&timeouts, &policy.timeouts);
    let [per_attempt, first_byte, stream_idle] = f.durations(
        &format!("{at}.timeouts"),
        [
            ("perAttempt", tt.per_attempt.as_deref(), pt.per_attempt_ms),
            ("firstByte", tt.first_byte.as_deref(), pt.first_byte_ms),
            ("streamIdle", tt.stream_idle.as_deref(), pt.stream_idle_ms),
        ],
    );
    let stream_idle_field = format!("{at}.timeouts.streamIdle");
    f.not_zero(&[(&stream_idle_field, stream_idle)]);
    if let (Some(fb), Some(pa)) = (first_byte, per_attempt)
        && timeouts.first_byte.is_some()
        && timeouts.per_attempt.is_some()
        && fb > pa
    {
        f.error(
            format!("{at}.timeouts.firstByte"),
            Reason::InvalidSpec,
            format!("{fb}ms exceeds timeouts.perAttempt ({pa}ms)"),
        );
    }
    let mock = match (&t.mock, t.provider) {
        (m, Provider::Mock) => {
            let m = m.clone().unwrap_or_default();
            let latency = f.duration(m.latency.as_deref(), 0, &format!("{at}.mock.latency"));
            Some(Mock {
                script: m.script.unwrap_or_else(|| vec![MockBehavior::Ok]),
                latency_ms: latency.unwrap_or_default(),
                reply: m.reply,
            })
        }
        (Some(_), p) => {
            f.error(
                format!("{at}.mock"),
                Reason::InvalidSpec,
                format!("is only for provider mock; remove it or set provider: mock (provider is {p})"),
            );
            None
        }
        (None, _) => None,
    };
    let vertex = vertex(t, &at, f);
    let credentials = match &t.credentials {
        None => None,
        Some(c) => credentials::resolve(c, t.provider, &at, key, input, f.diags),
    };
    let standalone_hosts;
    let cluster_hosts;
    let allowed = match (input.allowed_hosts, input.mode) {
        (Some(a), _) => a,
        (None, Mode::Cluster) => {
            cluster_hosts = AllowedHosts::providers();
            &cluster_hosts
        }
        (None, Mode::Standalone) => {
            standalone_hosts = AllowedHosts::standalone();
            &standalone_hosts
        }
    };
    let dest = TargetDest {
        provider: t.provider,
        endpoint: t.endpoint.as_deref(),
        region: t.region.as_deref(),
        // A Vertex target always sends a Google access token, from its credentials or the
        // ambient ones (metadata server, application default credentials).
        has_credentials: t.credentials.is_some() || t.provider == Provider::Vertex,
        allow_plain_http: t.allow_plain_http == Some(true),
    };
    if let Err(v) = egress::check_target(&dest, allowed) {
        f.error(
            format!("{at}.{}", v.field),
            Reason::DestinationRefused,
            format!("{}; this target is left out until then", v.message),
        );
    }
    f.diags.first_since(mark)?;
    Ok(Target {
        name: t.name.clone(),
        provider: t.provider,
        model: t.model.clone(),
        endpoint: t.endpoint.clone(),
        allow_plain_http: t.allow_plain_http == Some(true),
        region: t.region.clone(),
        api_version: t.api_version.clone(),
        credentials,
        weight: t.weight.unwrap_or(1),
        cost: t.cost.map(|c| Cost {
            input: c.input,
            output: c.output,
        }),
        quality: t.quality,
        context_window: t.context_window,
        capabilities: t.capabilities.as_ref().map(|cs| {
            let set: BTreeSet<_> = cs.iter().copied().collect();
            set.into_iter().collect()
        }),
        per_attempt_ms: per_attempt
            .unwrap_or(policy.timeouts.per_attempt_ms)
            .min(policy.timeouts.total_ms),
        first_byte_ms: first_byte.unwrap_or(policy.timeouts.first_byte_ms),
        stream_idle_ms: stream_idle.unwrap_or(policy.timeouts.stream_idle_ms),
        mock,
        vertex,
    })
}

/// A Vertex target's project and publisher, and a model id that publisher takes.
fn vertex(t: &TargetSpec, at: &str, f: &mut Fields<'_>) -> Option<Vertex> {
    match (&t.vertex, t.provider) {
        (Some(v), Provider::Vertex) => {
            if !valid_project(&v.project) {
                f.error(
                    format!("{at}.vertex.project"),
                    Reason::InvalidSpec,
                    format!(
                        "{:?} is not a Google Cloud project id: 6 to 30 lowercase letters, digits and '-', \
                         starting with a letter and not ending with '-' (the ID, not the project's name or number)",
                        v.project
                    ),
                );
            }
            let publisher = v.publisher.unwrap_or_default();
            let model_ok = match publisher {
                // The OpenAI-compatible endpoint takes the publisher-qualified id.
                VertexPublisher::Google => t.model.contains('/'),
                // Claude's id goes into the URL's path.
                VertexPublisher::Anthropic => t
                    .model
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.@_".contains(&b)),
            };
            if !model_ok {
                f.error(
                    format!("{at}.model"),
                    Reason::InvalidSpec,
                    match publisher {
                        VertexPublisher::Google => format!(
                            "{:?} needs its publisher for Vertex's chat completions, e.g. google/gemini-2.5-flash",
                            t.model
                        ),
                        VertexPublisher::Anthropic => format!(
                            "{:?} is not a Claude model id on Vertex AI, e.g. claude-sonnet-4@20250514",
                            t.model
                        ),
                    },
                );
            }
            Some(Vertex {
                project: v.project.clone(),
                publisher,
            })
        }
        (None, Provider::Vertex) => {
            f.error(
                format!("{at}.vertex"),
                Reason::InvalidSpec,
                "is required for provider vertex: vertex: {project: my-project, publisher: google} \
                 (publisher anthropic for Claude models)"
                    .to_owned(),
            );
            None
        }
        (Some(_), p) => {
            f.error(
                format!("{at}.vertex"),
                Reason::InvalidSpec,
                format!("is only for provider vertex; remove it or set provider: vertex (provider is {p})"),
            );
            None
        }
        (None, _) => None,
    }
}

/// A Google Cloud project id: 6 to 30 characters, lowercase letters, digits and hyphens,
/// starting with a letter and not ending with a hyphen.
fn valid_project(id: &str) -> bool {
    (6..=30).contains(&id.len())
        && id.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
