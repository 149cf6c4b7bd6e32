//! The upstream HTTP client: keep-alive HTTP/1.1 connections per origin (scheme, host and
//! port), HTTPS through rustls.
//!
//! Contract:
//! - A request goes out on the most recently used idle connection of its origin, or on a new
//!   one. A connection goes back to its origin's idle list when its response body has been
//!   read to the end; a body dropped before that closes the connection (HTTP/1 cannot abandon
//!   a response and keep the connection).
//! - An idle connection the upstream closed before the request was written is skipped and
//!   the request goes out on another. A request that may have reached the upstream is never
//!   sent twice: that is the proxy's decision, per policy.
//! - Nothing is spawned per request: one task drives each connection, and one task per
//!   client closes connections idle for longer than [`IDLE_TIMEOUT`], and those beyond the
//!   per-origin number once idle for [`SHED_AFTER`].
//! - Targets resolve their URLs to a [`Dest`] once, when they are loaded, so a request pays
//!   for no URL parsing, no origin lookup and no lock but its origin's idle list.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin by default once a burst is over. Each costs about 40 KiB
/// (hyper's buffers and its request channel).
pub const MAX_IDLE_PER_ORIGIN: usize = 64;
/// How long idle connections beyond the per-origin number may stay: a burst keeps its
/// connections while it lasts (closing them as they come back made a c=256 load reconnect
/// constantly), and they are shed once it is over.
pub const SHED_AFTER: Duration = Duration::from_secs(5);
/// Idle connections per origin beyond which a returning connection is closed at once.
const HARD_MAX_IDLE: usize = 1024;
/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle connections past [`IDLE_TIMEOUT`], or past [`SHED_AFTER`] beyond the
/// per-origin number, are closed.
const REAP_EVERY: Duration = SHED_AFTER;

type Connector = HttpsConnector<HttpConnector>;
type Sender = http1::SendRequest<Full<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be made (TCP, TLS or the URL itself).
    #[error("could not connect to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed after the request was handed to it.
    #[error("upstream connection failed: {0}")]
    Http(#[from] hyper::Error),
}

impl Error {
    /// Whether no connection was made, so the upstream never saw the request.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
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
pub struct HttpClient(Arc<Shared>);

struct Shared {
    connector: Connector,
    max_idle: usize,
    origins: Mutex<HashMap<Key, Arc<Origin>>>,
    reaper: std::sync::Once,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    https: bool,
    authority: Authority,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client trusting the Mozilla roots compiled in (the image needs no CA bundle), plus
    /// the PEM certificates in `extra_ca` (a private CA of in-cluster upstreams). Plain
    /// `http://` is allowed for loopback and in-cluster endpoints.
    pub fn new(extra_ca: Option<&std::path::Path>) -> Result<Self, BuildError> {
        Self::with_max_idle(extra_ca, MAX_IDLE_PER_ORIGIN)
    }

    /// [`HttpClient::new`], keeping `max_idle` idle connections per origin once a burst is over
    /// (more are closed after [`SHED_AFTER`]).
    pub fn with_max_idle(extra_ca: Option<&std::path::Path>, max_idle: usize) -> Result<Self, BuildError> {
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
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(Self(Arc::new(Shared {
            connector,
            max_idle,
            origins: Mutex::new(HashMap::new()),
            reaper: std::sync::Once::new(),
        })))
    }

    /// Where `url` (absolute, `http` or `https`) is sent: its origin's connections and the
    /// request target to ask for. `None` when it is not such a URL.
    pub fn dest(&self, url: &Uri) -> Option<Dest> {
        let https = match url.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let authority = url.authority()?.clone();
        let path = url
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let key = Key { https, authority };
        let origin = {
            let mut origins = lock(&self.0.origins);
            match origins.get(&key) {
                Some(o) => Arc::clone(o),
                None => {
                    let o = Arc::new(Origin::new(&key, self.0.connector.clone(), self.0.max_idle)?);
                    origins.insert(key, Arc::clone(&o));
                    o
                }
            }
        };
        self.start_reaper();
        Some(Dest {
            origin,
            path: Uri::from(path),
        })
    }

    /// Sends a request with an absolute URL (resolved on each call; targets on the hot path
    /// resolve theirs once, see [`Dest`]).
    pub async fn request(&self, mut req: Request<Full<Bytes>>) -> Result<Response<Body>, Error> {
        let dest = self
            .dest(req.uri())
            .ok_or_else(|| Error::Connect("not an http or https URL with a host".into()))?;
        *req.uri_mut() = dest.path;
        dest.origin.send(req).await
    }

    /// Closes idle connections past their time, once per [`REAP_EVERY`], for as long as the
    /// client lives (started with the first origin, inside the runtime).
    fn start_reaper(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.0.reaper.call_once(|| {
            let shared = Arc::downgrade(&self.0);
            rt.spawn(reap(shared));
        });
    }

    /// Idle connections kept and still open, over all origins.
    pub fn idle_connections(&self) -> usize {
        lock(&self.0.origins)
            .values()
            .map(|o| lock(&o.idle).iter().filter(|i| !i.conn.is_closed()).count())
            .sum()
    }
}

async fn reap(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval_at(Instant::now() + REAP_EVERY, REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut stale = Vec::new();
        lock(&shared.origins).retain(|_, o| {
            o.prune(&mut stale);
            // An origin no target refers to and with nothing idle is forgotten.
            Arc::strong_count(o) > 1 || !lock(&o.idle).is_empty()
        });
        drop(stale);
    }
}

/// A resolved upstream URL: its origin's connections and the request target (origin-form).
#[derive(Clone)]
pub struct Dest {
    origin: Arc<Origin>,
    path: Uri,
}

impl fmt::Debug for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dest")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Dest {
    /// The URL (for messages and tests).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Key { https, authority } = &self.origin.key;
        let scheme = if *https { "https" } else { "http" };
        write!(f, "{scheme}://{authority}{}", self.path)
    }
}

impl Dest {
    /// The request target to put in the request (`/v1/chat/completions?…`).
    pub fn path(&self) -> &Uri {
        &self.path
    }

    /// Sends `req` (its URI the [`Dest::path`]) to this origin.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Body>, Error> {
        self.origin.send(req).await
    }
}

/// One origin's idle connections.
struct Origin {
    key: Key,
    /// `scheme://authority/`, what the connector is called with.
    connect_uri: Uri,
    /// The `Host` header of its requests.
    host: HeaderValue,
    connector: Connector,
    max_idle: usize,
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    conn: Sender,
    since: Instant,
}

impl Origin {
    fn new(key: &Key, connector: Connector, max_idle: usize) -> Option<Self> {
        let connect_uri = Uri::builder()
            .scheme(if key.https { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(key.authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        let host = HeaderValue::from_str(key.authority.as_str()).ok()?;
        Some(Self {
            key: key.clone(),
            connect_uri,
            host,
            connector,
            max_idle,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    async fn send(self: &Arc<Self>, mut req: Request<Full<Bytes>>) -> Result<Response<Body>, Error> {
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host.clone());
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            // A connection that just finished its last response may not have marked itself
            // ready yet; one the upstream closed reports it here.
            if reused && poll_fn(|cx| conn.poll_ready(cx)).await.is_err() {
                continue;
            }
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok(self.response(resp, conn)),
                Err(mut e) => match e.take_message() {
                    // Not written: the upstream closed this idle connection first.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(Error::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection still open, if any.
    fn checkout(&self) -> Option<Sender> {
        let mut idle = lock(&self.idle);
        while let Some(i) = idle.pop_back() {
            if i.since.elapsed() >= IDLE_TIMEOUT {
                // The rest went idle even earlier.
                let stale = std::mem::take(&mut *idle);
                drop(idle);
                drop((i, stale));
                return None;
            }
            if !i.conn.is_closed() {
                return Some(i.conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Sender) {
        if conn.is_closed() {
            return;
        }
        let since = Instant::now();
        let mut idle = lock(&self.idle);
        let evicted = if idle.len() >= HARD_MAX_IDLE {
            idle.pop_front()
        } else {
            None
        };
        idle.push_back(Idle { conn, since });
        drop(idle);
        drop(evicted);
    }

    /// Moves into `stale` (closed when the caller drops them, outside the lock) the
    /// connections that are closed, idle past [`IDLE_TIMEOUT`], or beyond the per-origin
    /// number and idle past [`SHED_AFTER`] (the oldest first).
    fn prune(&self, stale: &mut Vec<Idle>) {
        let mut idle = lock(&self.idle);
        let mut kept = VecDeque::with_capacity(idle.len());
        for i in idle.drain(..) {
            if i.since.elapsed() >= IDLE_TIMEOUT || i.conn.is_closed() {
                stale.push(i);
            } else {
                kept.push_back(i);
            }
        }
        while kept.len() > self.max_idle && kept.front().is_some_and(|i| i.since.elapsed() >= SHED_AFTER) {
            stale.extend(kept.pop_front());
        }
        *idle = kept;
    }

    async fn connect(&self) -> Result<Sender, Error> {
        let mut connector = self.connector.clone();
        let io = connector
            .ready()
            .await
            .map_err(Error::Connect)?
            .call(self.connect_uri.clone())
            .await
            .map_err(Error::Connect)?;
        let (conn, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| Error::Connect(e.into()))?;
        #[expect(
            clippy::disallowed_methods,
            reason = "the connection owns its task: it ends when the pool or the response body drops the connection's sender, or when the upstream closes it"
        )]
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(conn)
    }

    fn response(self: &Arc<Self>, resp: Response<Incoming>, conn: Sender) -> Response<Body> {
        let (parts, incoming) = resp.into_parts();
        let back = (!closes(&parts.headers)).then(|| Back {
            conn,
            origin: Arc::clone(self),
        });
        let mut body = Body { incoming, back };
        if body.incoming.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }
}

/// Whether the upstream said it closes the connection after this response.
fn closes(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An upstream response body; its connection goes back to the pool when it has been read
/// to the end.
pub struct Body {
    incoming: Incoming,
    back: Option<Back>,
}

struct Back {
    conn: Sender,
    origin: Arc<Origin>,
}

impl Body {
    fn release(&mut self) {
        if let Some(back) = self.back.take() {
            back.origin.checkin(back.conn);
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.incoming).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.incoming.is_end_stream() => this.release(),
            Some(Err(_)) => this.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
