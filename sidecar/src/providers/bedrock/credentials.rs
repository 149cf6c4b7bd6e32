//! AWS credentials for SigV4: static keys from mounted files / env (re-read when the files
//! change, through [`KeySource`]), or web identity (IRSA) exchanged at STS.
//!
//! Web identity: the projected service-account token (re-read on every exchange, since
//! kubelet rotates it) goes to `AssumeRoleWithWebIdentity` — an unsigned form POST to
//! `https://sts.{region}.amazonaws.com/` (or `AWS_ENDPOINT_URL_STS`, the variable the AWS
//! SDKs honour, for tests and private endpoints). The temporary credentials are cached until
//! [`REFRESH_BEFORE`] ahead of their `Expiration`; one refresh runs at a time. Nothing here
//! logs or formats a key, a token or a secret: errors name the file or the STS status only.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, header};
use tokio::sync::Mutex;
use tokio::time::timeout;

use super::super::upstream::{self, collect};
use super::super::{HttpClient, KeySource, Secret};

/// How long before expiry cached web-identity credentials are refreshed.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Lifetime asked of STS.
const SESSION_SECONDS: u64 = 3600;
/// Bound on one STS exchange.
const STS_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no credentials could be had. Facts only: a file, a role, a status, AWS's error code —
/// never a key, a secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A key file or variable could not be read (the message names it).
    #[error("{0}")]
    Source(Cow<'static, str>),
    #[error("bedrock needs credentials: an access key id and a secret access key, or webIdentity")]
    Missing,
    #[error("the STS endpoint {url} is not a valid URL")]
    StsUrl { url: String },
    #[error("STS at {url} did not answer within {timeout:?}")]
    StsTimeout { url: String, timeout: Duration },
    #[error("could not reach STS at {url}")]
    StsUnreachable { url: String },
    #[error("STS AssumeRoleWithWebIdentity for {role_arn} answered {status}: {code}")]
    StsRejected {
        role_arn: String,
        status: u16,
        code: String,
    },
    #[error("the STS answer for {role_arn} has no usable credentials")]
    StsAnswer { role_arn: String },
}

impl From<Cow<'static, str>> for CredentialError {
    fn from(m: Cow<'static, str>) -> Self {
        Self::Source(m)
    }
}

/// Credentials for one request.
#[derive(Clone, Debug)]
pub struct Keys {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub expires: Option<SystemTime>,
}

/// Where a target's credentials come from.
#[derive(Debug)]
pub enum Source {
    Static {
        access_key_id: KeySource,
        secret_access_key: KeySource,
        session_token: KeySource,
    },
    WebIdentity {
        role_arn: String,
        token: KeySource,
        sts_url: String,
        cache: Mutex<Option<Keys>>,
    },
}

impl Source {
    pub fn from_config(c: Option<&detour_api::table::Credentials>, region: &str) -> Self {
        let c = c.cloned().unwrap_or_default();
        if let Some(w) = &c.web_identity {
            let sts_url = std::env::var("AWS_ENDPOINT_URL_STS")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com/"));
            return Self::WebIdentity {
                role_arn: w.role_arn.clone(),
                token: KeySource::from_config(Some(&detour_api::table::CredentialSource::File(
                    w.token_file.clone(),
                ))),
                sts_url,
                cache: Mutex::new(None),
            };
        }
        Self::Static {
            access_key_id: KeySource::from_config(c.access_key_id.as_ref()),
            secret_access_key: KeySource::from_config(c.secret_access_key.as_ref()),
            session_token: KeySource::from_config(c.session_token.as_ref()),
        }
    }

    /// The credentials to sign with now.
    pub async fn current(&self, client: &HttpClient) -> Result<Keys, CredentialError> {
        match self {
            Self::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                let id = access_key_id.current()?.ok_or(CredentialError::Missing)?;
                let secret = secret_access_key.current()?.ok_or(CredentialError::Missing)?;
                Ok(Keys {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: session_token.current()?,
                    expires: None,
                })
            }
            Self::WebIdentity {
                role_arn,
                token,
                sts_url,
                cache,
            } => {
                let mut cached = cache.lock().await;
                if let Some(k) = cached.as_ref()
                    && k.expires.is_some_and(|e| e > SystemTime::now() + REFRESH_BEFORE)
                {
                    return Ok(k.clone());
                }
                let token = token.current()?.ok_or(CredentialError::Missing)?;
                // Boxed: the exchange is rare, and its future would otherwise size every
                // Bedrock attempt.
                let keys = Box::pin(assume_role(client, sts_url, role_arn, &token)).await?;
                *cached = Some(keys.clone());
                Ok(keys)
            }
        }
    }
}

/// What stays as it is in a percent-encoded URL or form component: RFC 3986's unreserved
/// characters (SigV4's and STS's escaping); everything else is `%XX`.
pub(crate) const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `application/x-www-form-urlencoded` escaping.
fn form_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

async fn assume_role(
    client: &HttpClient,
    sts_url: &str,
    role_arn: &str,
    token: &Secret,
) -> Result<Keys, CredentialError> {
    let url = || sts_url.to_owned();
    let session = format!("detour-sidecar-{}", upstream::now_unix());
    let form = format!(
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn={}&RoleSessionName={}&DurationSeconds={SESSION_SECONDS}&WebIdentityToken={}",
        form_escape(role_arn),
        form_escape(&session),
        form_escape(token.expose()),
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri(sts_url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/xml")
        .header(header::USER_AGENT, upstream::USER_AGENT)
        .body(Bytes::from(form))
        .map_err(|_| CredentialError::StsUrl { url: url() })?;
    let timed_out = || CredentialError::StsTimeout {
        url: url(),
        timeout: STS_TIMEOUT,
    };
    let resp = match timeout(STS_TIMEOUT, client.request(req)).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(_)) => return Err(CredentialError::StsUnreachable { url: url() }),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let deadline = tokio::time::Instant::now() + STS_TIMEOUT;
    let body = collect(resp.into_body(), deadline, 64 * 1024)
        .await
        .map_err(|f| {
            if f.class == crate::class::Class::Timeout {
                timed_out()
            } else {
                CredentialError::StsUnreachable { url: url() }
            }
        })?;
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        // The error code is AWS's own (`InvalidIdentityToken`, `AccessDenied`, ...), never a secret.
        return Err(CredentialError::StsRejected {
            role_arn: role_arn.to_owned(),
            status: status.as_u16(),
            code: xml_text(&text, "Code").unwrap_or("unknown").to_owned(),
        });
    }
    parse_credentials(&text).ok_or_else(|| CredentialError::StsAnswer {
        role_arn: role_arn.to_owned(),
    })
}

/// The text of the first `<tag>…</tag>` (STS answers are flat enough for this; values are
/// XML-unescaped for the five predefined entities).
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].trim())
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The `<Credentials>` of an `AssumeRoleWithWebIdentityResponse`.
fn parse_credentials(xml: &str) -> Option<Keys> {
    let creds = xml_text(xml, "Credentials")?;
    Some(Keys {
        access_key_id: Secret::new(&unescape(xml_text(creds, "AccessKeyId")?)),
        secret_access_key: Secret::new(&unescape(xml_text(creds, "SecretAccessKey")?)),
        session_token: Some(Secret::new(&unescape(xml_text(creds, "SessionToken")?))),
        expires: Some(parse_rfc3339(xml_text(creds, "Expiration")?)?),
    })
}

/// An RFC 3339 timestamp (`2026-11-26T08:00:00Z`, fractional seconds and offsets allowed).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    /// An STS answer yields the three values and the expiry; nothing of them prints.
    #[test]
    fn parses_sts_answer() {
        let xml = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>wJalr/secret+key</SecretAccessKey>
      <SessionToken>FwoG&amp;token</SessionToken>
      <Expiration>2026-11-26T08:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;
        let k = parse_credentials(xml).unwrap();
        assert_eq!(k.access_key_id.expose(), "ASIAEXAMPLE");
        assert_eq!(k.secret_access_key.expose(), "wJalr/secret+key");
        assert_eq!(k.session_token.as_ref().unwrap().expose(), "FwoG&token");
        assert_eq!(
            k.expires.unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_795_680_000
        );
        let dbg = format!("{k:?}");
        assert!(
            !dbg.contains("wJalr") && !dbg.contains("ASIA") && !dbg.contains("FwoG"),
            "{dbg}"
        );
    }

    /// Form values keep only unreserved characters; the rest is `%XX` (UTF-8 bytes).
    #[test]
    fn form_values_are_escaped() {
        assert_eq!(form_escape("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(
            form_escape("arn:aws:iam::1:role/x y+z"),
            "arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx%20y%2Bz"
        );
        assert_eq!(form_escape("é"), "%C3%A9");
    }

    /// Dates parse to the right instant, including leap years.
    #[test]
    fn parses_dates() {
        let t = |s: &str| {
            parse_rfc3339(s)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(t("1970-01-01T00:00:00Z"), 0);
        assert_eq!(t("2024-02-29T12:00:00.123Z"), 1_709_208_000);
        assert_eq!(t("2024-02-29T13:00:00+01:00"), 1_709_208_000);
        assert!(parse_rfc3339("nonsense").is_none());
        assert!(parse_rfc3339("2024-02-30T12:00:00Z").is_none());
    }

    /// A loopback STS that answers `AssumeRoleWithWebIdentity` for one token, with
    /// credentials expiring `ttl` from now; counts its hits.
    async fn fake_sts(
        ttl: Duration,
    ) -> (
        String,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinSet<()>,
    ) {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            loop {
                let Ok((io, _)) = listener.accept().await else { return };
                let h = h.clone();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let h = h.clone();
                    async move {
                        use http_body_util::BodyExt as _;
                        h.fetch_add(1, Ordering::SeqCst);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        let exp = UNIX_EPOCH.elapsed().unwrap() + ttl;
                        let secs = exp.as_secs();
                        let (days, rem) = (secs / 86_400, secs % 86_400);
                        // Only dates in 2026+ matter here; format via the inverse of the parser.
                        let date = civil(i64::try_from(days).unwrap());
                        let text = if body.contains("WebIdentityToken=projected-token")
                            && body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fr")
                        {
                            format!(
                                "<R><Credentials><AccessKeyId>ASIATEMP</AccessKeyId><SecretAccessKey>tmp/secret</SecretAccessKey><SessionToken>tok</SessionToken><Expiration>{date}T{:02}:{:02}:{:02}Z</Expiration></Credentials></R>",
                                rem / 3600,
                                rem % 3600 / 60,
                                rem % 60
                            )
                        } else {
                            "<ErrorResponse><Error><Code>InvalidIdentityToken</Code></Error></ErrorResponse>".to_owned()
                        };
                        let status = if text.starts_with("<R>") { 200 } else { 400 };
                        let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from(text)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            }
        });
        (format!("http://{addr}/"), hits, tasks)
    }

    fn civil(days: i64) -> String {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}")
    }

    fn web_identity(sts_url: String, token_file: &std::path::Path) -> Source {
        Source::WebIdentity {
            role_arn: "arn:aws:iam::123456789012:role/r".to_owned(),
            token: KeySource::from_config(Some(&detour_api::table::CredentialSource::File(
                token_file.display().to_string(),
            ))),
            sts_url,
            cache: Mutex::new(None),
        }
    }

    /// Web identity: the token is exchanged once and the credentials (with their session
    /// token) are reused while far from expiry; credentials close to expiry are refreshed.
    #[tokio::test]
    async fn web_identity_exchanges_and_caches() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "projected-token\n").unwrap();
        let client = HttpClient::new(None).unwrap();

        let (url, hits, _tasks) = fake_sts(Duration::from_secs(3600)).await;
        let src = web_identity(url, &token);
        let k = src.current(&client).await.unwrap();
        assert_eq!(k.access_key_id.expose(), "ASIATEMP");
        assert_eq!(k.session_token.as_ref().unwrap().expose(), "tok");
        let _ = src.current(&client).await.unwrap();
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "cached until shortly before expiry"
        );

        let (url, hits, _tasks2) = fake_sts(Duration::from_secs(60)).await;
        let src = web_identity(url, &token);
        let _ = src.current(&client).await.unwrap();
        let _ = src.current(&client).await.unwrap();
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "within REFRESH_BEFORE of expiry: refreshed"
        );
    }

    /// A rejected token is an error naming the role and AWS's code, never the token.
    #[tokio::test]
    async fn web_identity_error_names_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "wrong-token").unwrap();
        let client = HttpClient::new(None).unwrap();
        let (url, _hits, _tasks) = fake_sts(Duration::from_secs(3600)).await;
        let err = web_identity(url, &token)
            .current(&client)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("InvalidIdentityToken") && err.contains("role/r"),
            "{err}"
        );
        assert!(!err.contains("wrong-token"), "{err}");
    }
}
