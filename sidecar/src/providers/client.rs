//! The upstream HTTP client: keep-alive HTTP/1.1 connections per origin (scheme, host and
//! port), HTTPS through rustls, the protocol itself in [`crate::h1`].
//!
//! Contract:
//! - A request goes out on the most recently used idle connection of its origin, or on a new
//!   one. A connection goes back to its origin's idle list when its response body has been
//!   read to the end; a body dropped before that closes the connection (HTTP/1 cannot abandon
//!   a response and keep the connection).
//! - An idle connection the upstream closed is skipped, and a request whose first byte could
//!   not be written on a reused connection goes out on another. A request that may have
//!   reached the upstream is never sent twice: that is the proxy's decision, per policy.
//! - Nothing is spawned per request or per connection: a connection is driven by the task
//!   that sends on it and reads its body. One task per client closes connections idle for
//!   longer than [`IDLE_TIMEOUT`], those the upstream closed, and those beyond the per-origin
//!   number once idle for [`SHED_AFTER`].
//! - Targets resolve their URLs to a [`Dest`] once, when they are loaded, so a request pays
//!   for no URL parsing, no origin lookup and no lock but its origin's idle list.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::h1::{self, Chunked, Framing, ProtoError};

/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin by default once a burst is over.
pub const MAX_IDLE_PER_ORIGIN: usize = 64;
/// How long idle connections beyond the per-origin number may stay: a burst keeps its
/// connections while it lasts (closing them as they come back made a c=256 load reconnect
/// constantly), and they are shed once it is over.
pub const SHED_AFTER: Duration = Duration::from_secs(5);
/// Idle connections per origin beyond which a returning connection is closed at once.
const HARD_MAX_IDLE: usize = 1024;
/// How long resolving, connecting and the TLS handshake may take together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle connections past their time are closed.
const REAP_EVERY: Duration = SHED_AFTER;
/// A connection's read buffer grows by this much when it is nearly full.
const READ_SIZE: usize = 8 * 1024;
/// Below this much free room, the read buffer grows before a read.
const MIN_READ_ROOM: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be made (name resolution, TCP, TLS or the URL itself).
    #[error("could not connect to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// Reading or writing failed on an open connection.
    #[error("upstream connection failed: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before the response was complete.
    #[error("upstream closed the connection before the end of the response")]
    Closed,
    /// The upstream answered something that is not HTTP/1.1 as it should be.
    #[error("invalid HTTP/1.1 response from the upstream: {0}")]
    Protocol(#[from] ProtoError),
}

impl Error {
    /// Whether no connection was made, so the upstream never saw the request.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }

    /// Whether the upstream answered, but not in valid HTTP/1.1.
    pub fn is_protocol(&self) -> bool {
        matches!(self, Self::Protocol(_))
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
    tls: TlsConnector,
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
        let mut tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(Arc::new(Shared {
            tls: TlsConnector::from(Arc::new(tls)),
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
                    let o = Arc::new(Origin::new(&key, &self.0.tls, self.0.max_idle)?);
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
    pub async fn request(&self, mut req: Request<Bytes>) -> Result<Response<Body>, Error> {
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
            .map(|o| {
                lock(&o.idle)
                    .iter_mut()
                    .map(|i| usize::from(!i.conn.is_closed()))
                    .sum::<usize>()
            })
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
        write!(f, "{scheme}://{}{}", host_and_port(authority), self.path)
    }
}

impl Dest {
    /// The request target to put in the request (`/v1/chat/completions?…`).
    pub fn path(&self) -> &Uri {
        &self.path
    }

    /// Sends `req` (its URI the [`Dest::path`]) to this origin.
    pub async fn send(&self, req: Request<Bytes>) -> Result<Response<Body>, Error> {
        self.origin.send(req).await
    }
}

/// One origin's idle connections and how to open another.
struct Origin {
    key: Key,
    /// The host to resolve (an IPv6 literal without its brackets) and the port.
    host: String,
    port: u16,
    /// The TLS connector and the name the certificate must carry, for `https`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The `Host` header of its requests.
    host_header: HeaderValue,
    max_idle: usize,
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Origin {
    fn new(key: &Key, tls: &TlsConnector, max_idle: usize) -> Option<Self> {
        let host = key.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = key
            .authority
            .port_u16()
            .unwrap_or(if key.https { 443 } else { 80 });
        let tls = if key.https {
            Some((tls.clone(), ServerName::try_from(host.clone()).ok()?))
        } else {
            None
        };
        Some(Self {
            key: key.clone(),
            host,
            port,
            tls,
            host_header: HeaderValue::from_str(host_and_port(&key.authority)).ok()?,
            max_idle,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    async fn send(self: &Arc<Self>, req: Request<Bytes>) -> Result<Response<Body>, Error> {
        let (wire, inline) = h1::encode_request(&req, &self.host_header);
        let rest = if inline { None } else { Some(req.body().as_ref()) };
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                // Boxed: a connect is rare next to a request, and its future (resolver, TCP,
                // TLS handshake) would otherwise size every attempt held in flight.
                None => (Box::pin(self.connect()).await?, false),
            };
            match conn.write_request(&wire, rest).await {
                Ok(()) => {}
                // Nothing written: the upstream closed this idle connection first.
                Err((_, 0)) if reused => continue,
                Err((e, _)) => return Err(e.into()),
            }
            let head = conn.read_head().await?;
            let (framing, keep_alive) = h1::framing(&head, req.method())?;
            let kind = match framing {
                Framing::Empty | Framing::Length(0) => Kind::Done,
                Framing::Length(n) => Kind::Length(n),
                Framing::Chunked => Kind::Chunked(Chunked::Size),
                Framing::Close => Kind::Close,
            };
            let mut body = Body {
                kind,
                conn: Some(conn),
                origin: Arc::clone(self),
                keep_alive,
            };
            if body.kind == Kind::Done {
                body.finish();
            }
            let mut resp = Response::new(body);
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            return Ok(resp);
        }
    }

    /// The most recently used idle connection still open, if any.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        while let Some(mut i) = idle.pop_back() {
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

    fn checkin(&self, mut conn: Conn) {
        // Bytes after the end of a response nobody asked for: the connection is out of step.
        if !conn.buf.is_empty() {
            return;
        }
        // A large answer does not leave its buffer to the idle connection.
        if conn.buf.capacity() > 2 * READ_SIZE {
            conn.buf = BytesMut::new();
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
        for mut i in idle.drain(..) {
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

    async fn connect(&self) -> Result<Conn, Error> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let io = tokio::time::timeout_at(deadline, self.open(deadline))
            .await
            .map_err(|_| Error::Connect(format!("no connection within {CONNECT_TIMEOUT:?}").into()))??;
        Ok(Conn {
            io,
            buf: BytesMut::new(),
        })
    }

    /// Resolves the host, connects to its addresses in turn (each gets an equal share of the
    /// time left, so one that does not answer leaves time for the next), and does the TLS
    /// handshake.
    async fn open(&self, deadline: Instant) -> Result<Io, Error> {
        let addrs: Vec<_> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| Error::Connect(e.into()))?
            .collect();
        let mut last: Option<io::Error> = None;
        let mut tcp = None;
        for (i, addr) in addrs.iter().enumerate() {
            let share = deadline.saturating_duration_since(Instant::now())
                / u32::try_from(addrs.len() - i).unwrap_or(1);
            match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {addr} timed out"),
                    ))
                }
            }
        }
        let tcp = tcp.ok_or_else(|| match last {
            Some(e) => Error::Connect(e.into()),
            None => Error::Connect(format!("{} has no address", self.host).into()),
        })?;
        tcp.set_nodelay(true).map_err(|e| Error::Connect(e.into()))?;
        Ok(match &self.tls {
            None => Io::Tcp(tcp),
            Some((tls, name)) => Io::Tls(Box::new(
                tls.connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Error::Connect(e.into()))?,
            )),
        })
    }
}

/// The authority without any `user:password@`: what goes in `Host` and in messages.
fn host_and_port(authority: &Authority) -> &str {
    let s = authority.as_str();
    s.rsplit_once('@').map_or(s, |(_, host)| host)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One upstream connection: the socket and the bytes read from it and not yet consumed.
struct Conn {
    io: Io,
    buf: BytesMut,
}

impl Conn {
    /// Writes a request; on failure, how many bytes were accepted before it.
    async fn write_request(&mut self, wire: &[u8], rest: Option<&[u8]>) -> Result<(), (io::Error, usize)> {
        let mut sent = 0;
        for part in std::iter::once(wire).chain(rest) {
            let mut part = part;
            while !part.is_empty() {
                match self.io.write(part).await {
                    Ok(0) => return Err((io::ErrorKind::WriteZero.into(), sent)),
                    Ok(n) => {
                        sent += n;
                        part = part.get(n..).unwrap_or_default();
                    }
                    Err(e) => return Err((e, sent)),
                }
            }
        }
        self.io.flush().await.map_err(|e| (e, sent))
    }

    /// Reads the response head, skipping interim (1xx) responses.
    async fn read_head(&mut self) -> Result<h1::Head, Error> {
        loop {
            if !self.buf.is_empty()
                && let Some(head) = h1::parse_head(&mut self.buf)?
            {
                if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    return Err(ProtoError::Upgrade.into());
                }
                if !head.status.is_informational() {
                    return Ok(head);
                }
                continue;
            }
            if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_READ_ROOM {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Whether the upstream closed this idle connection (or sent bytes nobody asked for).
    /// Only idle connections are asked, and [`Origin::checkin`] keeps none with unread bytes.
    fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io).poll_read(&mut cx, &mut probe).is_ready()
    }
}

/// The transport: TCP, or TLS over TCP.
enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream response body, read from its connection by whoever polls it; the connection
/// goes back to the pool when the body has been read to the end.
pub struct Body {
    kind: Kind,
    /// `None` once the body ended or failed.
    conn: Option<Conn>,
    origin: Arc<Origin>,
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

impl Body {
    /// The body is complete: its connection goes back to the pool if it can carry another
    /// request.
    fn finish(&mut self) {
        self.kind = Kind::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
        {
            self.origin.checkin(conn);
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.kind = Kind::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.kind {
                Kind::Done => return Poll::Ready(None),
                Kind::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*left).map_or(conn.buf.len(), |l| l.min(conn.buf.len()));
                        let data = conn.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Kind::Chunked(state) => match state.decode(&mut conn.buf) {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) if *state == Chunked::Done => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(e.into()),
                },
                Kind::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(e.into()),
                Poll::Ready(Ok(0)) if this.kind == Kind::Close => {
                    this.kind = Kind::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(Error::Closed),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.kind == Kind::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Length(n) => SizeHint::with_exact(n),
            Kind::Done => SizeHint::with_exact(0),
            Kind::Chunked(_) | Kind::Close => SizeHint::default(),
        }
    }
}
