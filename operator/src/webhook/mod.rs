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
    if let Some(skip) = inject::skip(pod) {
        return (response.into_review(), Verdict::Skipped(skip), None);
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let decided = secrets_for(&namespace, routes).and_then(|secrets| inject::inject(pod, settings, &secrets));
    match decided {
        Ok(Outcome::Skip(skip)) => (response.into_review(), Verdict::Skipped(skip), None),
        Ok(Outcome::Patch(patch)) => match response.clone().with_patch(patch) {
            Ok(r) => (r.into_review(), Verdict::Injected, None),
            Err(e) => {
                let message = format!("detour-sidecar injection: cannot serialise the patch: {e}");
                (
                    forbid(response, &message).into_review(),
                    Verdict::Denied(message),
                    Some("internal"),
                )
            }
        },
        Err(deny) => {
            let message = format!("detour-sidecar injection: {deny}");
            (
                forbid(response, &message).into_review(),
                Verdict::Denied(message),
                Some(deny.reason()),
            )
        }
    }
}

/// A denial with the HTTP status the apiserver reports to the client (403, as for RBAC).
fn forbid(response: AdmissionResponse, message: &str) -> AdmissionResponse {
    let mut response = response.deny(message);
    response.result.code = 403;
    response.result.reason = "Forbidden".to_owned();
    response
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
                        let response = forbid(AdmissionResponse::from(&request), &message);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::mock_client;
    use detour_api::{Input, SecretIndex, compile};
    use serde_json::{Value, json};

    fn review(labelled: bool) -> Vec<u8> {
        let labels = if labelled {
            json!({"detour.dev/inject": "true"})
        } else {
            json!({})
        };
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "namespace": "shop", "operation": "CREATE",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "userInfo": {},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": labels},
                           "spec": {"containers": [{"name": "web", "image": "web"}]}}
            }
        }))
        .unwrap()
    }

    fn routes_cm() -> Value {
        let route: detour_api::ModelRoute = serde_json::from_value(json!({
            "apiVersion": "detour.dev/v1alpha1", "kind": "ModelRoute",
            "metadata": {"name": "chat", "namespace": "shop"},
            "spec": {"model": "m", "targets": [{"name": "a", "provider": "openai", "model": "x",
                     "credentials": {"secretName": "openai"}}]}
        }))
        .unwrap();
        let mut secrets = SecretIndex::new();
        secrets.insert("shop", "openai", ["api-key"]);
        let table = compile(&Input::cluster(&[route], &[], &secrets, "detour-system")).table;
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "detour-routes", "namespace": "shop"},
               "data": {"routes.json": table.to_json()}})
    }

    fn injector(client: Client) -> Injector {
        Injector {
            client,
            settings: Settings::default(),
            metrics: Metrics::new().unwrap(),
        }
    }

    const CM: &str = "/api/v1/namespaces/shop/configmaps/detour-routes";

    /// A labelled pod: the webhook reads the namespace's ConfigMap, mounts the Secret its
    /// routes name, and counts an injection.
    #[tokio::test]
    async fn labelled_pod_reads_the_routes_and_is_patched() {
        let (client, mut v) = mock_client();
        let inj = injector(client);
        let body = review(true);
        let (answer, ()) = tokio::join!(inj.handle(&body), async {
            v.expect("GET", CM).await.reply(200, &routes_cm());
        });
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["uid"], "u-1");
        let patch: Vec<u8> = serde_json::from_value(answer["response"]["patch"].clone()).unwrap();
        assert!(String::from_utf8(patch).unwrap().contains("detour-cred-openai"));
        assert!(
            inj.metrics
                .render()
                .contains("detour_operator_injections_total{outcome=\"injected\"} 1")
        );
    }

    /// An unlabelled pod costs no apiserver call.
    #[tokio::test]
    async fn unlabelled_pod_needs_no_lookup() {
        let (client, v) = mock_client();
        let inj = injector(client);
        let answer: Value = serde_json::from_slice(&inj.handle(&review(false)).await).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none());
        v.done().await;
    }

    /// No ConfigMap: denied (403) naming what to create; an apiserver error: denied naming
    /// the ConfigMap and the error. Both are counted by reason.
    #[tokio::test]
    async fn missing_routes_and_lookup_errors_deny() {
        let (client, mut v) = mock_client();
        let inj = injector(client);
        let body = review(true);
        let (answer, ()) = tokio::join!(inj.handle(&body), async {
            v.expect("GET", CM).await.fail(404, "NotFound");
        });
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(answer["response"]["status"]["code"], 403, "{answer}");
        assert!(
            answer["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("create a ModelRoute")
        );

        let (answer, ()) = tokio::join!(inj.handle(&body), async {
            v.expect("GET", CM).await.fail(500, "InternalError");
        });
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        assert!(
            answer["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot read ConfigMap shop/detour-routes")
        );
        let metrics = inj.metrics.render();
        assert!(
            metrics.contains("detour_operator_webhook_denials_total{reason=\"no_routes\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("detour_operator_webhook_denials_total{reason=\"lookup\"} 1"),
            "{metrics}"
        );
    }
}
