//! The upstream HTTP client: a small pool of our own over hyper's HTTP/1.1 and HTTP/2 client
//! connections, TLS through rustls, egress through an HTTP proxy when the environment asks
//! (hyper-util's connector, resolver, proxy matcher and `CONNECT` tunnel).
//!
//! Contract:
//! - Connections are kept per origin (scheme, host and port) and reused; HTTPS upstreams that
//!   offer HTTP/2 by ALPN get it (one connection carries many requests), the others HTTP/1.1
//!   keep-alive. An HTTP/1.1 connection goes back to the pool when its response body has been
//!   read to the end; a body dropped before that closes it.
//! - A request is retried on another connection only when hyper knows it was not sent (an
//!   idle connection the upstream had closed). A request that may have reached the upstream is
//!   never sent twice: that is the proxy's decision, per policy.
//! - `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their lower-case forms, as
//!   curl reads them) route upstream connections through an HTTP proxy: HTTPS through a
//!   `CONNECT` tunnel (TLS still ends at the upstream), plain HTTP as absolute-form requests.
//!   Credentials in the proxy URL go in `Proxy-Authorization`.
//! - Targets resolve their URLs to a [`Dest`] once, when they are loaded: it holds its
//!   origin's pool and `Host` value and its request target, so a request hashes no URL.
//! - An HTTP/1.1 connection is idle only when hyper says it is ready for the next request;
//!   closed ones are dropped; at most `max_idle` are kept per origin, none longer than
//!   [`IDLE_TIMEOUT`] (a task per origin closes them while any are idle). An HTTP/2
//!   connection is shared by every request to its origin and replaced when it closes.
//! - Destination rules on addresses ([`crate::egress::check_addr`]): a name's resolved
//!   addresses that are link-local, cloud metadata, or loopback behind a name that is not
//!   loopback are dropped before connecting (none left: a connect error naming the rule), and
//!   every connection's peer is checked again, which covers address literals too.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::proxy::Tunnel;
pub use hyper_util::client::proxy::matcher::Matcher as Proxies;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::Service;

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin by default.
pub const MAX_IDLE_PER_ORIGIN: usize = 64;
/// How long resolving, connecting (through the proxy, if any) and the TLS handshake may take
/// together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be made (name resolution, TCP, proxy, TLS or the URL itself): the
    /// upstream never saw the request. `kind` says in which step.
    #[error("could not connect to the upstream: {kind}: {message}")]
    Connect { kind: ConnectKind, message: String },
    /// The upstream answered something that is not HTTP as it should be.
    #[error("invalid HTTP response from the upstream: {0}")]
    Protocol(String),
    /// The connection failed or closed after the request was handed to it.
    #[error("upstream connection failed: {0}")]
    Io(String),
}

/// The step in which a connection could not be made, told apart so that an attempt's detail
/// says what to fix: a name that does not resolve, nothing listening, a certificate, a
/// network that drops packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectKind {
    /// The host name did not resolve.
    Dns,
    /// The host (or the proxy) refused the TCP connection: nothing listens on that port.
    Refused,
    /// The TLS handshake failed (certificate, name, protocol).
    Tls,
    /// No connection within [`CONNECT_TIMEOUT`] (or the OS's own connect timeout).
    Timeout,
    /// The HTTP proxy could not be used (its `CONNECT` failed, or it is not `http://`).
    Proxy,
    /// The destination rules refused every address (link-local, metadata, or loopback behind
    /// a name that is not loopback).
    DestinationRule,
    /// Anything else (an invalid URL, a socket error).
    Other,
}

impl ConnectKind {
    /// The word used in attempt details.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Refused => "refused",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Proxy => "proxy",
            Self::DestinationRule => "destination-rule",
            Self::Other => "connect",
        }
    }
}

impl fmt::Display for ConnectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection that could not be made, as the connector saw it (in the client error's
/// source chain, where [`Error::from_connect`] finds it).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
struct ConnectFailure {
    kind: ConnectKind,
    message: String,
}

impl ConnectFailure {
    fn boxed(kind: ConnectKind, message: String) -> BoxError {
        Box::new(Self { kind, message })
    }
}

impl Error {
    /// Whether no connection was made, so the upstream never saw the request.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// In which step the connection failed, for a connect error.
    pub fn connect_kind(&self) -> Option<ConnectKind> {
        match self {
            Self::Connect { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether the upstream answered, but not in valid HTTP.
    pub fn is_protocol(&self) -> bool {
        matches!(self, Self::Protocol(_))
    }

    fn connect_other(message: String) -> Self {
        Self::Connect {
            kind: ConnectKind::Other,
            message,
        }
    }

    /// A connection that could not be made, with the step the connector named.
    fn from_connect(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(f) = err.downcast_ref::<ConnectFailure>() {
                return Self::Connect {
                    kind: f.kind,
                    message: f.message.clone(),
                };
            }
            cur = err.source();
        }
        Self::connect_other(chain(e))
    }

    fn from_hyper(e: &hyper::Error) -> Self {
        Self::from_chain(e, chain(e))
    }

    /// A protocol error when hyper's error in the chain is one of parsing, else an I/O one.
    fn from_chain(e: &(dyn std::error::Error + 'static), text: String) -> Self {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(h) = err.downcast_ref::<hyper::Error>()
                && (h.is_parse() || h.is_parse_status() || h.is_parse_too_large())
            {
                return Self::Protocol(text);
            }
            cur = err.source();
        }
        Self::Io(text)
    }
}

/// An error and its causes, `: `-separated (hyper's own messages are terse).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cur = s.source();
    }
    text
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
}

/// The shared upstream client; clones share the connections.
#[derive(Clone)]
pub struct HttpClient {
    pools: Arc<Pools>,
}

/// The pools by origin, looked up when a [`Dest`] is made, never per request.
struct Pools {
    conf: Arc<Conf>,
    origins: Mutex<HashMap<String, Arc<Origin>>>,
}

/// What every origin's pool uses: the connector, the HTTP/2 settings, the idle limit.
struct Conf {
    connector: Connector,
    h2: http2::Builder<TokioExecutor>,
    max_idle: usize,
}

/// How connections leave: through which proxy, and whether the destination rules apply.
struct Egress {
    proxies: Proxies,
    /// The destination rules apply to each connection's peer (provider traffic); `false` only
    /// for [`HttpClient::for_credentials`].
    guarded: bool,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client trusting the Mozilla roots compiled in (the image needs no CA bundle), plus
    /// the PEM certificates in `extra_ca` (a private CA of in-cluster upstreams), with the
    /// proxy settings of the environment. Plain `http://` is allowed for loopback and
    /// in-cluster endpoints.
    pub fn new(extra_ca: Option<&std::path::Path>) -> Result<Self, BuildError> {
        Self::with_max_idle(extra_ca, MAX_IDLE_PER_ORIGIN)
    }

    /// [`HttpClient::new`], keeping at most `max_idle` idle connections per origin.
    pub fn with_max_idle(extra_ca: Option<&std::path::Path>, max_idle: usize) -> Result<Self, BuildError> {
        Self::build(extra_ca, max_idle, Proxies::from_env())
    }

    /// A client with explicit proxy settings instead of the environment's.
    pub fn build(
        extra_ca: Option<&std::path::Path>,
        max_idle: usize,
        proxies: Proxies,
    ) -> Result<Self, BuildError> {
        Self::build_with(extra_ca, max_idle, proxies, true)
    }

    /// The client of credential providers (the AWS credential chain, token endpoints): the
    /// environment's proxy settings, but **not** the destination rules — its URLs come from
    /// the pod's environment and the cloud SDKs' own defaults, never from a route table, and
    /// some of them are link-local on purpose (IMDS at 169.254.169.254, EKS Pod Identity at
    /// 169.254.170.23, ECS at 169.254.170.2: address literals, which are not resolved; names
    /// are still resolved through the guarded resolver, so a name cannot lead to metadata).
    /// Loopback and link-local destinations never go through a proxy. Provider requests never
    /// use this client.
    pub fn for_credentials() -> Result<Self, BuildError> {
        Self::build_with(None, 4, Proxies::from_env(), false)
    }

    fn build_with(
        extra_ca: Option<&std::path::Path>,
        max_idle: usize,
        proxies: Proxies,
        guarded: bool,
    ) -> Result<Self, BuildError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra_ca {
            let ca_error = |reason: String| BuildError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let mut added = 0usize;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| ca_error(format!("not PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ca_error(format!("not a CA certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(ca_error("no CERTIFICATE block in it".into()));
            }
        }
        let mut tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut tcp = HttpConnector::new_with_resolver(GuardedResolver(GaiResolver::new()));
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let connector = Connector {
            tcp,
            tls: TlsConnector::from(Arc::new(tls)),
            egress: Arc::new(Egress { proxies, guarded }),
        };
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        Ok(Self {
            pools: Arc::new(Pools {
                conf: Arc::new(Conf {
                    connector,
                    h2,
                    max_idle,
                }),
                origins: Mutex::default(),
            }),
        })
    }

    /// Where `url` (absolute, `http` or `https`) is sent. `None` when it is not such a URL.
    pub fn dest(&self, url: &Uri) -> Option<Dest> {
        let scheme = match url.scheme_str()? {
            "https" => Scheme::HTTPS,
            "http" => Scheme::HTTP,
            _ => return None,
        };
        // Any `user:password@` stays out of requests and messages.
        let authority: Authority = host_and_port(url.authority()?).parse().ok()?;
        let path = url
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let url = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(path.clone())
            .build()
            .ok()?;
        // Plain HTTP through a proxy: each request names the proxy's credentials.
        let proxy_auth = if scheme == Scheme::HTTP {
            self.pools
                .conf
                .connector
                .egress
                .proxies
                .intercept(&url)
                .and_then(|i| i.basic_auth().cloned())
        } else {
            None
        };
        Some(Dest {
            origin: Origin::of(&self.pools, scheme, authority)?,
            url,
            path: Uri::from(path),
            proxy_auth,
        })
    }

    /// Sends a request with an absolute URL (resolved on each call; targets on the hot path
    /// resolve theirs once, see [`Dest`]).
    pub async fn request(&self, req: Request<Bytes>) -> Result<Response<UpstreamBody>, Error> {
        let dest = self
            .dest(req.uri())
            .ok_or_else(|| Error::connect_other("not an http or https URL with a host".into()))?;
        let path = dest.path.clone();
        let (mut parts, body) = req.into_parts();
        parts.uri = path;
        dest.send(Request::from_parts(parts, body)).await
    }
}

/// A resolved upstream URL.
#[derive(Clone)]
pub struct Dest {
    origin: Arc<Origin>,
    /// Absolute, without userinfo.
    url: Uri,
    /// The request target (origin-form).
    path: Uri,
    proxy_auth: Option<HeaderValue>,
}

impl fmt::Debug for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dest")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Dest {
    /// The URL (for messages and tests).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.url)
    }
}

impl Dest {
    /// The request target to put in the request (`/v1/chat/completions?…`).
    pub fn path(&self) -> &Uri {
        &self.path
    }

    /// Sends `req` (its URI the [`Dest::path`], or another path on the same origin).
    ///
    /// On an idle connection the upstream has just closed, hyper hands the request back
    /// unsent; it then goes once more, on a new connection.
    ///
    /// Boxed, as hyper-util's pooled client boxed it: until the answer's head, the request
    /// and its connection's handle are held here, not in every request's future for its
    /// whole life. Connecting is boxed again inside: it is rare, and its future (resolver,
    /// proxy tunnel, TLS handshake) is large.
    pub fn send(
        &self,
        req: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, Error>> + Send + '_>> {
        Box::pin(self.send_now(req))
    }

    async fn send_now(&self, req: Request<Bytes>) -> Result<Response<UpstreamBody>, Error> {
        let (mut parts, body) = req.into_parts();
        if let Some(auth) = &self.proxy_auth {
            parts.headers.insert(header::PROXY_AUTHORIZATION, auth.clone());
        }
        let req = Request::from_parts(parts, Full::new(body));
        let origin = &self.origin;
        let (conn, reused) = match origin.checkout() {
            Some(conn) => (conn, true),
            None => (Box::pin(origin.connect()).await?, false),
        };
        match origin.send_on(conn, req).await {
            Ok(resp) => Ok(resp),
            Err((Some(req), _)) if reused => {
                let conn = Box::pin(origin.connect()).await?;
                origin.send_on(conn, req).await.map_err(|(_, e)| e)
            }
            Err((_, e)) => Err(e),
        }
    }
}

/// The authority without any `user:password@`.
fn host_and_port(authority: &Authority) -> &str {
    let s = authority.as_str();
    s.rsplit_once('@').map_or(s, |(_, host)| host)
}

type Req = Request<Full<Bytes>>;

/// The connections of one origin (scheme, host and port), shared by every [`Dest`] on it.
struct Origin {
    conf: Arc<Conf>,
    scheme: Scheme,
    authority: Authority,
    /// `scheme://authority`, what the connector is called with.
    root: Uri,
    /// The `Host` of HTTP/1.1 requests: the authority, its port left out when it is the
    /// scheme's default.
    host: HeaderValue,
    idle: Mutex<Idle>,
}

/// An origin's connections between requests. Locked only for pushes and pops, never across
/// an await.
#[derive(Default)]
struct Idle {
    /// HTTP/1.1 connections ready for a request, the most recently used last.
    h1: Vec<Idle1>,
    /// The HTTP/2 connection every request shares, when the upstream offers it, and when it
    /// was last handed out.
    h2: Option<(http2::SendRequest<Full<Bytes>>, Instant)>,
    /// Whether a task is closing the connections idle for longer than [`IDLE_TIMEOUT`].
    reaping: bool,
}

impl Idle {
    fn is_empty(&self) -> bool {
        self.h1.is_empty() && self.h2.is_none()
    }
}

struct Idle1 {
    tx: http1::SendRequest<Full<Bytes>>,
    proxied: bool,
    since: Instant,
}

/// A connection a request goes out on.
enum Conn {
    H1 {
        tx: http1::SendRequest<Full<Bytes>>,
        /// To a proxy taking absolute-form requests.
        proxied: bool,
    },
    H2(http2::SendRequest<Full<Bytes>>),
}

/// Spawns a connection's task (or the wait for its readiness). No one joins it: the
/// connection owns it, and it ends when the connection closes — when the upstream closes it,
/// or when the pool and the response body holding its last request handle drop them.
#[expect(
    clippy::disallowed_methods,
    reason = "owned by its connection, which ends when the pool and the body drop its handles"
)]
fn spawn_detached(task: impl Future<Output = ()> + Send + 'static) {
    drop(tokio::spawn(task));
}

impl Origin {
    /// The pool of `scheme://authority`, shared with the other destinations on it.
    fn of(pools: &Pools, scheme: Scheme, authority: Authority) -> Option<Arc<Self>> {
        let root = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => HeaderValue::from_str(authority.as_str()),
            _ => HeaderValue::from_str(authority.host()),
        }
        .ok()?;
        let key = format!("{scheme}://{authority}");
        let mut origins = pools.origins.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(o) = origins.get(&key) {
            return Some(Arc::clone(o));
        }
        // Origins no destination names any more go once their connections have.
        origins.retain(|_, o| Arc::strong_count(o) > 1 || !o.idle().is_empty());
        let o = Arc::new(Self {
            conf: Arc::clone(&pools.conf),
            scheme,
            authority,
            root,
            host,
            idle: Mutex::default(),
        });
        origins.insert(key, Arc::clone(&o));
        Some(o)
    }

    fn idle(&self) -> MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection ready for a request: the shared HTTP/2 one, or the most recently used
    /// idle HTTP/1.1 one (closed and expired ones are dropped on the way).
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle();
        let now = Instant::now();
        if let Some((tx, used)) = &mut idle.h2 {
            if !tx.is_closed() {
                *used = now;
                return Some(Conn::H2(tx.clone()));
            }
            idle.h2 = None;
        }
        while let Some(c) = idle.h1.pop() {
            if now.saturating_duration_since(c.since) >= IDLE_TIMEOUT {
                // The older ones expired too.
                idle.h1.clear();
                break;
            }
            if c.tx.is_ready() {
                return Some(Conn::H1 {
                    tx: c.tx,
                    proxied: c.proxied,
                });
            }
        }
        None
    }

    /// A new connection: HTTP/2 when the upstream chose it by ALPN (it then becomes the one
    /// the origin's requests share), else HTTP/1.1.
    async fn connect(self: &Arc<Self>) -> Result<Conn, Error> {
        let io = self
            .conf
            .connector
            .open(self.root.clone())
            .await
            .map_err(|e| Error::from_connect(&*e))?;
        if io.inner().is_h2() {
            let (tx, conn) = self
                .conf
                .h2
                .handshake(io)
                .await
                .map_err(|e| Error::from_hyper(&e))?;
            spawn_detached(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            let mut idle = self.idle();
            if idle.h2.as_ref().is_none_or(|(t, _)| t.is_closed()) {
                idle.h2 = Some((tx.clone(), Instant::now()));
                self.reap_later(&mut idle);
            }
            return Ok(Conn::H2(tx));
        }
        let proxied = io.inner().is_proxied();
        let (tx, conn) = http1::handshake(io).await.map_err(|e| Error::from_hyper(&e))?;
        spawn_detached(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(Conn::H1 { tx, proxied })
    }

    /// Sends `req` on `conn`. On failure, the request comes back when hyper says it was
    /// never sent.
    async fn send_on(
        self: &Arc<Self>,
        conn: Conn,
        mut req: Req,
    ) -> Result<Response<UpstreamBody>, (Option<Req>, Error)> {
        match conn {
            Conn::H1 { mut tx, proxied } => {
                req.headers_mut()
                    .entry(header::HOST)
                    .or_insert_with(|| self.host.clone());
                self.set_form(req.uri_mut(), proxied);
                match tx.try_send_request(req).await {
                    Ok(resp) => Ok(resp.map(|inner| {
                        let mut body = UpstreamBody {
                            inner,
                            back: Some(Back {
                                origin: Arc::clone(self),
                                tx,
                                proxied,
                            }),
                        };
                        if body.inner.is_end_stream() {
                            body.give_back();
                        }
                        body
                    })),
                    Err(mut e) => Err((e.take_message(), Error::from_hyper(e.error()))),
                }
            }
            Conn::H2(mut tx) => {
                self.set_form(req.uri_mut(), true);
                match tx.try_send_request(req).await {
                    Ok(resp) => Ok(resp.map(|inner| UpstreamBody { inner, back: None })),
                    Err(mut e) => Err((e.take_message(), Error::from_hyper(e.error()))),
                }
            }
        }
    }

    /// The request target in absolute form (to a proxy, and for HTTP/2's pseudo-headers) or
    /// in origin form.
    fn set_form(&self, uri: &mut Uri, absolute: bool) {
        if absolute == uri.scheme().is_some() {
            return;
        }
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *uri = if absolute {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(path);
            Uri::from_parts(parts).unwrap_or_else(|_| self.root.clone())
        } else {
            Uri::from(path)
        };
    }

    /// Takes back an HTTP/1.1 connection whose answer was read to the end, once it is ready
    /// for the next request.
    fn put(self: Arc<Self>, mut tx: http1::SendRequest<Full<Bytes>>, proxied: bool) {
        if tx.is_ready() {
            self.put_ready(tx, proxied);
        } else if !tx.is_closed() {
            spawn_detached(async move {
                if std::future::poll_fn(|cx| tx.poll_ready(cx)).await.is_ok() {
                    self.put_ready(tx, proxied);
                }
            });
        }
    }

    fn put_ready(self: &Arc<Self>, tx: http1::SendRequest<Full<Bytes>>, proxied: bool) {
        let mut idle = self.idle();
        if idle.h1.len() >= self.conf.max_idle {
            return;
        }
        idle.h1.push(Idle1 {
            tx,
            proxied,
            since: Instant::now(),
        });
        self.reap_later(&mut idle);
    }

    /// Starts the task that closes the connections idle for longer than [`IDLE_TIMEOUT`],
    /// unless it runs; it ends when nothing is left idle, or the origin is gone.
    fn reap_later(self: &Arc<Self>, idle: &mut Idle) {
        if idle.reaping {
            return;
        }
        idle.reaping = true;
        let origin = Arc::downgrade(self);
        spawn_detached(async move {
            loop {
                tokio::time::sleep(IDLE_TIMEOUT).await;
                let Some(origin) = origin.upgrade() else {
                    return;
                };
                let mut idle = origin.idle();
                let now = Instant::now();
                let fresh = |since: Instant| now.saturating_duration_since(since) < IDLE_TIMEOUT;
                idle.h1.retain(|c| !c.tx.is_closed() && fresh(c.since));
                if idle
                    .h2
                    .as_ref()
                    .is_some_and(|(t, used)| t.is_closed() || !fresh(*used))
                {
                    idle.h2 = None;
                }
                if idle.is_empty() {
                    idle.reaping = false;
                    return;
                }
            }
        });
    }
}

/// An upstream response body. The HTTP/1.1 connection it came on goes back to its pool once
/// the body has been read to the end; a body dropped before that closes it.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<Back>,
}

/// The HTTP/1.1 connection to give back after the body.
struct Back {
    origin: Arc<Origin>,
    tx: http1::SendRequest<Full<Bytes>>,
    proxied: bool,
}

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.origin.put(back.tx, back.proxied);
        }
    }
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UpstreamBody").field(&self.inner).finish()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.back.is_some() && self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.give_back(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.give_back(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.back = None,
        }
        Poll::Ready(frame.map(|f| f.map_err(|e| Error::from_hyper(&e))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Opens upstream connections: TCP (directly or to the proxy), a `CONNECT` tunnel for HTTPS
/// through a proxy, then TLS for HTTPS with ALPN `h2` / `http/1.1`.
#[derive(Clone)]
struct Connector {
    tcp: HttpConnector<GuardedResolver>,
    tls: TlsConnector,
    egress: Arc<Egress>,
}

impl Connector {
    /// A connection to `dst` (`scheme://authority`) within [`CONNECT_TIMEOUT`].
    async fn open(&self, dst: Uri) -> Result<TokioIo<Stream>, BoxError> {
        let host = dst.host().unwrap_or_default().to_owned();
        tokio::time::timeout(CONNECT_TIMEOUT, self.clone().connect(dst))
            .await
            .map_err(|_| {
                ConnectFailure::boxed(
                    ConnectKind::Timeout,
                    format!("no connection to {host} within {}s", CONNECT_TIMEOUT.as_secs()),
                )
            })?
    }
}

/// What a failed TCP connect (through hyper-util's `HttpConnector`, whose error says
/// `dns error` for resolution and carries the OS error otherwise) was, in words naming
/// `what` (the upstream's or the proxy's host and port).
fn tcp_failure(e: &(dyn std::error::Error + 'static), what: &str) -> BoxError {
    let detail = chain(e);
    let mut cur = Some(e);
    let mut dns = false;
    while let Some(err) = cur {
        if err.to_string() == "dns error" {
            dns = true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(refused) = io
                .get_ref()
                .and_then(|i| i.downcast_ref::<crate::egress::Refused>())
            {
                return ConnectFailure::boxed(ConnectKind::DestinationRule, format!("{what}: {refused}"));
            }
            let kind = match io.kind() {
                _ if dns => ConnectKind::Dns,
                io::ErrorKind::ConnectionRefused => ConnectKind::Refused,
                io::ErrorKind::TimedOut => ConnectKind::Timeout,
                _ => ConnectKind::Other,
            };
            let message = match kind {
                ConnectKind::Dns => format!("cannot resolve {what}: {io}"),
                ConnectKind::Refused => format!("{what} refused the connection (is anything listening?)"),
                ConnectKind::Timeout => format!("{what} did not accept the connection in time"),
                _ => format!("{what}: {detail}"),
            };
            return ConnectFailure::boxed(kind, message);
        }
        cur = err.source();
    }
    if dns {
        return ConnectFailure::boxed(ConnectKind::Dns, format!("cannot resolve {what}: {detail}"));
    }
    ConnectFailure::boxed(ConnectKind::Other, format!("{what}: {detail}"))
}

/// `host:port` of a URI, for messages.
fn host_port(u: &Uri) -> String {
    let port = u.port_u16().unwrap_or(if u.scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    });
    format!("{}:{port}", u.host().unwrap_or_default())
}

impl Connector {
    async fn connect(mut self, dst: Uri) -> Result<TokioIo<Stream>, BoxError> {
        let https = dst.scheme() == Some(&Scheme::HTTPS);
        let local = || {
            let host = dst
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            matches!(
                detour_api::egress::place_of(host),
                detour_api::egress::Place::Loopback | detour_api::egress::Place::Forbidden
            )
        };
        let proxy = if !self.egress.guarded && local() {
            None
        } else {
            self.egress.proxies.intercept(&dst)
        };
        let (tcp, proxied) = match &proxy {
            None => (
                self.tcp
                    .call(dst.clone())
                    .await
                    .map_err(|e| tcp_failure(&e, &host_port(&dst)))?,
                false,
            ),
            Some(p) if p.uri().scheme() != Some(&Scheme::HTTP) => {
                return Err(ConnectFailure::boxed(
                    ConnectKind::Proxy,
                    format!(
                        "proxy {}: only http:// proxies are supported",
                        p.uri().host().unwrap_or_default()
                    ),
                ));
            }
            Some(p) if https => {
                let mut tunnel = Tunnel::new(p.uri().clone(), self.tcp.clone());
                if let Some(auth) = p.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tunnel.call(dst.clone()).await.map_err(|e| {
                    ConnectFailure::boxed(
                        ConnectKind::Proxy,
                        format!("proxy {} CONNECT failed: {e:?}", host_port(p.uri())),
                    )
                })?;
                (io, false)
            }
            Some(p) => (
                self.tcp
                    .call(p.uri().clone())
                    .await
                    .map_err(|e| tcp_failure(&e, &format!("proxy {}", host_port(p.uri()))))?,
                true,
            ),
        };
        let tcp = tcp.into_inner();
        // The peer is the proxy when there is one, else the upstream: check it against the
        // host this connection was opened for (address literals skip the resolver).
        let opened_for = match &proxy {
            Some(p) => p.uri().host().unwrap_or_default(),
            None => dst.host().unwrap_or_default(),
        };
        let opened_for = opened_for.trim_start_matches('[').trim_end_matches(']');
        if self.egress.guarded {
            crate::egress::check_addr(opened_for, &tcp.peer_addr()?).map_err(|e| {
                ConnectFailure::boxed(ConnectKind::DestinationRule, format!("{opened_for}: {e}"))
            })?;
        }
        if !https {
            return Ok(TokioIo::new(Stream::Tcp(tcp, proxied)));
        }
        let host = dst.host().ok_or("no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            ConnectFailure::boxed(
                ConnectKind::Tls,
                format!("{host} is not a valid TLS server name: {e}"),
            )
        })?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| {
            ConnectFailure::boxed(
                ConnectKind::Tls,
                format!(
                    "TLS handshake with {} failed: {}",
                    host_port(&dst),
                    tls_reason(&e)
                ),
            )
        })?;
        Ok(TokioIo::new(Stream::Tls(Box::new(tls))))
    }
}

/// rustls' own words for a failed handshake (tokio-rustls wraps them in an `io::Error`).
fn tls_reason(e: &io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => r.to_string(),
        None => e.to_string(),
    }
}

/// The system resolver, with the addresses the destination rules refuse taken out.
#[derive(Clone)]
struct GuardedResolver(GaiResolver);

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        let resolving = self.0.call(name);
        Box::pin(async move {
            let mut refused = None;
            let allowed: Vec<_> = resolving
                .await?
                .filter(|a| match crate::egress::check_addr(&host, a) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match refused {
                Some(e) if allowed.is_empty() => Err(io::Error::new(io::ErrorKind::PermissionDenied, e)),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// An upstream connection: TCP (to the upstream, or to a proxy taking absolute-form
/// requests), or TLS over TCP.
enum Stream {
    Tcp(TcpStream, bool),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the upstream chose HTTP/2 by ALPN.
    fn is_h2(&self) -> bool {
        match self {
            Stream::Tcp(..) => false,
            Stream::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }

    /// Whether this is a connection to a proxy that takes absolute-form requests.
    fn is_proxied(&self) -> bool {
        matches!(self, Stream::Tcp(_, true))
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s, _) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s, _) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s, _) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s, _) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s, _) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
