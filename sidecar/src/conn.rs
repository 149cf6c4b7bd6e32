//! One app-facing connection: HTTP/1.1 served here, over [`crate::h1`]; h2c (HTTP/2 with
//! prior knowledge) handed to hyper.
//!
//! Contract:
//! - The connection is driven by its own task and holds one read buffer. A request's head and
//!   body are read whole (a body up to one byte past the limit, so the body-limit layer
//!   answers 413), then the service is called; its response is written as its body yields
//!   frames — a length when the body knows it, chunked otherwise — each frame sent as it comes
//!   (server-sent events are not held back).
//! - A client that goes away while its request is being served cancels it: the service's
//!   future (and with it the upstream call) is dropped, not left to run.
//! - Keep-alive per HTTP/1.1 (HTTP/1.0 only when asked for), pipelined requests answered in
//!   order, `Expect: 100-continue` answered before the body is read. A malformed head, an
//!   unframeable body or a head over the limits is answered (400, 431) and the connection
//!   closed; a body that can not be read whole closes it without an answer.
//! - Shutdown: an idle connection closes at once; one serving a request finishes it, says
//!   `connection: close` and closes.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Method, Request, StatusCode, Version, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use crate::body::Response;
use crate::h1::{self, Chunked, Framing, ProtoError};

/// The bytes an HTTP/2 client with prior knowledge opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request head must arrive whole within this time of its first byte.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A request body must arrive whole within this time of its head.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// The read buffer grows by this much when it is nearly full.
const READ_SIZE: usize = 4 * 1024;
/// Bytes of pipelined requests read ahead while one is served; beyond this the connection
/// is not read until the current answer is written.
const READ_AHEAD: usize = h1::MAX_HEAD;
/// Bodies up to this size are copied behind the response head and written with it.
const INLINE: usize = 16 * 1024;

/// What the connection calls: the same service for both protocols (the request body is the
/// bytes read for HTTP/1.1, hyper's stream for HTTP/2).
pub trait Serve:
    Service<Request<Full<Bytes>>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Service<Request<Incoming>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> Serve for S where
    S: Service<Request<Full<Bytes>>, Response = Response, Error = Infallible, Future: Send + 'static>
        + Service<Request<Incoming>, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// Serves one accepted connection until the client closes it, it fails, or shutdown.
pub async fn serve<S: Serve>(io: TcpStream, svc: S, max_body: usize, mut shutdown: watch::Receiver<bool>) {
    let _ = io.set_nodelay(true);
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        out: Vec::new(),
    };
    // Enough bytes to tell an HTTP/2 preface from an HTTP/1 request line.
    let mut started = None;
    while conn.buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&conn.buf) {
        if !conn.read_more(&mut shutdown, &mut started).await {
            return;
        }
    }
    if conn.buf.starts_with(H2_PREFACE) {
        return serve_h2(conn, svc, shutdown).await;
    }
    conn.serve_h1(svc, max_body, shutdown).await;
}

async fn serve_h2<S: Serve>(conn: Conn, svc: S, mut shutdown: watch::Receiver<bool>) {
    let io = TokioIo::new(Rewind {
        prefix: conn.buf.freeze(),
        io: conn.io,
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, TowerToHyperService::new(svc));
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "h2 connection ended with an error");
            }
            return;
        }
        _ = shutdown.wait_for(|s| *s) => {}
    }
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}

struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// What is written next (a response head, with its first frame when it is small).
    out: Vec<u8>,
}

impl Conn {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        fill(Pin::new(&mut self.io), &mut self.buf, cx)
    }

    async fn serve_h1<S: Serve>(mut self, svc: S, max_body: usize, mut shutdown: watch::Receiver<bool>) {
        loop {
            let head = match self.read_head(&mut shutdown).await {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(e) => return self.refuse(&e).await,
            };
            let framing = match h1::request_body(&head) {
                Ok(f) => f,
                Err(e) => return self.refuse(&e).await,
            };
            let mut keep_alive = h1::request_keeps_alive(&head);
            let expects_continue = head.version == Version::HTTP_11
                && head
                    .headers
                    .get(header::EXPECT)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            let body = match framing {
                // Not read: the body-limit layer answers 413 from the declared length, and
                // the connection closes after that answer.
                Framing::Length(n) if n > max_body as u64 => {
                    keep_alive = false;
                    Bytes::new()
                }
                framing => {
                    if expects_continue
                        && framing != Framing::Length(0)
                        && self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
                    {
                        return;
                    }
                    match tokio::time::timeout(BODY_TIMEOUT, self.read_body(framing, max_body)).await {
                        Ok(Ok((body, whole))) => {
                            keep_alive &= whole;
                            body
                        }
                        Ok(Err(_)) | Err(_) => return,
                    }
                }
            };
            let is_head = head.method == Method::HEAD;
            let http10 = head.version == Version::HTTP_10;
            let mut req = Request::new(Full::new(body));
            *req.method_mut() = head.method;
            *req.uri_mut() = head.uri;
            *req.version_mut() = head.version;
            *req.headers_mut() = head.headers;
            let (mut rd, mut wr) = self.io.split();
            let served = ServiceExt::<Request<Full<Bytes>>>::oneshot(svc.clone(), req);
            let resp = tokio::select! {
                r = served => match r {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                },
                // The client went away: dropping the future cancels the request.
                () = gone(&mut rd, &mut self.buf) => return,
            };
            let close = !keep_alive || *shutdown.borrow();
            let how = Reply {
                close,
                is_head,
                http10,
            };
            match write_response(&mut wr, &mut rd, &mut self.buf, &mut self.out, resp, how).await {
                Ok(true) if !close => {}
                _ => {
                    let _ = wr.shutdown().await;
                    return;
                }
            }
            // A large body or answer does not leave its buffers to the idle connection.
            if self.buf.is_empty() && self.buf.capacity() > 4 * READ_SIZE {
                self.buf = BytesMut::new();
            }
            if self.out.capacity() > INLINE {
                self.out = Vec::new();
            }
        }
    }

    /// The next request head; `Ok(None)` when the client closed (or shutdown came) between
    /// requests.
    async fn read_head(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<h1::RequestHead>, ProtoError> {
        let mut started = None;
        loop {
            if !self.buf.is_empty()
                && let Some(head) = h1::parse_request(&mut self.buf)?
            {
                return Ok(Some(head));
            }
            if !self.read_more(shutdown, &mut started).await {
                return Ok(None);
            }
        }
    }

    /// Reads more of a request head. While none of it has arrived the connection is idle and
    /// waits as long as the client keeps it, or until shutdown; once its first byte is in
    /// (`started` records when), the head must be whole within [`HEAD_TIMEOUT`]. `false` when
    /// the client closed, the time ran out, or shutdown came while idle.
    async fn read_more(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        started: &mut Option<tokio::time::Instant>,
    ) -> bool {
        let idle = self.buf.is_empty();
        let read = poll_fn(|cx| self.poll_fill(cx));
        let n = if idle {
            if *shutdown.borrow() {
                return false;
            }
            tokio::select! {
                r = read => r,
                _ = shutdown.wait_for(|s| *s) => return false,
            }
        } else {
            let deadline = *started.get_or_insert_with(|| tokio::time::Instant::now() + HEAD_TIMEOUT);
            tokio::time::timeout_at(deadline, read).await.unwrap_or(Ok(0))
        };
        matches!(n, Ok(n) if n > 0)
    }

    /// Reads a body framed by `framing`, at most `max + 1` bytes of it (the body-limit layer
    /// answers 413 beyond `max`). Returns the body and whether it was read whole, so the
    /// connection can carry another request.
    async fn read_body(&mut self, framing: Framing, max: usize) -> io::Result<(Bytes, bool)> {
        let closed = || io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed mid-body");
        match framing {
            Framing::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                while self.buf.len() < n {
                    self.buf.reserve(n - self.buf.len());
                    if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                        return Err(closed());
                    }
                }
                Ok((self.buf.split_to(n).freeze(), true))
            }
            Framing::Chunked => {
                let mut state = Chunked::Size;
                let mut body = BytesMut::new();
                loop {
                    match state.decode(&mut self.buf) {
                        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                        Ok(Some(data)) => {
                            let room = (max + 1).saturating_sub(body.len());
                            body.extend_from_slice(&data[..data.len().min(room)]);
                            if body.len() > max {
                                return Ok((body.freeze(), false));
                            }
                            continue;
                        }
                        Ok(None) if state == Chunked::Done => return Ok((body.freeze(), true)),
                        Ok(None) => {}
                    }
                    if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                        return Err(closed());
                    }
                }
            }
            Framing::Empty | Framing::Close => Ok((Bytes::new(), true)),
        }
    }

    /// Answers a request that cannot be served (malformed or over the limits), then closes.
    async fn refuse(mut self, e: &ProtoError) {
        let status = match e {
            ProtoError::HeadTooLarge | ProtoError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        let resp = crate::error::ApiError::new(
            status,
            "invalid_request_error",
            "bad_http_request",
            format!("{e}"),
        )
        .into_response();
        let how = Reply {
            close: true,
            is_head: false,
            http10: false,
        };
        let (mut rd, mut wr) = self.io.split();
        let _ = write_response(&mut wr, &mut rd, &mut self.buf, &mut self.out, resp, how).await;
        let _ = wr.shutdown().await;
    }
}

/// Reads more bytes into `buf`; `Ok(0)` at the end of the stream.
fn fill<R: AsyncRead>(io: Pin<&mut R>, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(io, cx, buf)
}

/// Resolves when the client has gone away (the connection was closed or failed). Bytes it
/// sends meanwhile (pipelined requests) are kept, up to [`READ_AHEAD`].
async fn gone(rd: &mut ReadHalf<'_>, buf: &mut BytesMut) {
    loop {
        if buf.len() >= READ_AHEAD {
            return std::future::pending().await;
        }
        match poll_fn(|cx| fill(Pin::new(&mut *rd), buf, cx)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// How a response is written.
#[derive(Clone, Copy)]
struct Reply {
    /// The connection closes after it.
    close: bool,
    /// An answer to `HEAD`: the head only.
    is_head: bool,
    /// The client speaks HTTP/1.0, which has no chunked coding: a body of unknown length runs
    /// to the close.
    http10: bool,
}

/// Writes `resp`. `Ok(true)` when it was written whole and the connection may carry another
/// request; `Ok(false)` or an error when it must close.
async fn write_response(
    wr: &mut WriteHalf<'_>,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    resp: Response,
    how: Reply,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let mut close = how.close || h1::has_token(&parts.headers, &header::CONNECTION, b"close");
    let framing = if matches!(parts.status.as_u16(), 100..=199 | 204 | 304) {
        // These never have a body, nor a length saying so (RFC 9110 §8.6).
        Framing::Empty
    } else if body.is_end_stream() {
        Framing::Length(0)
    } else if let Some(n) = body.size_hint().exact() {
        Framing::Length(n)
    } else if how.http10 {
        close = true;
        Framing::Close
    } else {
        Framing::Chunked
    };
    out.clear();
    date(|d| h1::encode_response_head(out, parts.status, &parts.headers, framing, close, d));
    if how.is_head || matches!(framing, Framing::Empty | Framing::Length(0)) {
        wr.write_all(out).await?;
        return Ok(!close);
    }
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    // Frames ready together (a burst of events read from the upstream at once) go out in one
    // write, as soon as the body has nothing more ready or the buffer is large.
    loop {
        let next = match body.frame().now_or_never() {
            Some(next) => next,
            None => {
                if !out.is_empty() {
                    wr.write_all(out).await?;
                    out.clear();
                }
                tokio::select! {
                    f = body.frame() => f,
                    // The client went away while the answer was being produced.
                    () = gone(rd, buf) => return Ok(false),
                }
            }
        };
        let data = match next {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
            Some(Err(never)) => match never {},
        };
        match &mut left {
            Some(left) => {
                let n = (data.len() as u64).min(*left);
                *left -= n;
                let data = data.slice(..n as usize);
                if out.len() + data.len() <= INLINE {
                    out.extend_from_slice(&data);
                } else {
                    wr.write_all(out).await?;
                    out.clear();
                    wr.write_all(&data).await?;
                }
            }
            None if framing == Framing::Close => out.extend_from_slice(&data),
            None => h1::encode_chunk(out, &data),
        }
        if out.len() >= INLINE {
            wr.write_all(out).await?;
            out.clear();
        }
    }
    let whole = match (left, framing) {
        // A body shorter than it said: the client can only tell from the connection closing.
        (Some(left), _) => left == 0,
        (None, Framing::Close) => false,
        (None, _) => {
            out.extend_from_slice(h1::LAST_CHUNK);
            true
        }
    };
    if !out.is_empty() {
        wr.write_all(out).await?;
    }
    Ok(whole && !close)
}

/// Calls `f` with the current `date` header value (IMF-fixdate), formatted once a second.
fn date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            let bytes = text.as_bytes();
            if bytes.len() == 29 {
                cached.1.copy_from_slice(bytes);
            }
            cached.0 = secs;
        }
        f(&cached.1)
    })
}

/// A connection whose first bytes were already read: they are read again first.
struct Rewind {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
