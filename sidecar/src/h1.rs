//! HTTP/1.1 (RFC 9112) as the sidecar speaks it on both sides: to upstreams (the request
//! written into one buffer, the response head parsed, the response body's framing — a
//! length, chunked, or up to the end of the connection) and to the app (the request head and
//! body framing parsed, the response head written).
//!
//! Contract:
//! - Pure functions over buffers; connections and their I/O live in `providers::client` and
//!   `conn`. Each function either makes progress on the bytes it has or says it needs more;
//!   none reads past what it consumes, so the next message on a kept-alive connection starts
//!   where this one ended.
//! - Everything the peer controls is bounded: the head ([`MAX_HEAD`], [`MAX_HEADERS`]), a
//!   chunk-size line, the trailers. Anything malformed is an error naming what was wrong,
//!   and the connection is not used again.
//! - Header values are slices of the received head, not copies.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};

/// Largest head accepted (start line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers accepted in a head.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section accepted (it is read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;
/// Bodies up to this size are copied behind the head and written with it in one call.
pub const INLINE_BODY: usize = 16 * 1024;

/// What was wrong with what the peer sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed head ({0})")]
    Head(httparse::Error),
    #[error("invalid header name or value")]
    HeaderField,
    #[error("invalid request target")]
    Target,
    #[error("unsupported transfer-encoding (only chunked, without content-length)")]
    TransferEncoding,
    #[error("invalid or conflicting content-length")]
    ContentLength,
    #[error("101 Switching Protocols to a plain request")]
    Upgrade,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("trailers larger than {MAX_TRAILERS} bytes")]
    Trailers,
}

/// The request head (and the body, when it is at most [`INLINE_BODY`]) as written on the
/// wire. `content-length` is always the body's; hop-by-hop headers of `req` are left out;
/// `host` is added unless `req` has one. Returns whether the body is in the buffer.
pub fn encode_request(req: &Request<Bytes>, host: &HeaderValue) -> (Vec<u8>, bool) {
    let body = req.body();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let inline = body.len() <= INLINE_BODY;
    let mut out = Vec::with_capacity(256 + if inline { body.len() } else { 0 });
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.headers().contains_key(header::HOST) {
        field(&mut out, b"host", host.as_bytes());
    }
    for (name, value) in req.headers() {
        if !is_hop_by_hop(name) {
            field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !body.is_empty()
        || !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        )
    {
        let mut n = itoa::Buffer::new();
        field(&mut out, b"content-length", n.format(body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if inline {
        out.extend_from_slice(body);
    }
    (out, inline)
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Headers that describe this connection or this message's framing, which the client
/// writes itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::CONTENT_LENGTH
        || *name == header::TRANSFER_ENCODING
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Where a header's name and value are in the buffer (the head is at most 64 KiB, so `u32`
/// offsets): they are sliced out of the head once it is split off, since the parser borrows
/// the buffer until then.
type Offsets = [(u32, u32, u32, u32); MAX_HEADERS];

fn record(base: *const u8, headers: &[httparse::Header<'_>], at: &mut Offsets) {
    let base = base as usize;
    let offset = |s: &[u8]| {
        if s.is_empty() {
            0
        } else {
            u32::try_from((s.as_ptr() as usize).wrapping_sub(base)).unwrap_or(u32::MAX)
        }
    };
    for (slot, h) in at.iter_mut().zip(headers) {
        let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
        *slot = (
            n,
            n.saturating_add(h.name.len() as u32),
            v,
            v.saturating_add(h.value.len() as u32),
        );
    }
}

/// The completeness verdict of a parse: the head's length, or why there is none yet.
fn verdict(parsed: httparse::Result<usize>, buffered: usize) -> Result<Option<usize>, ProtoError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => Err(ProtoError::HeadTooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered > MAX_HEAD => Err(ProtoError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ProtoError::TooManyHeaders),
        Err(e) => Err(ProtoError::Head(e)),
    }
}

/// Splits the head (`len` bytes) off `buf` and builds its headers from `at`.
fn split_head(
    buf: &mut BytesMut,
    len: usize,
    at: &Offsets,
    count: usize,
) -> Result<(Bytes, HeaderMap), ProtoError> {
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in at.iter().take(count) {
        let name = head
            .get(ns as usize..ne as usize)
            .and_then(|n| HeaderName::from_bytes(n).ok())
            .ok_or(ProtoError::HeaderField)?;
        let value = if vs == ve {
            HeaderValue::from_static("")
        } else {
            let value = head
                .get(vs as usize..ve as usize)
                .ok_or(ProtoError::HeaderField)?;
            HeaderValue::from_maybe_shared(head.slice_ref(value)).map_err(|_| ProtoError::HeaderField)?
        };
        headers.append(name, value);
    }
    Ok((head, headers))
}

fn version(minor: u8) -> Version {
    if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    }
}

/// Parses the response head at the start of `buf` and removes it from `buf`. `Ok(None)`:
/// the head is not complete yet (nothing is consumed).
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, ProtoError> {
    let mut at: Offsets = [(0, 0, 0, 0); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let Some(len) = verdict(parsed, buf.len())? else {
            return Ok(None);
        };
        record(buf.as_ptr(), resp.headers, &mut at);
        let (Some(code), Some(minor)) = (resp.code, resp.version) else {
            return Ok(None);
        };
        (len, code, minor, resp.headers.len())
    };
    let status = StatusCode::from_u16(code).map_err(|_| ProtoError::Head(httparse::Error::Status))?;
    let (_, headers) = split_head(buf, len, &at, count)?;
    Ok(Some(Head {
        status,
        version: version(minor),
        headers,
    }))
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: http::Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Parses the request head at the start of `buf` and removes it from `buf`. `Ok(None)`: the
/// head is not complete yet (nothing is consumed). Empty lines before it are skipped (RFC
/// 9112 §2.2).
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, ProtoError> {
    let blank = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    buf.advance(blank);
    let mut at: Offsets = [(0, 0, 0, 0); MAX_HEADERS];
    let (len, method, target, minor, count) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed =
            httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut slots);
        let Some(len) = verdict(parsed, buf.len())? else {
            return Ok(None);
        };
        record(buf.as_ptr(), req.headers, &mut at);
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Ok(None);
        };
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|_| ProtoError::Head(httparse::Error::Token))?;
        let base = buf.as_ptr() as usize;
        let target = ((path.as_ptr() as usize).wrapping_sub(base), path.len());
        (len, method, target, minor, req.headers.len())
    };
    let (head, headers) = split_head(buf, len, &at, count)?;
    let target = head
        .get(target.0..target.0.saturating_add(target.1))
        .ok_or(ProtoError::Target)?;
    let uri = http::Uri::from_maybe_shared(head.slice_ref(target)).map_err(|_| ProtoError::Target)?;
    Ok(Some(RequestHead {
        method,
        uri,
        version: version(minor),
        headers,
    }))
}

/// How much request body follows a request head: a length, or chunked. A transfer coding
/// other than a final `chunked`, or one beside a `content-length`, is refused (RFC 9112
/// §6.1: such a request cannot be framed safely).
pub fn request_body(head: &RequestHead) -> Result<Framing, ProtoError> {
    let h = &head.headers;
    if h.contains_key(header::TRANSFER_ENCODING) {
        let chunked = last_coding_is_chunked(h);
        if !chunked || h.contains_key(header::CONTENT_LENGTH) || head.version != Version::HTTP_11 {
            return Err(ProtoError::TransferEncoding);
        }
        return Ok(Framing::Chunked);
    }
    Ok(Framing::Length(content_length(h)?.unwrap_or(0)))
}

/// Whether the client keeps the connection after this request (HTTP/1.1 unless it says
/// `close`; HTTP/1.0 only if it says `keep-alive`).
pub fn request_keeps_alive(head: &RequestHead) -> bool {
    if head.version == Version::HTTP_11 {
        !has_token(&head.headers, &header::CONNECTION, b"close")
    } else {
        has_token(&head.headers, &header::CONNECTION, b"keep-alive")
    }
}

/// Writes a response head: the status line, `date` (unless given), the response's headers
/// but those that frame a message or describe a connection, then the framing the server
/// chose (`Length`: `content-length`; `Chunked`: `transfer-encoding: chunked`; `Close`:
/// neither) and `connection: close` when the connection ends after it.
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
    date: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if !headers.contains_key(header::DATE) {
        field(out, b"date", date);
    }
    for (name, value) in headers {
        if !is_hop_by_hop(name) {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    match framing {
        Framing::Length(n) => {
            let mut digits = itoa::Buffer::new();
            field(out, b"content-length", digits.format(n).as_bytes());
        }
        Framing::Chunked => field(out, b"transfer-encoding", b"chunked"),
        Framing::Empty | Framing::Close => {}
    }
    if close {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked body: its size in hex, the data, CRLF.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let mut size = [0u8; 16];
    let mut n = data.len();
    let mut i = size.len();
    loop {
        i -= 1;
        size[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&size[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (a 204, a 304, an answer to `HEAD`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything up to the end of the connection.
    Close,
}

/// The body's framing, and whether the connection can carry another request after it.
pub fn framing(head: &Head, method: &Method) -> Result<(Framing, bool), ProtoError> {
    let h = &head.headers;
    let keep_alive = head.version == Version::HTTP_11 && !has_token(h, &header::CONNECTION, b"close");
    let status = head.status.as_u16();
    if *method == Method::HEAD || status == 204 || status == 304 {
        return Ok((Framing::Empty, keep_alive));
    }
    if h.contains_key(header::TRANSFER_ENCODING) {
        // Only a final `chunked` frames the body; any other coding runs to the close. A
        // length beside a transfer coding is ignored, and such a connection is not reused.
        let chunked = last_coding_is_chunked(h);
        let clean = chunked && keep_alive && !h.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked, clean)
        } else {
            (Framing::Close, false)
        });
    }
    Ok(match content_length(h)? {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::Close, false),
    })
}

/// Whether the last transfer coding is `chunked`.
fn last_coding_is_chunked(h: &HeaderMap) -> bool {
    h.get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `content-length`, if any: every value (and every item of a list) must be the same
/// number.
fn content_length(h: &HeaderMap) -> Result<Option<u64>, ProtoError> {
    let mut length: Option<u64> = None;
    for value in h.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let n = parse_length(item.trim_ascii()).ok_or(ProtoError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(ProtoError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a comma-separated header has `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &[u8]) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// In the trailer section, this many bytes of it read.
    Trailers(usize),
    /// After the last chunk and the trailers.
    Done,
}

impl Chunked {
    /// Decodes from the front of `buf`: `Ok(Some(data))` for the next piece of data,
    /// `Ok(None)` when more bytes are needed or the body is complete ([`Chunked::Done`]).
    /// Consumes exactly what it decoded; trailers are read and dropped.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtoError> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(ProtoError::ChunkSize)
                        } else {
                            Ok(None)
                        };
                    };
                    if nl > MAX_CHUNK_LINE {
                        return Err(ProtoError::ChunkSize);
                    }
                    let size = chunk_size(&buf[..nl]).ok_or(ProtoError::ChunkSize)?;
                    buf.advance(nl + 1);
                    *self = if size == 0 {
                        Chunked::Trailers(0)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    };
                    return Ok(Some(data));
                }
                Chunked::DataEnd => match buf.first() {
                    None => return Ok(None),
                    Some(b'\n') => {
                        buf.advance(1);
                        *self = Chunked::Size;
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(None),
                        Some(b'\n') => {
                            buf.advance(2);
                            *self = Chunked::Size;
                        }
                        Some(_) => return Err(ProtoError::ChunkEnd),
                    },
                    Some(_) => return Err(ProtoError::ChunkEnd),
                },
                Chunked::Trailers(seen) => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        return if seen + buf.len() > MAX_TRAILERS {
                            Err(ProtoError::Trailers)
                        } else {
                            Ok(None)
                        };
                    };
                    let seen = seen + nl + 1;
                    if seen > MAX_TRAILERS {
                        return Err(ProtoError::Trailers);
                    }
                    let last = nl == 0 || (nl == 1 && buf[0] == b'\r');
                    buf.advance(nl + 1);
                    *self = if last {
                        Chunked::Done
                    } else {
                        Chunked::Trailers(seen)
                    };
                }
                Chunked::Done => return Ok(None),
            }
        }
    }
}

/// The size on a chunk-size line (without its `\n`): hex digits, then optional whitespace
/// and `;` extensions (ignored), then an optional `\r`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return None;
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        size = size << 4 | u64::from(v);
    }
    Some(size)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn head(raw: &str) -> Result<Option<Head>, ProtoError> {
        parse_head(&mut BytesMut::from(raw.as_bytes()))
    }

    fn framing_of(raw: &str) -> Result<(Framing, bool), ProtoError> {
        framing(&head(raw)?.unwrap(), &Method::POST)
    }

    #[test]
    fn a_request_is_written_in_origin_form_with_its_length_and_host() {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions?x=1")
            .header("content-type", "application/json")
            .header("connection", "upgrade")
            .header("transfer-encoding", "chunked")
            .header("content-length", "999")
            .body(Bytes::from_static(b"{}"))
            .unwrap();
        let (out, inline) = encode_request(&req, &HeaderValue::from_static("api.example:443"));
        assert!(inline);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: api.example:443\r\n\
             content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn a_large_body_is_left_out_of_the_head_buffer() {
        let body = Bytes::from(vec![b'x'; INLINE_BODY + 1]);
        let req = Request::builder()
            .method(Method::POST)
            .uri("/")
            .header("host", "given")
            .body(body)
            .unwrap();
        let (out, inline) = encode_request(&req, &HeaderValue::from_static("unused"));
        assert!(!inline);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST / HTTP/1.1\r\nhost: given\r\ncontent-length: 16385\r\n\r\n"
        );
    }

    #[test]
    fn a_head_is_parsed_once_complete_and_leaves_the_body_in_the_buffer() {
        let raw =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-empty:\r\ncontent-length: 2\r\n\r\n{}";
        for cut in 0..raw.len() - 2 {
            let mut buf = BytesMut::from(&raw.as_bytes()[..cut]);
            assert!(parse_head(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
        let mut buf = BytesMut::from(raw.as_bytes());
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.headers["content-type"], "application/json");
        assert_eq!(h.headers["x-empty"], "");
        assert_eq!(&buf[..], b"{}");
    }

    #[test]
    fn malformed_or_oversized_heads_are_errors() {
        assert!(matches!(
            head("HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(ProtoError::Head(_))
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nbad header\r\n\r\n"),
            Err(ProtoError::Head(_))
        ));
        assert!(matches!(
            head("SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ProtoError::Head(_))
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).unwrap_err(),
            ProtoError::TooManyHeaders
        );
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "v".repeat(MAX_HEAD));
        assert_eq!(head(&long).unwrap_err(), ProtoError::HeadTooLarge);
        let long_complete = format!("{long}\r\n\r\n");
        assert_eq!(head(&long_complete).unwrap_err(), ProtoError::HeadTooLarge);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use Framing::*;
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Ok((Length(5), true))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n"),
            Ok((Length(5), true))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"),
            Err(ProtoError::ContentLength)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"),
            Err(ProtoError::ContentLength)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n"),
            Err(ProtoError::ContentLength)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok((Chunked, true))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n"),
            Ok((Chunked, false))
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            Ok((Close, false))
        );
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n"), Ok((Close, false)));
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"),
            Ok((Length(0), false))
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n"),
            Ok((Length(2), false))
        );
        assert_eq!(framing_of("HTTP/1.1 204 No Content\r\n\r\n"), Ok((Empty, true)));
        assert_eq!(framing_of("HTTP/1.1 304 Not Modified\r\n\r\n"), Ok((Empty, true)));
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(framing(&h, &Method::HEAD), Ok((Empty, true)));
    }

    /// Decodes everything in `input` fed in pieces of `step` bytes.
    fn decode_in_pieces(input: &[u8], step: usize) -> Result<(Vec<u8>, Chunked, usize), ProtoError> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(data) = state.decode(&mut buf)? {
                out.extend_from_slice(&data);
            }
        }
        Ok((out, state, buf.len()))
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_trailers_and_bare_newlines() {
        let input =
            b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\nA\n0123456789\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..input.len() {
            let (out, state, left) = decode_in_pieces(input, step).unwrap();
            assert_eq!(out, b"hello world0123456789", "step {step}");
            assert_eq!(state, Chunked::Done);
            assert_eq!(left, 4, "the next response's bytes stay");
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5 5\r\nhello\r\n",
            b"11111111111111111\r\n",
            b"2\r\nabX\r\n",
            b"2\r\nab\rX",
        ] {
            assert!(
                decode_in_pieces(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = [b"1;".as_slice(), &[b'e'; MAX_CHUNK_LINE]].concat();
        assert_eq!(
            decode_in_pieces(&long_line, 64).unwrap_err(),
            ProtoError::ChunkSize
        );
        let trailers: Vec<u8> = [b"0\r\n".as_slice(), &b"x: y\r\n".repeat(MAX_TRAILERS / 6 + 1)].concat();
        assert_eq!(decode_in_pieces(&trailers, 64).unwrap_err(), ProtoError::Trailers);
    }

    proptest! {
        /// Any body, cut into any chunks and delivered in any pieces, decodes to itself and
        /// leaves what follows the body untouched.
        #[test]
        fn chunked_round_trip(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            sizes in proptest::collection::vec(1usize..300, 1..20),
            step in 1usize..97,
            upper in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                let size = if upper { format!("{n:X}") } else { format!("{n:x}") };
                wire.extend_from_slice(size.as_bytes());
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            wire.extend_from_slice(b"0\r\n\r\nHTTP/1.1");
            let (out, state, left) = decode_in_pieces(&wire, step).unwrap();
            prop_assert_eq!(out, body);
            prop_assert_eq!(state, Chunked::Done);
            prop_assert_eq!(left, 8);
        }
    }
}
