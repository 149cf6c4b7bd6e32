//! Microsoft Entra ID workload identity for `azure-openai`: the pod's federated token,
//! exchanged for an access token to Azure OpenAI.
//!
//! The exchange is the one documented OAuth 2.0 client-credentials request with a client
//! assertion (Microsoft identity platform, "access token request with a federated
//! credential"): `POST {authority}/{tenant}/oauth2/v2.0/token` with the form fields
//! `client_id`, `client_assertion` (the token file's content, re-read for each exchange since
//! kubelet rotates it), `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
//! `grant_type=client_credentials` and `scope=https://cognitiveservices.azure.com/.default`.
//! The answer's `access_token` is cached until [`REFRESH_BEFORE`] ahead of its `expires_in`;
//! one exchange runs at a time; a failure is remembered for [`FAILURE_TTL`].
//!
//! Where the values come from: the target's `azureWorkloadIdentity` fields, else the variables
//! the Azure Workload Identity webhook sets in the pod — `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
//! `AZURE_FEDERATED_TOKEN_FILE` — and the authority from `AZURE_AUTHORITY_HOST` (default
//! `https://login.microsoftonline.com/`). The authority is never taken from a route table: a
//! route could otherwise send the pod's token anywhere.
//!
//! Why not the `azure_identity` crate: its default (and only ready-made) transport is
//! `reqwest`, a second HTTP and TLS stack beside hyper/rustls, and it is a beta on the 1.x
//! line; the exchange is one form POST and one JSON answer over the client we already have.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::Secret;

/// The scope of an access token to Azure OpenAI (Cognitive Services).
pub const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Entra ID's public-cloud authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
/// How long before expiry a cached token is replaced.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// How long a failed exchange is remembered.
pub const FAILURE_TTL: Duration = Duration::from_secs(10);
/// Bound on one exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug)]
enum Cached {
    Empty,
    Ok { token: Secret, refresh_at: Instant },
    Failed { message: String, retry_at: Instant },
}

/// One target's workload identity.
#[derive(Debug)]
pub struct WorkloadIdentity {
    client_id: Option<String>,
    tenant_id: Option<String>,
    token_file: String,
    authority: String,
    cache: Mutex<Cached>,
}

/// The federated token file a target reads: its own, else `AZURE_FEDERATED_TOKEN_FILE`, else
/// the webhook's default path.
pub fn token_file(c: &detour_api::table::AzureWorkloadIdentity) -> String {
    c.token_file
        .clone()
        .or_else(|| {
            std::env::var("AZURE_FEDERATED_TOKEN_FILE")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| detour_api::defaults::AZURE_FEDERATED_TOKEN_FILE.to_owned())
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

impl WorkloadIdentity {
    pub fn from_config(c: &detour_api::table::AzureWorkloadIdentity) -> Self {
        Self {
            client_id: c.client_id.clone().or_else(|| env("AZURE_CLIENT_ID")),
            tenant_id: c.tenant_id.clone().or_else(|| env("AZURE_TENANT_ID")),
            token_file: token_file(c),
            authority: env("AZURE_AUTHORITY_HOST").unwrap_or_else(|| DEFAULT_AUTHORITY.to_owned()),
            cache: Mutex::new(Cached::Empty),
        }
    }

    /// An access token for Azure OpenAI (cached; exchanged again ahead of expiry). The error
    /// names the client, the tenant, the file or Entra ID's error code, never a token.
    pub async fn current(&self) -> Result<Secret, String> {
        let mut cached = self.cache.lock().await;
        let now = Instant::now();
        match &*cached {
            Cached::Ok { token, refresh_at } if now < *refresh_at => return Ok(token.clone()),
            Cached::Failed { message, retry_at } if now < *retry_at => return Err(message.clone()),
            _ => {}
        }
        let result = Box::pin(self.exchange()).await;
        let now = Instant::now();
        match result {
            Ok((token, expires_in)) => {
                *cached = Cached::Ok {
                    token: token.clone(),
                    refresh_at: now + expires_in.saturating_sub(REFRESH_BEFORE),
                };
                Ok(token)
            }
            Err(message) => {
                *cached = Cached::Failed {
                    message: message.clone(),
                    retry_at: now + FAILURE_TTL,
                };
                Err(message)
            }
        }
    }

    async fn exchange(&self) -> Result<(Secret, Duration), String> {
        let client_id = self
            .client_id
            .as_deref()
            .ok_or("Entra ID workload identity: no client id (set azureWorkloadIdentity.clientId or AZURE_CLIENT_ID)")?;
        let tenant_id = self
            .tenant_id
            .as_deref()
            .ok_or("Entra ID workload identity: no tenant id (set azureWorkloadIdentity.tenantId or AZURE_TENANT_ID)")?;
        let assertion = super::read_key_file(&self.token_file).map_err(|m| {
            format!(
                "Entra ID workload identity: {}",
                m.replacen("key file", "federated token file", 1)
            )
        })?;
        let url = format!(
            "{}/{tenant_id}/oauth2/v2.0/token",
            self.authority.trim_end_matches('/')
        );
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", client_id)
            .append_pair("scope", SCOPE)
            .append_pair("grant_type", "client_credentials")
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", assertion.expose())
            .finish();
        let who = format!("Entra ID token for client {client_id} in tenant {tenant_id}");
        let req = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Bytes::from(form))
            .map_err(|_| format!("{who}: the authority {:?} is not a valid URL", self.authority))?;
        let Some(client) = super::aws::credentials_client() else {
            return Err(format!("{who}: no HTTP client"));
        };
        let deadline = Instant::now() + EXCHANGE_TIMEOUT;
        let resp = match tokio::time::timeout_at(deadline, client.request(req)).await {
            Err(_) => return Err(format!("{who}: {url} did not answer within {EXCHANGE_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(format!("{who}: {e}")),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let body = crate::providers::upstream_collect(resp.into_body(), deadline, MAX_BODY)
            .await
            .map_err(|f| format!("{who}: {}", f.detail))?;
        if !status.is_success() {
            let e: ErrorAnswer = serde_json::from_slice(&body).unwrap_or(ErrorAnswer {
                error: String::new(),
                error_codes: Vec::new(),
            });
            let codes: Vec<String> = e.error_codes.iter().map(|c| format!("AADSTS{c}")).collect();
            return Err(format!(
                "{who}: answered {} {} {}",
                status.as_u16(),
                if e.error.is_empty() {
                    "(no error code)"
                } else {
                    &e.error
                },
                codes.join(",")
            )
            .trim_end()
            .to_owned());
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| format!("{who}: the answer has no access_token"))?;
        Ok((
            Secret::new(&answer.access_token),
            Duration::from_secs(answer.expires_in),
        ))
    }
}
