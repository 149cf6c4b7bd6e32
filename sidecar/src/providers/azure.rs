//! `azure-openai`: OpenAI's wire format at Azure's deployment URLs.
//!
//! `POST {endpoint}/openai/deployments/{deployment}/{chat/completions|completions|embeddings}
//! ?api-version={apiVersion or 2024-10-21}`, where the deployment is the target's `model`.
//! The Responses API (a target with the `responses` capability) is Azure's v1 API:
//! `POST {endpoint}/openai/v1/responses`, the deployment in the body's `model`, no
//! `api-version` (the v1 API takes none; `apiVersion` applies to the deployment URLs).
//! Bodies and streams pass through as for `openai` (same error mapper, same SSE reader).
//!
//! Authentication, one documented rule: the credential (`apiKey`, file or env) is sent as
//! `api-key: …` unless it is a Microsoft Entra ID access token — a value starting with
//! `Bearer ` or shaped like a JWT (`eyJ…` with two dots) — which is sent as
//! `Authorization: Bearer …`. Azure keys are hex and never look like a JWT, so a token
//! refresher that rewrites the mounted file switches the scheme without a config change.
//!
//! With `credentials.azureWorkloadIdentity` the sidecar gets the Entra ID access token
//! itself (`credentials::azure`: the pod's federated token exchanged at Entra ID, cached and
//! refreshed before expiry) and sends it as `Authorization: Bearer …`.

use http::{HeaderName, HeaderValue, header};

use super::upstream;
use super::{Adapter, Call, Endpoint, Failure, HttpClient, KeySource, Reply, Secret};
use crate::class::Class;
use crate::credentials::azure::WorkloadIdentity;

/// The `api-version` used when the target sets none (the GA version current at writing).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// An Azure OpenAI deployment.
#[derive(Debug)]
pub struct Azure {
    /// `{endpoint}/openai/deployments/{deployment}/{path}?api-version={version}`.
    uris: upstream::Uris,
    key: KeySource,
    /// Entra ID workload identity, which replaces `key` when set.
    entra: Option<WorkloadIdentity>,
}

impl Azure {
    /// Uses Entra ID workload identity instead of a key.
    #[must_use]
    pub fn with_workload_identity(mut self, entra: Option<WorkloadIdentity>) -> Self {
        self.entra = entra;
        self
    }

    pub fn new(
        endpoint: Option<&str>,
        deployment: &str,
        api_version: Option<&str>,
        key: KeySource,
        client: &HttpClient,
    ) -> Self {
        let endpoint = endpoint.unwrap_or("").trim_end_matches('/');
        let endpoint = endpoint.strip_suffix("/openai").unwrap_or(endpoint);
        let version = api_version.unwrap_or(DEFAULT_API_VERSION);
        Self {
            uris: upstream::Uris::new(client, |e| match e {
                // The v1 API: no deployment in the URL (the body's `model` names it) and no
                // dated api-version.
                Endpoint::Responses => format!("{endpoint}/openai/v1/responses"),
                _ => format!(
                    "{endpoint}/openai/deployments/{deployment}/{}?api-version={version}",
                    e.path()
                ),
            }),
            key,
            entra: None,
        }
    }
}

/// The header a credential goes in (see the module docs for the rule).
fn auth_header(key: &Secret) -> Result<(HeaderName, HeaderValue), Failure> {
    let raw = key.expose();
    let token = raw.strip_prefix("Bearer ").map(str::trim);
    let is_jwt = raw.starts_with("eyJ") && raw.matches('.').count() == 2;
    let (name, value) = match token {
        Some(t) => (header::AUTHORIZATION, format!("Bearer {t}")),
        None if is_jwt => (header::AUTHORIZATION, format!("Bearer {raw}")),
        None => (HeaderName::from_static("api-key"), raw.to_owned()),
    };
    let mut value = HeaderValue::try_from(value)
        .map_err(|_| Failure::new(Class::Credentials, "the API key is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

impl Adapter for Azure {
    async fn send(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        let key = match &self.entra {
            // Boxed: an exchange is rare, and its future would size every attempt.
            Some(entra) => Some(Secret::new(&format!(
                "Bearer {}",
                Box::pin(entra.current())
                    .await
                    .map_err(|m| Failure::new(Class::Credentials, m))?
                    .expose()
            ))),
            None => self
                .key
                .current()
                .map_err(|m| Failure::new(Class::Credentials, m))?,
        };
        let dest = self.uris.get(call.endpoint)?;
        let mut req = upstream::post(dest, call)?;
        if let Some(key) = key {
            let (name, value) = auth_header(&key)?;
            req.headers_mut().insert(name, value);
        }
        upstream::openai_shaped(dest, call, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys go in `api-key`; Entra tokens (JWT-shaped or `Bearer …`) in `Authorization`.
    #[test]
    fn picks_the_auth_header() {
        let (n, v) = auth_header(&Secret::new("0123456789abcdef0123456789abcdef")).unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("api-key", "0123456789abcdef0123456789abcdef")
        );
        assert!(v.is_sensitive());
        let (n, v) = auth_header(&Secret::new("eyJhbGciOi.eyJzdWIiOi.c2ln\n")).unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("authorization", "Bearer eyJhbGciOi.eyJzdWIiOi.c2ln")
        );
        let (n, v) = auth_header(&Secret::new("Bearer opaque")).unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("authorization", "Bearer opaque")
        );
    }

    /// The URL is the deployment URL; a trailing `/openai` on the endpoint is tolerated. The
    /// Responses API is the v1 API's: no deployment in the path, no api-version.
    #[test]
    fn builds_the_deployment_url() {
        let client = HttpClient::new(None).unwrap();
        let a = Azure::new(
            Some("https://x.openai.azure.com/openai/"),
            "gpt4o",
            None,
            KeySource::None,
            &client,
        );
        assert_eq!(
            a.uris.get(Endpoint::Chat).unwrap().to_string(),
            format!(
                "https://x.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version={DEFAULT_API_VERSION}"
            )
        );
        assert_eq!(
            a.uris.get(Endpoint::Responses).unwrap().to_string(),
            "https://x.openai.azure.com/openai/v1/responses"
        );
    }
}
