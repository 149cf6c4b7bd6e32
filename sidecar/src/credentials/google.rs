//! Google OAuth access tokens for Vertex AI, the way Google's client libraries find them.
//!
//! Where a target's token comes from, decided when the table loads ([`TokenSource::from_config`]):
//! - its credential file (`secretName` + key, default `key.json`, or `apiKeyFile`): a
//!   service-account key (JSON, `"type": "service_account"`) whose RS256-signed JWT is
//!   exchanged at the key's `token_uri`; an `authorized_user` file (what `gcloud auth
//!   application-default login` writes) whose refresh token is exchanged; or any other text,
//!   taken as an access token a refresher keeps current in the file;
//! - its `apiKeyEnv`: an access token (e.g. `gcloud auth print-access-token`);
//! - no credentials: application default credentials — `GOOGLE_APPLICATION_CREDENTIALS`,
//!   then gcloud's ADC file (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`), then the metadata
//!   server (GKE Workload Identity, GCE): `http://metadata.google.internal/computeMetadata/
//!   v1/instance/service-accounts/default/token` with `Metadata-Flavor: Google`, the host
//!   replaced by `GCE_METADATA_HOST` as Google's libraries do.
//!
//! Exchanged tokens are cached until [`REFRESH_BEFORE`] ahead of their expiry; one refresh
//! runs at a time. The metadata server is link-local, which the upstream client refuses as
//! a destination: it is reached here over plain HTTP/1.1 (hyper's connection API), never
//! through a proxy, and only for this. Token endpoints are reached through the upstream
//! client, and only over https (plain http only to loopback, for tests). Nothing here logs or
//! formats a key, a token or an assertion: errors name the file, the variable or the
//! endpoint and the status.
//!
//! Written here rather than taken from `gcp_auth` or `google-cloud-auth`: both bring their
//! own HTTP stack (a second TLS configuration, proxy handling and pool beside the sidecar's),
//! and neither lets the metadata exchange and the token endpoint be pointed at loopback
//! fakes through the sidecar's client. What is Google's here is small: one JWT signed with
//! ring (already the TLS provider), two form POSTs and one GET.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout};

use super::{KeySource, Secret};
use crate::providers::HttpClient;

/// How long before expiry a cached token is refreshed.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Bound on one token exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token-endpoint answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// The scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint (an `authorized_user` file's default).
pub const TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's host (replaced by `GCE_METADATA_HOST`).
pub const METADATA_HOST: &str = "metadata.google.internal";
const METADATA_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Lifetime asked for a service account's token (Google's maximum).
const JWT_LIFETIME: u64 = 3600;

/// Why no token could be had. Facts only: a file, a variable, an endpoint, a status and
/// Google's error code — never a key, a token or an assertion.
#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// A credential file or variable could not be read (the message names it).
    #[error("{0}")]
    Source(Cow<'static, str>),
    #[error("{what} is not a Google credential file: {why}")]
    BadFile { what: String, why: String },
    #[error("the private key in {what} is not a PKCS#8 RSA key in PEM")]
    BadKey { what: String },
    #[error("token endpoint {url} is not https (plain http only to loopback)")]
    InsecureTokenUri { url: String },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("could not reach {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("{url} answered {status}: {code}")]
    Rejected { url: String, status: u16, code: String },
    #[error("the answer of {url} has no usable access token")]
    BadAnswer { url: String },
}

impl From<Cow<'static, str>> for GoogleError {
    fn from(m: Cow<'static, str>) -> Self {
        Self::Source(m)
    }
}

/// A token and when it stops being used.
#[derive(Clone, Debug)]
struct Token {
    value: Secret,
    refresh_at: Instant,
}

/// Where a target's tokens come from.
#[derive(Debug)]
pub enum Kind {
    /// A credential file: its content decides (see the module docs); re-read on each refresh.
    File { what: String, key: KeySource },
    /// An access token in an environment variable.
    Env(KeySource),
    /// The metadata server at this `host[:port]`.
    Metadata { host: String },
}

/// A target's Google access tokens, cached.
#[derive(Debug)]
pub struct TokenSource {
    kind: Kind,
    cache: Mutex<Option<Token>>,
}

/// A service-account key or an authorized-user file, as Google writes them.
#[derive(Deserialize)]
struct CredentialFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenSource {
    /// The source for a target's credentials (see the module docs for the order).
    pub fn from_config(c: Option<&detour_api::table::Credentials>) -> Self {
        use detour_api::table::CredentialSource;
        let kind = match c.and_then(|c| c.api_key.as_ref()) {
            Some(src @ CredentialSource::File(path)) => Kind::File {
                what: format!("key file {path}"),
                key: KeySource::from_config(Some(src)),
            },
            Some(src @ CredentialSource::Env(_)) => Kind::Env(KeySource::from_config(Some(src))),
            None => application_default(),
        };
        Self::new(kind)
    }

    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            cache: Mutex::new(None),
        }
    }

    /// Where the tokens come from, for logs and errors (a path, a variable or a host).
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// A token to send now: the cached one while it is far from expiry, else a fresh one.
    pub async fn token(&self, client: &HttpClient) -> Result<Secret, GoogleError> {
        let mut cached = self.cache.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        // Boxed: the exchange is rare, and its future would otherwise size every attempt.
        let fresh = Box::pin(self.fetch(client)).await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    async fn fetch(&self, client: &HttpClient) -> Result<Token, GoogleError> {
        match &self.kind {
            Kind::Env(key) => {
                let value = key
                    .current()?
                    .ok_or(GoogleError::Source("no access token".into()))?;
                // Read once at load: the value never changes, nothing to refresh.
                Ok(Token {
                    value,
                    refresh_at: Instant::now() + Duration::from_secs(365 * 24 * 3600),
                })
            }
            Kind::File { what, key } => {
                let text = key.current()?.ok_or(GoogleError::Source("no key file".into()))?;
                if !text.expose().starts_with('{') {
                    // An access token kept current by a refresher: re-read at the file's pace.
                    return Ok(Token {
                        value: text,
                        refresh_at: Instant::now() + super::KEY_RECHECK,
                    });
                }
                let file: CredentialFile =
                    serde_json::from_str(text.expose()).map_err(|e| GoogleError::BadFile {
                        what: what.clone(),
                        // serde_json's message names line and column, never content.
                        why: format!("not JSON ({})", e.classify_name()),
                    })?;
                exchange_file(client, what, &file).await
            }
            Kind::Metadata { host } => metadata_token(host).await,
        }
    }
}

/// Names serde_json's error category without its message (which may quote content).
trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected fields",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

/// Application default credentials, as Google's libraries resolve them.
fn application_default() -> Kind {
    let file = |path: PathBuf| {
        let path = path.display().to_string();
        Kind::File {
            what: format!("credential file {path}"),
            key: KeySource::from_config(Some(&detour_api::table::CredentialSource::File(path))),
        }
    };
    if let Some(p) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty()) {
        return file(PathBuf::from(p));
    }
    let gcloud = std::env::var_os("CLOUDSDK_CONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/gcloud")));
    if let Some(adc) = gcloud.map(|d| d.join("application_default_credentials.json"))
        && adc.is_file()
    {
        return file(adc);
    }
    Kind::Metadata {
        host: std::env::var("GCE_METADATA_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| METADATA_HOST.to_owned()),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The signed JWT a service account presents (RFC 7523), RS256 with the key's id.
fn assertion(file: &CredentialFile, what: &str, token_uri: &str, now: u64) -> Result<String, GoogleError> {
    let bad = |why: &str| GoogleError::BadFile {
        what: what.to_owned(),
        why: why.to_owned(),
    };
    let email = file
        .client_email
        .as_deref()
        .ok_or_else(|| bad("no client_email"))?;
    let pem = file.private_key.as_deref().ok_or_else(|| bad("no private_key"))?;
    let key = signing_key(pem).ok_or_else(|| GoogleError::BadKey {
        what: what.to_owned(),
    })?;
    let mut head = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let (Some(kid), Some(h)) = (&file.private_key_id, head.as_object_mut()) {
        h.insert("kid".into(), kid.as_str().into());
    }
    let claims = serde_json::json!({
        "iss": email, "scope": SCOPE, "aud": token_uri, "iat": now, "exp": now + JWT_LIFETIME,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(head.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| GoogleError::BadKey {
        what: what.to_owned(),
    })?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// The RSA key of a service-account file (`-----BEGIN PRIVATE KEY-----`, PKCS#8).
fn signing_key(pem: &str) -> Option<ring::signature::RsaKeyPair> {
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::pki_types::pem::PemObject as _;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).ok()
}

/// `application/x-www-form-urlencoded`: RFC 3986's unreserved characters kept, the rest `%XX`.
fn form(pairs: &[(&str, &str)]) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, UNRESERVED),
                percent_encoding::utf8_percent_encode(v, UNRESERVED)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A service-account key's or an authorized-user file's token.
async fn exchange_file(client: &HttpClient, what: &str, file: &CredentialFile) -> Result<Token, GoogleError> {
    let bad = |why: &str| GoogleError::BadFile {
        what: what.to_owned(),
        why: why.to_owned(),
    };
    let token_uri = file.token_uri.as_deref().unwrap_or(TOKEN_URI);
    check_token_uri(token_uri)?;
    let body = match file.kind.as_str() {
        "service_account" => {
            let jwt = assertion(file, what, token_uri, now_unix())?;
            form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &jwt),
            ])
        }
        "authorized_user" => form(&[
            ("grant_type", "refresh_token"),
            (
                "client_id",
                file.client_id.as_deref().ok_or_else(|| bad("no client_id"))?,
            ),
            (
                "client_secret",
                file.client_secret
                    .as_deref()
                    .ok_or_else(|| bad("no client_secret"))?,
            ),
            (
                "refresh_token",
                file.refresh_token
                    .as_deref()
                    .ok_or_else(|| bad("no refresh_token"))?,
            ),
        ]),
        other => {
            return Err(bad(&format!(
                "type {other:?} is not supported (service_account or authorized_user)"
            )));
        }
    };
    let req = Request::builder()
        .method(Method::POST)
        .uri(token_uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(Bytes::from(body))
        .map_err(|_| bad("token_uri is not a URL"))?;
    let url = token_uri.to_owned();
    let resp = match timeout(EXCHANGE_TIMEOUT, client.request(req)).await {
        Err(_) => {
            return Err(GoogleError::Timeout {
                url,
                timeout: EXCHANGE_TIMEOUT,
            });
        }
        Ok(Err(e)) => {
            return Err(GoogleError::Unreachable {
                url,
                why: e.to_string(),
            });
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let body = read_limited(resp.into_body(), &url).await?;
    token_from(status, &body, &url)
}

/// Only https, or plain http to loopback (a test's fake): an assertion or a refresh token is
/// a credential.
fn check_token_uri(url: &str) -> Result<(), GoogleError> {
    let insecure = || GoogleError::InsecureTokenUri { url: url.to_owned() };
    let uri: Uri = url.parse().map_err(|_| insecure())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => Ok(()),
        (Some("http"), Some(h))
            if h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) =>
        {
            Ok(())
        }
        _ => Err(insecure()),
    }
}

async fn read_limited<B>(body: B, url: &str) -> Result<Bytes, GoogleError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match timeout(EXCHANGE_TIMEOUT, Limited::new(body, MAX_ANSWER).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(GoogleError::Unreachable {
            url: url.to_owned(),
            why: format!("the answer could not be read ({e})"),
        }),
        Err(_) => Err(GoogleError::Timeout {
            url: url.to_owned(),
            timeout: EXCHANGE_TIMEOUT,
        }),
    }
}

/// A token endpoint's or the metadata server's answer as a token.
fn token_from(status: StatusCode, body: &[u8], url: &str) -> Result<Token, GoogleError> {
    if !status.is_success() {
        // Google's OAuth errors: {"error": "invalid_grant", "error_description": …}; only the
        // code is kept (the description may echo the request).
        let code = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get("error").and_then(|e| {
                    e.as_str()
                        .map(str::to_owned)
                        .or_else(|| e.get("status").and_then(|s| s.as_str()).map(str::to_owned))
                })
            })
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or_else(|| "no error code".to_owned());
        return Err(GoogleError::Rejected {
            url: url.to_owned(),
            status: status.as_u16(),
            code,
        });
    }
    let answer: TokenAnswer =
        serde_json::from_slice(body).map_err(|_| GoogleError::BadAnswer { url: url.to_owned() })?;
    let value = answer
        .access_token
        .filter(|t| !t.trim().is_empty() && http::HeaderValue::try_from(format!("Bearer {t}")).is_ok())
        .ok_or_else(|| GoogleError::BadAnswer { url: url.to_owned() })?;
    let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(JWT_LIFETIME));
    Ok(Token {
        value: Secret::new(&value),
        refresh_at: Instant::now() + lifetime.saturating_sub(REFRESH_BEFORE),
    })
}

/// The default service account's token from the metadata server, over plain HTTP/1.1.
async fn metadata_token(host: &str) -> Result<Token, GoogleError> {
    let url = format!("http://{host}{METADATA_PATH}");
    let unreachable = |why: String| GoogleError::Unreachable {
        url: url.clone(),
        why,
    };
    let authority = if host.contains(':') && !host.starts_with('[') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| unreachable(e.kind().to_string()))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The connection is driven next to the request; both end when this future does.
        let req = Request::get(METADATA_PATH)
            .header(header::HOST, host)
            .header("Metadata-Flavor", "Google")
            .body(Full::new(Bytes::new()))
            .map_err(|_| unreachable("GCE_METADATA_HOST is not a host".to_owned()))?;
        let url = &url;
        let unreachable = &unreachable;
        let (resp, ()) = futures_util::future::join(
            // Owns `send`: dropping it once the answer is read lets the connection end.
            async move {
                let resp = send
                    .send_request(req)
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                let status = resp.status();
                let body = read_limited(resp.into_body(), url).await?;
                Ok::<_, GoogleError>((status, body))
            },
            async {
                // Ends when the answer has been read and `send` is dropped.
                let _ = conn.await;
            },
        )
        .await;
        resp
    };
    let (status, body) = match timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(GoogleError::Timeout {
                url,
                timeout: EXCHANGE_TIMEOUT,
            });
        }
    };
    token_from(status, &body, &url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only https token endpoints, or plain http to loopback.
    #[test]
    fn token_uri_rules() {
        assert!(check_token_uri("https://oauth2.googleapis.com/token").is_ok());
        assert!(check_token_uri("http://127.0.0.1:9/token").is_ok());
        assert!(check_token_uri("http://localhost:9/token").is_ok());
        assert!(check_token_uri("http://evil.example/token").is_err());
        assert!(check_token_uri("ftp://x/").is_err());
    }

    /// A refusal keeps only Google's error code; a 200 without a token is a bad answer.
    #[test]
    fn token_answers() {
        let e = token_from(
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_grant","error_description":"secret stuff"}"#,
            "u",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "u answered 400: invalid_grant");
        assert!(matches!(
            token_from(StatusCode::OK, br#"{"token_type":"Bearer"}"#, "u"),
            Err(GoogleError::BadAnswer { .. })
        ));
        let t = token_from(
            StatusCode::OK,
            br#"{"access_token":"ya29.x","expires_in":3599}"#,
            "u",
        )
        .unwrap();
        assert_eq!(t.value.expose(), "ya29.x");
    }

    const TEST_KEY: &str = include_str!("../../tests/data/google-test-key.pem");

    /// What the fake token endpoint / metadata server saw.
    #[derive(Default)]
    struct Seen {
        hits: usize,
        bodies: Vec<String>,
        flavors: Vec<Option<String>>,
    }

    /// A loopback server answering every request with a token valid for `expires_in`
    /// seconds, recording what it got.
    async fn fake_google(
        expires_in: u64,
    ) -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::Mutex<Seen>>,
        tokio::task::JoinSet<()>,
    ) {
        use std::sync::{Arc, Mutex as StdMutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(StdMutex::new(Seen::default()));
        let s = seen.clone();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            loop {
                let Ok((io, _)) = listener.accept().await else { return };
                let s = s.clone();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let flavor = req
                            .headers()
                            .get("metadata-flavor")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = {
                            let mut g = s.lock().unwrap();
                            g.hits += 1;
                            g.bodies.push(format!("{path} {}", String::from_utf8_lossy(&body)));
                            g.flavors.push(flavor);
                            g.hits
                        };
                        let text = format!(
                            r#"{{"access_token":"ya29.token-{n}","expires_in":{expires_in},"token_type":"Bearer"}}"#
                        );
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            }
        });
        (addr, seen, tasks)
    }

    fn key_file(dir: &std::path::Path, content: &serde_json::Value) -> TokenSource {
        let path = dir.join("key.json");
        std::fs::write(&path, content.to_string()).unwrap();
        TokenSource::from_config(Some(&detour_api::table::Credentials {
            api_key: Some(detour_api::table::CredentialSource::File(
                path.display().to_string(),
            )),
            ..Default::default()
        }))
    }

    /// A service-account key: an RS256 JWT, signed with the key and verifiable with its
    /// public half, naming the account, the scope and the token endpoint, is exchanged once;
    /// the token is reused until close to expiry, then exchanged again.
    #[tokio::test]
    async fn service_account_jwt_is_signed_exchanged_and_cached() {
        let (addr, seen, _tasks) = fake_google(3600).await;
        let dir = tempfile::tempdir().unwrap();
        let token_uri = format!("http://{addr}/token");
        let src = key_file(
            dir.path(),
            &serde_json::json!({"type": "service_account", "client_email": "sa@p.iam.gserviceaccount.com",
                "private_key": TEST_KEY, "private_key_id": "kid-1", "token_uri": token_uri}),
        );
        let client = HttpClient::new(None).unwrap();
        assert_eq!(src.token(&client).await.unwrap().expose(), "ya29.token-1");
        assert_eq!(src.token(&client).await.unwrap().expose(), "ya29.token-1");
        let body = seen.lock().unwrap().bodies[0].clone();
        assert_eq!(seen.lock().unwrap().hits, 1, "cached");
        let body = body.strip_prefix("/token ").unwrap();
        let form: std::collections::HashMap<String, String> = body
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (
                    k.to_owned(),
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8()
                        .unwrap()
                        .into_owned(),
                )
            })
            .collect();
        assert_eq!(form["grant_type"], "urn:ietf:params:oauth:grant-type:jwt-bearer");
        let jwt = &form["assertion"];
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let head: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            head,
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"})
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "sa@p.iam.gserviceaccount.com");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], token_uri.as_str());
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
        let key = signing_key(TEST_KEY).unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.public().as_ref().to_vec(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .unwrap();
        public
            .verify(b"something else", &URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .unwrap_err();
    }

    /// A token whose lifetime is within REFRESH_BEFORE is fetched again on the next use.
    #[tokio::test]
    async fn short_lived_tokens_are_refreshed() {
        let (addr, seen, _tasks) = fake_google(REFRESH_BEFORE.as_secs()).await;
        let src = TokenSource::new(Kind::Metadata {
            host: addr.to_string(),
        });
        let client = HttpClient::new(None).unwrap();
        assert_eq!(src.token(&client).await.unwrap().expose(), "ya29.token-1");
        assert_eq!(src.token(&client).await.unwrap().expose(), "ya29.token-2");
        assert_eq!(seen.lock().unwrap().hits, 2);
    }

    /// The metadata server (GKE Workload Identity) is asked for the default account's token
    /// with `Metadata-Flavor: Google` on the documented path.
    #[tokio::test]
    async fn metadata_server_token() {
        let (addr, seen, _tasks) = fake_google(3600).await;
        let src = TokenSource::new(Kind::Metadata {
            host: addr.to_string(),
        });
        let client = HttpClient::new(None).unwrap();
        assert_eq!(src.token(&client).await.unwrap().expose(), "ya29.token-1");
        let g = seen.lock().unwrap();
        assert_eq!(g.flavors[0].as_deref(), Some("Google"));
        assert_eq!(g.bodies[0], format!("{METADATA_PATH} "));
    }

    /// gcloud's authorized-user file: its refresh token is exchanged at Google's (here the
    /// file's) token endpoint.
    #[tokio::test]
    async fn authorized_user_refresh() {
        let (addr, seen, _tasks) = fake_google(3600).await;
        let dir = tempfile::tempdir().unwrap();
        let src = key_file(
            dir.path(),
            &serde_json::json!({"type": "authorized_user", "client_id": "cid", "client_secret": "cs",
                "refresh_token": "rt/1", "token_uri": format!("http://{addr}/token")}),
        );
        let client = HttpClient::new(None).unwrap();
        assert_eq!(src.token(&client).await.unwrap().expose(), "ya29.token-1");
        assert_eq!(
            seen.lock().unwrap().bodies[0],
            "/token grant_type=refresh_token&client_id=cid&client_secret=cs&refresh_token=rt%2F1"
        );
    }

    /// What cannot give a token says which file or endpoint and why — never the key, the
    /// refresh token or a token.
    #[tokio::test]
    async fn failures_name_the_source_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let client = HttpClient::new(None).unwrap();
        let bad_key = key_file(
            dir.path(),
            &serde_json::json!({"type": "service_account", "client_email": "sa@p",
                "private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
                "token_uri": "http://127.0.0.1:9/token"}),
        );
        let e = bad_key.token(&client).await.unwrap_err().to_string();
        assert!(
            e.contains("key.json") && e.contains("PKCS#8") && !e.contains("c2VjcmV0"),
            "{e}"
        );
        let plain_http = key_file(
            dir.path(),
            &serde_json::json!({"type": "authorized_user", "client_id": "c", "client_secret": "s3cret",
                "refresh_token": "r", "token_uri": "http://evil.example/token"}),
        );
        let e = plain_http.token(&client).await.unwrap_err().to_string();
        assert!(e.contains("evil.example") && !e.contains("s3cret"), "{e}");
        let missing = TokenSource::from_config(Some(&detour_api::table::Credentials {
            api_key: Some(detour_api::table::CredentialSource::File(
                dir.path().join("nope.json").display().to_string(),
            )),
            ..Default::default()
        }));
        let e = missing.token(&client).await.unwrap_err().to_string();
        assert!(e.contains("nope.json") && e.contains("does not exist"), "{e}");
        let refused = TokenSource::new(Kind::Metadata {
            host: "127.0.0.1:9".to_owned(),
        });
        let e = refused.token(&client).await.unwrap_err().to_string();
        assert!(e.contains("http://127.0.0.1:9/computeMetadata"), "{e}");
    }

    /// A credential file holding a bare access token (a refresher keeps it current) is sent
    /// as it is, with no exchange.
    #[tokio::test]
    async fn bare_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "ya29.static\n").unwrap();
        let src = TokenSource::from_config(Some(&detour_api::table::Credentials {
            api_key: Some(detour_api::table::CredentialSource::File(
                path.display().to_string(),
            )),
            ..Default::default()
        }));
        let client = HttpClient::new(None).unwrap();
        assert_eq!(src.token(&client).await.unwrap().expose(), "ya29.static");
    }
}
