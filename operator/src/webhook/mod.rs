//! The injection webhook: `POST /mutate` with an `admission.k8s.io/v1` AdmissionReview of a
//! Pod, answered with a JSON patch, nothing, or a denial that says why.
//!
//! [`respond`] is pure (the review, the namespace's ModelRoutes and what the metadata of the
//! Secrets they name says in, the review out), so golden files cover it; [`Injector`] adds
//! the lookups and metrics. The mounts come from the ModelRoutes and the Secrets' labels,
//! never from the `detour-routes` ConfigMap: a tenant who can write that ConfigMap must not
//! be able to choose what a pod mounts.

pub mod inject;

use detour_api::{ModelRoute, SecretIndex};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tracing::{info, warn};

use crate::metrics::Metrics;
pub use inject::{Deny, Outcome, Selection, Settings, Skip};

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

/// The namespace as the webhook found it.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Its ModelRoutes.
    pub routes: Vec<ModelRoute>,
    /// The Secrets the selected routes name, from their metadata (opted in or not).
    pub secrets: SecretIndex,
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
    let decided = secrets_for(pod, &namespace, settings, routes)
        .and_then(|secrets| inject::inject(pod, settings, &secrets));
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

/// The Secrets to mount: those of the routes the pod selects that pass the operator's rules.
/// A namespace without routes denies labelled pods (their sidecar would have no table).
fn secrets_for(
    pod: &Pod,
    namespace: &str,
    settings: &Settings,
    routes: &Routes,
) -> Result<std::collections::BTreeSet<String>, Deny> {
    if routes.routes.is_empty() {
        return Err(Deny::NoRoutes {
            namespace: namespace.to_owned(),
        });
    }
    let selected = inject::selected(pod, namespace, settings, &routes.routes)?;
    Ok(inject::mounts(
        &selected,
        &routes.secrets,
        &settings.allowed_hosts,
    ))
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
                let routes = match (&request.object, labelled) {
                    (Some(pod), true) => {
                        self.routes(pod, request.namespace.as_deref().unwrap_or_default())
                            .await
                    }
                    _ => Ok(Routes::default()),
                };
                match routes {
                    // With fleet health on, each pod's sidecar gets a key of its own for the
                    // fleet's view (the operator reads it back from the pod it polls).
                    Ok(routes) if self.settings.fleet => {
                        let settings = Settings {
                            fleet_key: inject::fleet_key(),
                            ..self.settings.clone()
                        };
                        respond(&request, &settings, &routes)
                    }
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

    /// The namespace's ModelRoutes (one list), and the metadata of the Secrets the routes
    /// `pod` selects name (one metadata-only GET each).
    async fn routes(&self, pod: &Pod, namespace: &str) -> Result<Routes, String> {
        let api: Api<ModelRoute> = Api::namespaced(self.client.clone(), namespace);
        let routes = api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("detour-sidecar injection: cannot list ModelRoutes in {namespace}: {e}"))?
            .items;
        // An unknown route name is denied by `respond`; the Secrets of the rest are read here.
        let selected: Vec<ModelRoute> = match inject::selected(pod, namespace, &self.settings, &routes) {
            Ok(s) => s.into_iter().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let secrets = crate::controller::secret_index(&self.client, namespace, &selected)
            .await
            .map_err(|e| format!("detour-sidecar injection: {e}"))?;
        Ok(Routes { routes, secrets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier::mock_client;
    use serde_json::{Value, json};

    fn review(labelled: bool, routes_annotation: Option<&str>) -> Vec<u8> {
        let labels = if labelled {
            json!({"detour.dev/inject": "true"})
        } else {
            json!({})
        };
        let annotations = match routes_annotation {
            Some(a) => json!({"detour.dev/routes": a}),
            None => json!({}),
        };
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "namespace": "shop", "operation": "CREATE",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "userInfo": {},
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "web", "labels": labels, "annotations": annotations},
                           "spec": {"containers": [{"name": "web", "image": "web"}]}}
            }
        }))
        .unwrap()
    }

    fn route_list() -> Value {
        json!({"apiVersion": "detour.dev/v1alpha1", "kind": "ModelRouteList", "metadata": {},
        "items": [{
            "apiVersion": "detour.dev/v1alpha1", "kind": "ModelRoute",
            "metadata": {"name": "chat", "namespace": "shop"},
            "spec": {"model": "m", "targets": [{"name": "a", "provider": "openai", "model": "x",
                     "credentials": {"secretName": "openai"}}]}
        }]})
    }

    fn secret_meta(labels: Value) -> Value {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": {"name": "openai", "namespace": "shop", "labels": labels}})
    }

    fn injector(client: Client) -> Injector {
        Injector {
            client,
            settings: Settings::default(),
            metrics: Metrics::new().unwrap(),
        }
    }

    const ROUTES: &str = "/apis/detour.dev/v1alpha1/namespaces/shop/modelroutes";
    const SECRET: &str = "/api/v1/namespaces/shop/secrets/openai";

    fn patch_text(answer: &Value) -> String {
        let patch: Vec<u8> = serde_json::from_value(answer["response"]["patch"].clone()).unwrap();
        String::from_utf8(patch).unwrap()
    }

    /// A labelled pod selecting a route: the webhook lists the namespace's ModelRoutes, reads
    /// the metadata (only) of the Secret the route names, mounts it because it is opted in,
    /// and counts an injection. It never reads the `detour-routes` ConfigMap.
    #[tokio::test]
    async fn labelled_pod_reads_routes_and_secret_metadata_and_is_patched() {
        let (client, mut v) = mock_client();
        let inj = injector(client);
        let body = review(true, Some("chat"));
        let (answer, ()) = tokio::join!(inj.handle(&body), async {
            v.expect("GET", ROUTES).await.reply(200, &route_list());
            let call = v.expect("GET", SECRET).await;
            assert!(
                call.accept.contains("as=PartialObjectMetadata"),
                "{}",
                call.accept
            );
            call.reply(200, &secret_meta(json!({"detour.dev/credentials": "true"})));
        });
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["uid"], "u-1");
        assert!(patch_text(&answer).contains("detour-cred-openai"));
        assert!(
            inj.metrics
                .render()
                .contains("detour_operator_injections_total{outcome=\"injected\"} 1")
        );
        v.done().await;
    }

    /// A Secret without the opt-in label is not mounted, even for a pod that selects its route.
    #[tokio::test]
    async fn secret_without_opt_in_is_not_mounted() {
        let (client, mut v) = mock_client();
        let inj = injector(client);
        let body = review(true, Some("*"));
        let (answer, ()) = tokio::join!(inj.handle(&body), async {
            v.expect("GET", ROUTES).await.reply(200, &route_list());
            v.expect("GET", SECRET).await.reply(200, &secret_meta(json!({})));
        });
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(
            !patch_text(&answer).contains("detour-cred-"),
            "{}",
            patch_text(&answer)
        );
        v.done().await;
    }

    /// Without the routes annotation the default (none) selects nothing: no Secret is read
    /// and none is mounted.
    #[tokio::test]
    async fn no_selection_mounts_nothing() {
        let (client, mut v) = mock_client();
        let inj = injector(client);
        let body = review(true, None);
        let (answer, ()) = tokio::join!(inj.handle(&body), async {
            v.expect("GET", ROUTES).await.reply(200, &route_list());
        });
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(!patch_text(&answer).contains("detour-cred-"));
        v.done().await;
    }

    /// An unlabelled pod costs no apiserver call.
    #[tokio::test]
    async fn unlabelled_pod_needs_no_lookup() {
        let (client, v) = mock_client();
        let inj = injector(client);
        let answer: Value = serde_json::from_slice(&inj.handle(&review(false, None)).await).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none());
        v.done().await;
    }

    /// No routes: denied (403) naming what to create; an apiserver error: denied naming
    /// the lookup and the error. Both are counted by reason.
    #[tokio::test]
    async fn missing_routes_and_lookup_errors_deny() {
        let (client, mut v) = mock_client();
        let inj = injector(client);
        let body = review(true, None);
        let (answer, ()) = tokio::join!(inj.handle(&body), async {
            v.expect("GET", ROUTES).await.reply(
                200,
                &json!({"apiVersion": "detour.dev/v1alpha1", "kind": "ModelRouteList", "metadata": {}, "items": []}),
            );
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
            v.expect("GET", ROUTES).await.fail(500, "InternalError");
        });
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        assert!(
            answer["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot list ModelRoutes in shop")
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
