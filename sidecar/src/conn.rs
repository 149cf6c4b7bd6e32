//! One app-facing connection, served by hyper: HTTP/1.1 or h2c (HTTP/2 with prior knowledge,
//! told apart by the preface), with the limits a proxy in front of untrusted clients needs.
//!
//! Contract:
//! - Idle: a connection with no request in flight for [`Limits::idle`] — since it was
//!   accepted, or since its last answer ended — is closed (HTTP/2 with a GOAWAY first). This
//!   one clock also bounds how long a request head may take to arrive, whatever the protocol;
//!   hyper's own HTTP/1.1 header-read timeout is off (a second clock, and a timer made and
//!   dropped for every request).
//! - Write: a connection whose writes make no progress for [`Limits::write`] (a client that
//!   stopped reading) fails; its request is dropped, and with it the upstream call.
//! - A client that goes away cancels its request: hyper drops the service's future.
//! - When hyper ends the connection (after a refusal such as 413 sent before the body was
//!   read, or a malformed request), the sidecar shuts its side down and keeps reading and
//!   discarding what the client still sends for up to [`Limits::linger`], so the client reads
//!   the answer instead of a reset (nginx's lingering close).
//! - A response body that fails ends the transfer abnormally: hyper leaves out the last chunk
//!   (HTTP/1.1) or resets the stream (HTTP/2).
//! - Requests hyper itself refuses (a malformed head: 400, a head over the limits: 431) are
//!   counted in `detour_refused_requests_total` and get an audit line with a request id.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceExt};

use crate::body::{Guarded, Response};
use crate::layers::request_id::RequestId;
use crate::proxy::Shared;

/// Largest request head (request line and header fields) over HTTP/1.1, and largest header
/// list over HTTP/2; beyond it: 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in an HTTP/1.1 request head; beyond it: 431.
pub const MAX_HEADERS: usize = 100;
/// Most concurrent streams a client may open on one HTTP/2 connection.
pub const MAX_STREAMS: u32 = 256;
/// How long an idle connection is closed gracefully before it is dropped.
const GRACE: Duration = Duration::from_secs(1);

/// The limits of the app-facing connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once on the listener; beyond it, new ones wait in the
    /// kernel's backlog until one closes.
    pub max_connections: usize,
    /// How long a connection may have no request in flight (also the longest a request head
    /// may take).
    pub idle: Duration,
    /// How long a write may make no progress.
    pub write: Duration,
    /// How long the sidecar keeps reading (and discarding) after it ended a connection.
    pub linger: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            idle: Duration::from_secs(30),
            write: Duration::from_secs(30),
            linger: Duration::from_secs(5),
        }
    }
}

/// What a connection calls: one service for both protocols.
pub trait Serve:
    Service<Request<Incoming>, Response = Response, Error = std::convert::Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> Serve for S where
    S: Service<
            Request<Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves one accepted connection until it ends, is idle too long, or shutdown. `permit`
/// is its place under the listener's connection cap, given back when it is closed.
pub async fn serve<S: Serve>(
    tcp: TcpStream,
    svc: S,
    limits: Limits,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let (back, returned) = oneshot::channel();
    let io = Io {
        tcp: Some(tcp),
        back: Some(back),
        write_timeout: limits.write,
        stalled: None,
    };
    let activity = Arc::new(Activity::new(Instant::now()));
    let svc = Tracked {
        inner: svc,
        activity: Arc::clone(&activity),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32)
        .max_concurrent_streams(MAX_STREAMS);
    // Boxed so that it can be dropped (handing the socket back) before this function ends.
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), svc));
    // When the connection was asked to close (idle too long, or shutdown); it is dropped once
    // it has had no request in flight for [`GRACE`] since then.
    let mut closing: Option<Instant> = None;
    // The timer and the wait for shutdown end with the loop: the lingering close after it
    // does not carry them.
    let ended = {
        // One timer for the connection's life, looked at only when it fires: requests that
        // start and end in between touch neither it nor this task (they only move
        // `activity`'s idle mark), so serving a request polls the connection no more often
        // than hyper asks.
        let timer = tokio::time::sleep_until(activity.born + limits.idle);
        tokio::pin!(timer);
        let shutdown_asked = shutdown.wait_for(|s| *s);
        tokio::pin!(shutdown_asked);
        loop {
            tokio::select! {
                biased;
                r = conn.as_mut() => break r,
                _ = &mut shutdown_asked, if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    let now = Instant::now();
                    closing = Some(now);
                    if now + GRACE < timer.deadline() {
                        timer.as_mut().reset(now + GRACE);
                    }
                }
                () = timer.as_mut() => {
                    let now = Instant::now();
                    let deadline = activity.idle_since().map(|since| match closing {
                        Some(asked) => since.max(asked) + GRACE,
                        None => since + limits.idle,
                    });
                    match deadline {
                        Some(at) if at <= now => {
                            if closing.is_some() {
                                break Ok(());
                            }
                            conn.as_mut().graceful_shutdown();
                            closing = Some(now);
                            timer.as_mut().reset(now + GRACE);
                        }
                        // Not idle that long (yet): look again at the deadline.
                        Some(at) => timer.as_mut().reset(at),
                        // A request in flight: look again one idle timeout from now, or, once
                        // closing, soon (hyper ends the connection when it is done).
                        None => timer.as_mut().reset(now + closing.map_or(limits.idle, |_| GRACE)),
                    }
                }
            }
        }
    };
    if let Err(e) = ended {
        refused_by_hyper(&shared, e.as_ref());
    }
    // hyper is done with the connection: it hands the socket back when dropped.
    drop(conn);
    if let Ok(tcp) = returned.await {
        linger(tcp, limits.linger).await;
    }
    drop(permit);
}

/// Counts and audits a request hyper refused itself (it has written the 400 or 431).
fn refused_by_hyper(shared: &Shared, e: &(dyn std::error::Error + 'static)) {
    let Some(e) = e.downcast_ref::<hyper::Error>() else {
        return;
    };
    let (status, reason) = if e.is_parse_too_large() {
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "head_too_large")
    } else if e.is_parse() {
        (StatusCode::BAD_REQUEST, "bad_http_request")
    } else {
        tracing::debug!(error = %e, "connection ended with an error");
        return;
    };
    crate::layers::request_id::record_refusal(shared, &RequestId::generate().0, "none", status, reason);
}

/// Shuts the sending side and reads until the client closes, for up to `limit`: a client
/// still sending a request body the sidecar refused then reads the answer instead of a reset.
async fn linger(mut tcp: TcpStream, limit: Duration) {
    let _ = tcp.shutdown().await;
    let deadline = Instant::now() + limit;
    // On the heap, and only while lingering: an idle connection's task stays small.
    let mut sink = vec![0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    /// When the connection was accepted; the idle mark counts from it.
    born: Instant,
    active: AtomicUsize,
    /// Microseconds after `born` at which a request last ended: the start of the current idle
    /// spell while none is in flight. Written before the count falls, so a reader that sees
    /// no request in flight (`Acquire`) reads the mark of the one that ended last.
    idle_mark_us: AtomicU64,
}

impl Activity {
    fn new(born: Instant) -> Self {
        Self {
            born,
            active: AtomicUsize::new(0),
            idle_mark_us: AtomicU64::new(0),
        }
    }

    /// Since when the connection has had no request in flight; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) != 0 {
            return None;
        }
        Some(self.born + Duration::from_micros(self.idle_mark_us.load(Ordering::Relaxed)))
    }
}

/// One request in flight, until its answer has been written (or dropped).
struct Active(Arc<Activity>);

impl Active {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(activity))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let a = &self.0;
        let since_born = u64::try_from(a.born.elapsed().as_micros()).unwrap_or(u64::MAX);
        a.idle_mark_us.fetch_max(since_born, Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::Release);
    }
}

/// The service as hyper calls it: each request counts as in flight until its body is done.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: Serve> hyper::service::Service<Request<Incoming>> for Tracked<S> {
    /// Each request counts as in flight until its body is done (or dropped).
    type Response = http::Response<Guarded<Active>>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let active = Active::new(&self.activity);
        // hyper leaves out the body of an answer to `HEAD` over HTTP/1.1, not over HTTP/2.
        let head_h2 = req.method() == Method::HEAD && req.version() == Version::HTTP_2;
        let served = self.inner.clone().oneshot(req);
        Box::pin(async move {
            let mut resp = served.await?;
            if head_h2 {
                if let Some(n) = resp.body().size_hint().exact() {
                    resp.headers_mut()
                        .entry(header::CONTENT_LENGTH)
                        .or_insert_with(|| HeaderValue::from(n));
                }
                *resp.body_mut() = crate::body::full(Bytes::new());
            }
            Ok(resp.map(|body| Guarded::new(body, active)))
        })
    }
}

/// The socket as hyper sees it: writes that make no progress for the write timeout fail,
/// and the socket goes back to [`serve`] when hyper drops it (for the lingering close).
struct Io {
    /// `Some` until dropped.
    tcp: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
    write_timeout: Duration,
    /// Armed while a write waits for the client to read.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Io {
    fn tcp(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.tcp.as_mut() {
            Some(t) => Ok(Pin::new(t)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Fails a write that has waited longer than the write timeout.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing within the write timeout",
            )));
        }
        Poll::Pending
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let (Some(tcp), Some(back)) = (self.tcp.take(), self.back.take()) {
            let _ = back.send(tcp);
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().tcp() {
            Ok(t) => t.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match this.tcp() {
            Ok(t) => t.poll_write(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match this.tcp() {
            Ok(t) => t.poll_write_vectored(cx, bufs),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = match this.tcp() {
            Ok(t) => t.poll_flush(cx),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = match this.tcp() {
            Ok(t) => t.poll_shutdown(cx),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.watch(cx, r)
    }
}
