//! The injection webhook: `POST /mutate` with an `admission.k8s.io/v1` AdmissionReview of a
//! Pod, answered with a JSON patch, nothing, or a denial that says why.
//!
//! [`respond`] is pure (the review bytes and the namespace's `routes.json` in, the review out),
//! so golden files cover it; [`Injector`] adds the one lookup, the ConfigMap, and metrics.

pub mod inject;

use std::collections::BTreeSet;

use detour_api::{RouteTable, defaults};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tracing::{info, warn};

use crate::metrics::Metrics;
pub use inject::{Deny, Outcome, Settings, Skip};

/// What became of one review, for metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Injected,
    Skipped(Skip),
    Denied(String),
    Malformed,
}

impl Verdict {
    pub const fn outcome(&self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped(_) => "skipped",
            Self::Denied(_) | Self::Malformed => "denied",
        }
    }
}

/// The namespace's route table as the webhook found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routes {
    /// `detour-routes` does not exist.
    Missing,
    /// Its `routes.json` text.
    Found(String),
}

/// Parses a review; `Err` carries the message of the denial a malformed review gets.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest<Pod>, String> {
    let review: AdmissionReview<Pod> = serde_json::from_slice(body)
        .map_err(|e| format!("malformed AdmissionReview: {e} (expected admission.k8s.io/v1 with a Pod)"))?;
    review
        .try_into()
        .map_err(|_| "malformed AdmissionReview: it has no request".to_owned())
}

/// The answer to `request` given the namespace's routes. Pure.
pub fn respond(
    request: &AdmissionRequest<Pod>,
    settings: &Settings,
    routes: &Routes,
) -> (AdmissionReview<DynamicObject>, Verdict, Option<&'static str>) {
    let response = AdmissionResponse::from(request);
    let Some(pod) = request.object.as_ref() else {
        return (response.into_review(), Verdict::Skipped(Skip::NotLabelled), None);
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    let decided = secrets_for(&namespace, routes).and_then(|secrets| inject::inject(pod, settings, &secrets));
    match decided {
        Ok(Outcome::Skip(skip)) => (response.into_review(), Verdict::Skipped(skip), None),
        Ok(Outcome::Patch(patch)) => match response.clone().with_patch(patch) {
            Ok(r) => (r.into_review(), Verdict::Injected, None),
            Err(e) => {
                let message = format!("cannot serialise the patch: {e}");
                (
                    response.deny(&message).into_review(),
                    Verdict::Denied(message),
                    Some("internal"),
                )
            }
        },
        Err(deny) => {
            let message = format!("detour-sidecar injection: {deny}");
            (
                response.deny(&message).into_review(),
                Verdict::Denied(message),
                Some(deny.reason()),
            )
        }
    }
}

/// The Secrets to mount, from the namespace's table; a pod that is not labelled never
/// needs them, so `Missing` only denies labelled pods (checked by `inject` first).
fn secrets_for(namespace: &str, routes: &Routes) -> Result<BTreeSet<String>, Deny> {
    match routes {
        Routes::Missing => Err(Deny::NoRoutes {
            namespace: namespace.to_owned(),
        }),
        Routes::Found(text) => RouteTable::from_json(text)
            .map(|t| inject::secrets_of(&t))
            .map_err(|e| Deny::BadRoutes {
                namespace: namespace.to_owned(),
                reason: e.to_string(),
            }),
    }
}

/// The answer to a malformed review.
pub fn malformed(message: &str) -> AdmissionReview<DynamicObject> {
    AdmissionResponse::invalid(message).into_review()
}

/// The webhook with its one lookup.
#[derive(Clone)]
pub struct Injector {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Injector {
    /// Answers one review body with the response body.
    pub async fn handle(&self, body: &[u8]) -> Vec<u8> {
        let (review, verdict, reason) = match parse(body) {
            Err(message) => (malformed(&message), Verdict::Malformed, Some("malformed")),
            Ok(request) => {
                let labelled = request
                    .object
                    .as_ref()
                    .and_then(|p| p.metadata.labels.as_ref())
                    .and_then(|l| l.get(inject::INJECT_LABEL))
                    .is_some_and(|v| v == "true");
                let routes = if labelled {
                    self.routes(request.namespace.as_deref().unwrap_or_default())
                        .await
                } else {
                    Ok(Routes::Missing)
                };
                match routes {
                    Ok(routes) => respond(&request, &self.settings, &routes),
                    Err(message) => {
                        let response = AdmissionResponse::from(&request).deny(&message);
                        (response.into_review(), Verdict::Denied(message), Some("lookup"))
                    }
                }
            }
        };
        self.metrics
            .injections
            .with_label_values(&[verdict.outcome()])
            .inc();
        if let Some(reason) = reason {
            self.metrics.webhook_denials.with_label_values(&[reason]).inc();
        }
        match &verdict {
            Verdict::Denied(message) => warn!(%message, "denied a pod"),
            Verdict::Malformed => warn!("denied a malformed AdmissionReview"),
            Verdict::Injected => info!("injected the sidecar"),
            Verdict::Skipped(_) => {}
        }
        serde_json::to_vec(&review).unwrap_or_default()
    }

    async fn routes(&self, namespace: &str) -> Result<Routes, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(defaults::CONFIG_MAP).await {
            Ok(None) => Ok(Routes::Missing),
            Ok(Some(cm)) => Ok(cm
                .data
                .and_then(|mut d| d.remove(defaults::CONFIG_MAP_KEY))
                .map_or(Routes::Missing, Routes::Found)),
            Err(e) => Err(format!(
                "detour-sidecar injection: cannot read ConfigMap {namespace}/{}: {e}",
                defaults::CONFIG_MAP
            )),
        }
    }
}
