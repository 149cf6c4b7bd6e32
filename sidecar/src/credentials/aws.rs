//! AWS credentials through the SDK's own providers (`aws-config`), over our hyper client.
//!
//! Contract:
//! - [`AwsCredentials::default_chain`] is the AWS SDKs' default chain, in their order:
//!   environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the
//!   shared config and credentials files (`AWS_PROFILE`, `AWS_CONFIG_FILE`,
//!   `AWS_SHARED_CREDENTIALS_FILE`; static keys, `role_arn` + `source_profile`,
//!   `credential_process` is not built in), web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` +
//!   `AWS_ROLE_ARN`: IRSA), container credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI` +
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: EKS Pod Identity; or
//!   `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`: ECS), then IMDSv2 on EC2
//!   (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_EC2_METADATA_DISABLED`). STS is reached at
//!   its regional endpoint or `AWS_ENDPOINT_URL_STS`.
//! - [`AwsCredentials::web_identity`] is the target's own `webIdentity` (role and token file)
//!   through the SDK's `AssumeRoleWithWebIdentity` provider.
//! - Credentials are cached and refreshed [`REFRESH_BEFORE`] their expiry (credentials without
//!   one, e.g. static keys in a profile, are re-read every [`STATIC_TTL`]); one refresh runs
//!   at a time and requests wait for it. A failure is remembered for [`FAILURE_TTL`] so a
//!   target without credentials does not run the chain (and its IMDS timeouts) per request.
//! - Requests of the chain go through [`HttpClient::for_credentials`]: the environment's
//!   proxy, but not the destination rules that keep provider traffic off link-local
//!   addresses, because IMDS, EKS Pod Identity and ECS live there. Provider traffic never
//!   uses that client, and a route table cannot change where the chain goes.
//! - Errors name the provider that failed and its reason as the SDK words it, never a key.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use aws_config::provider_config::ProviderConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::http::{
    HttpClient as SdkHttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::error::display::DisplayErrorContext;
use bytes::Bytes;
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;

use crate::providers::HttpClient;
use crate::providers::client::CONNECT_TIMEOUT;

/// How long before expiry cached credentials are refreshed.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// How long credentials without an expiry are used before the chain is asked again.
pub const STATIC_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a failure is remembered before the chain is asked again.
pub const FAILURE_TTL: Duration = Duration::from_secs(10);
/// Largest body a credential endpoint may answer.
const MAX_BODY: usize = 256 * 1024;

/// What the SDK is asked for.
#[derive(Debug, Clone)]
enum Kind {
    DefaultChain,
    WebIdentity { role_arn: String, token_file: String },
}

#[derive(Debug)]
enum Cached {
    Empty,
    Ok { creds: Credentials, refresh_at: Instant },
    Failed { message: String, retry_at: Instant },
}

/// AWS credentials for one target, from the SDK's providers, cached.
#[derive(Debug)]
pub struct AwsCredentials {
    kind: Kind,
    region: String,
    provider: OnceCell<SharedCredentialsProvider>,
    cache: Mutex<Cached>,
}

impl AwsCredentials {
    /// The AWS SDKs' default credential chain (see the module docs), STS in `region`.
    pub fn default_chain(region: &str) -> Self {
        Self::new(Kind::DefaultChain, region)
    }

    /// `AssumeRoleWithWebIdentity` with the token in `token_file` (re-read on each exchange).
    pub fn web_identity(role_arn: &str, token_file: &str, region: &str) -> Self {
        Self::new(
            Kind::WebIdentity {
                role_arn: role_arn.to_owned(),
                token_file: token_file.to_owned(),
            },
            region,
        )
    }

    fn new(kind: Kind, region: &str) -> Self {
        Self {
            kind,
            region: region.to_owned(),
            provider: OnceCell::new(),
            cache: Mutex::new(Cached::Empty),
        }
    }

    /// Where the credentials come from, for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::DefaultChain => "the AWS default credential chain".to_owned(),
            Kind::WebIdentity { role_arn, .. } => format!("web identity for {role_arn}"),
        }
    }

    /// The credentials to sign with now (cached; refreshed ahead of expiry).
    pub async fn current(&self) -> Result<Credentials, String> {
        let mut cached = self.cache.lock().await;
        let now = Instant::now();
        match &*cached {
            Cached::Ok { creds, refresh_at } if now < *refresh_at => return Ok(creds.clone()),
            Cached::Failed { message, retry_at } if now < *retry_at => return Err(message.clone()),
            _ => {}
        }
        let provider = self.provider.get_or_init(|| self.build()).await;
        // Boxed: the chain's future is large and rare; every Bedrock attempt would carry it.
        let result = Box::pin(provider.provide_credentials()).await;
        let now = Instant::now();
        match result {
            Ok(creds) => {
                let refresh_at = match creds.expiry() {
                    Some(expiry) => {
                        let left = expiry
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                            .saturating_sub(REFRESH_BEFORE);
                        now + left
                    }
                    None => now + STATIC_TTL,
                };
                *cached = Cached::Ok {
                    creds: creds.clone(),
                    refresh_at,
                };
                Ok(creds)
            }
            Err(e) => {
                let message = format!("{}: {}", self.describe(), DisplayErrorContext(&e));
                *cached = Cached::Failed {
                    message: message.clone(),
                    retry_at: now + FAILURE_TTL,
                };
                Err(message)
            }
        }
    }

    async fn build(&self) -> SharedCredentialsProvider {
        let region = aws_config::Region::new(self.region.clone());
        let conf = ProviderConfig::without_region()
            .with_region(Some(region.clone()))
            .with_http_client(SdkHttp(credentials_client()));
        match &self.kind {
            Kind::DefaultChain => SharedCredentialsProvider::new(
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(region)
                    .configure(conf)
                    .build()
                    .await,
            ),
            Kind::WebIdentity { role_arn, token_file } => SharedCredentialsProvider::new(
                aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                    .configure(&conf)
                    .static_configuration(aws_config::web_identity_token::StaticConfiguration {
                        web_identity_token_file: token_file.into(),
                        role_arn: role_arn.clone(),
                        session_name: format!("detour-sidecar-{}", crate::providers::now_unix()),
                    })
                    .build(),
            ),
        }
    }
}

/// The one client of every target's credential providers (connections to STS and the
/// metadata endpoints are shared).
pub(crate) fn credentials_client() -> Option<HttpClient> {
    static CLIENT: OnceLock<Option<HttpClient>> = OnceLock::new();
    CLIENT
        .get_or_init(|| match HttpClient::for_credentials() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("cannot build the credential providers' HTTP client: {e}");
                None
            }
        })
        .clone()
}

/// The SDK's HTTP client trait over ours.
#[derive(Debug, Clone)]
struct SdkHttp(Option<HttpClient>);

impl SdkHttpClient for SdkHttp {
    fn http_connector(&self, settings: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(SdkConnector {
            http: self.0.clone(),
            // The SDK's own bounds (IMDS asks for 1 s each), ours when it sets none.
            connect: settings.connect_timeout().unwrap_or(CONNECT_TIMEOUT),
            read: settings.read_timeout().unwrap_or(CONNECT_TIMEOUT),
        })
    }
}

#[derive(Debug)]
struct SdkConnector {
    http: Option<HttpClient>,
    connect: Duration,
    read: Duration,
}

impl HttpConnector for SdkConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let http = self.http.clone();
        let (connect, read) = (self.connect, self.read);
        HttpConnectorFuture::new(async move {
            let Some(http) = http else {
                return Err(ConnectorError::other(
                    "no HTTP client for credentials".into(),
                    None,
                ));
            };
            let req = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::other(Box::new(e), None))?;
            let (parts, body) = req.into_parts();
            let body = body.bytes().map(Bytes::copy_from_slice).unwrap_or_default();
            let sent = tokio::time::timeout(
                connect + read,
                http.request(http::Request::from_parts(parts, body)),
            );
            let resp = match sent.await {
                Err(_) => return Err(ConnectorError::timeout("no answer in time".into())),
                Ok(Err(e)) => return Err(ConnectorError::io(Box::new(e))),
                Ok(Ok(r)) => r,
            };
            let (parts, body) = resp.into_parts();
            let body = crate::providers::upstream_collect(body, Instant::now() + read, MAX_BODY)
                .await
                .map_err(|f| ConnectorError::io(f.detail.into_owned().into()))?;
            let resp = http::Response::from_parts(parts, SdkBody::from(body));
            aws_smithy_runtime_api::http::Response::try_from(resp)
                .map_err(|e| ConnectorError::other(Box::new(e), None))
        })
    }
}
