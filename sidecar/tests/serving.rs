//! The app-facing server, black-box: HTTP/1.1 byte for byte (pipelining, chunked and
//! `Expect: 100-continue` request bodies, HTTP/1.0 clients, `HEAD`, malformed heads, `Host`),
//! and over both HTTP/1.1 and h2c the limits: body size (413 with a lingering close), idle and
//! write timeouts, the connection cap, refusals counted and audited — against the running
//! sidecar with an in-process `mock` route.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed unwrap is a failed test"
)]

#[expect(dead_code, reason = "shared test support; this file uses part of it")]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use detour_sidecar::conn::Limits;
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::{Sidecar, metric, start, start_limited, start_with_conn_limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = r#"apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: m}
spec:
  model: mock/m
  targets:
    - {name: t, provider: mock, model: up, mock: {reply: "one two three"}}
"#;

const CHAT: &str = r#"{"model":"mock/m","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"mock/m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn post(body: &str, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// Writes `request` and reads until the server closes the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_to_close(&mut s).await
}

async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of the status lines in `text`, in order.
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

async fn sidecar() -> Sidecar {
    start(ROUTES).await
}

/// Requests sent back to back on one connection are all answered, in order; the last one's
/// `connection: close` closes it.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let sc = sidecar().await;
    let requests = [
        post(CHAT, ""),
        "GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n".to_owned(),
        post(r#"{"model":"nope"}"#, ""),
        post(CHAT, "connection: close\r\n"),
    ]
    .concat();
    let text = exchange(sc.addr, requests.as_bytes()).await;
    assert_eq!(statuses(&text), ["200", "200", "404", "200"], "{text}");
    assert_eq!(text.matches("one two three").count(), 2, "{text}");
    assert!(text.contains("\"mock/m\""), "{text}");
    assert_eq!(text.matches("connection: close").count(), 1, "{text}");
    sc.stop().await;
}

/// A chunked request body (with an extension and a trailer, cut across writes) is read
/// whole, and the connection serves the next request.
#[tokio::test]
async fn chunked_request_bodies_are_read() {
    let sc = sidecar().await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let (a, b) = CHAT.split_at(20);
    let pieces = [
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_owned(),
        format!("{:x};ext=1\r\n{a}\r\n", a.len()),
        format!("{:x}\r\n{b}", b.len()),
        "\r\n0\r\nx-trailer: t\r\n\r\n".to_owned(),
        post(CHAT, "connection: close\r\n"),
    ];
    for p in pieces {
        s.write_all(p.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let text = read_to_close(&mut s).await;
    assert_eq!(statuses(&text), ["200", "200"], "{text}");
    assert_eq!(text.matches("one two three").count(), 2, "{text}");
    sc.stop().await;
}

/// `Expect: 100-continue` gets its interim answer before the body is sent.
#[tokio::test]
async fn expect_continue_is_answered_before_the_body() {
    let sc = sidecar().await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        CHAT.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(CHAT.as_bytes()).await.unwrap();
    let text = read_to_close(&mut s).await;
    assert_eq!(statuses(&text), ["200"], "{text}");
    sc.stop().await;
}

/// Over HTTP/1.1, a declared length over the limit gets its 413 before the body is read, and
/// the connection then closes; the body can be sent whole meanwhile (the sidecar reads and
/// discards it before closing, so the client reads the 413 instead of a reset).
#[tokio::test]
async fn an_early_413_is_read_by_a_client_still_sending() {
    let sc = start_limited(ROUTES, 1000).await;
    for _ in 0..5 {
        let body = vec![b'x'; 4 * 1024 * 1024];
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        // Write the whole body before reading anything, as Node's clients do.
        let _ = s.write_all(&body).await;
        let text = read_to_close(&mut s).await;
        assert_eq!(statuses(&text), ["413"], "{text}");
        assert!(
            text.contains("request_too_large") && text.contains("x-detour-request-id: "),
            "{text}"
        );
    }
    sc.stop().await;
}

/// Policies and routes for [`each_response_carries_each_detour_header_once`]: a plain route, a
/// scored one, one whose targets all fail, and one that passes a 5xx through.
const EVERY_KIND: &str = r#"apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: scored}
spec:
  strategy: balanced
  scoring: {scorer: v1}
---
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: pass}
spec:
  retry: {attempts: 1, on: ["timeout"]}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: m}
spec:
  model: mock/m
  targets:
    - {name: t, provider: mock, model: up, mock: {reply: "one two three"}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: scored}
spec:
  model: mock/scored
  policyRef: {name: scored}
  targets:
    - {name: big, provider: mock, model: big, quality: frontier, cost: {input: 5, output: 15}}
    - {name: small, provider: mock, model: small, quality: basic, cost: {input: 0.1, output: 0.4}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: down}
spec:
  model: mock/down
  targets:
    - {name: a, provider: mock, model: up, mock: {script: ["5xx"]}}
    - {name: b, provider: mock, model: up, mock: {script: ["5xx"]}}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: pass}
spec:
  model: mock/pass
  policyRef: {name: pass}
  targets:
    - {name: a, provider: mock, model: up, mock: {script: ["5xx"]}}
"#;

/// How many times the response head in `text` carries header `name`.
fn count_header(text: &str, name: &str) -> usize {
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .count()
}

/// Every kind of response — a JSON answer, a stream, a scored answer, an exhausted route's
/// 503, a 5xx passed through, the proxy's own refusals, the Responses translation's, the
/// router's 404 and 405, the model list, and the edge's 413 and `Host` 400 — carries
/// `x-detour-request-id`, `-target`, `-provider` and `-fallback-count` exactly once, and
/// `-route` / `-score` once where they apply, never twice: one writer stamps them.
#[tokio::test]
async fn each_response_carries_each_detour_header_once() {
    let sc = start_limited(EVERY_KIND, 4096).await;
    let close = "connection: close\r\n";
    let chat = |model: &str, stream: bool| {
        let body = format!(
            r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        post(&body, close)
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\n{close}\r\n");
    // (request, status, routed, scored)
    let cases = [
        (chat("mock/m", false), "200", true, false),
        (chat("mock/m", true), "200", true, false),
        (chat("mock/scored", false), "200", true, true),
        (chat("mock/down", false), "503", true, false),
        (chat("mock/pass", false), "500", true, false),
        (chat("nope", false), "404", false, false),
        (post("{not json", close), "400", false, false),
        (
            format!("POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n{close}\r\n[]"),
            "400",
            false,
            false,
        ),
        (get("/v1/models"), "200", false, false),
        (get("/v1/models/nope"), "404", false, false),
        (get("/nowhere"), "404", false, false),
        (get("/v1/chat/completions"), "405", false, false),
        (
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n{close}\r\n"),
            "413",
            false,
            false,
        ),
        (
            format!("GET /v1/models HTTP/1.1\r\n{close}\r\n"),
            "400",
            false,
            false,
        ),
    ];
    for (request, status, routed, scored) in &cases {
        let text = exchange(sc.addr, request.as_bytes()).await;
        let first = request.lines().next().unwrap_or_default();
        assert_eq!(statuses(&text), [*status], "{first}: {text}");
        for name in [
            "x-detour-request-id",
            "x-detour-target",
            "x-detour-provider",
            "x-detour-fallback-count",
        ] {
            assert_eq!(count_header(&text, name), 1, "{name} on {first}: {text}");
        }
        assert_eq!(
            count_header(&text, "x-detour-route"),
            usize::from(*routed),
            "{first}: {text}"
        );
        assert_eq!(
            count_header(&text, "x-detour-score"),
            usize::from(*scored),
            "{first}: {text}"
        );
    }
    sc.stop().await;
}

/// Requests hyper cannot read safely are answered 400 (431 for a head over the limits) and
/// the connection closes; each is counted as refused.
#[tokio::test]
async fn malformed_requests_are_refused_and_the_connection_closes() {
    let sc = sidecar().await;
    let cases = [
        ("GARBAGE\r\n\r\n".to_owned(), "400"),
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n".to_owned(),
            "400",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"
                .to_owned(),
            "400",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"
                .to_owned(),
            "400",
        ),
        (
            format!(
                "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "v".repeat(70_000)
            ),
            "431",
        ),
    ];
    for (request, status) in &cases {
        let text = exchange(sc.addr, request.as_bytes()).await;
        assert_eq!(statuses(&text), [*status], "{request:.80}: {text}");
    }
    let m = sc.metrics().await;
    let refused = metric(&m, r#"detour_refused_requests_total{reason="bad_http_request"}"#)
        + metric(&m, r#"detour_refused_requests_total{reason="head_too_large"}"#)
        + metric(&m, r#"detour_refused_requests_total{reason="incomplete_body"}"#);
    assert_eq!(refused, cases.len() as f64, "{m}");
    sc.stop().await;
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with two, is answered 400 with a
/// request id, counted and audited; HTTP/1.0 needs none.
#[tokio::test]
async fn host_is_required_once() {
    let mut sc = sidecar().await;
    for request in [
        "GET /v1/models HTTP/1.1\r\nconnection: close\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nhost: a b\r\nconnection: close\r\n\r\n",
    ] {
        let text = exchange(sc.addr, request.as_bytes()).await;
        assert_eq!(statuses(&text), ["400"], "{text}");
        assert!(
            text.contains("bad_host") && text.contains("x-detour-request-id: "),
            "{text}"
        );
        let rec = sc.audit.recv().await.unwrap();
        assert_eq!(
            (rec.outcome, rec.status, rec.endpoint),
            ("refused", 400, "models")
        );
    }
    let text = exchange(sc.addr, b"GET /v1/models HTTP/1.0\r\n\r\n").await;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, r#"detour_refused_requests_total{reason="bad_host"}"#),
        3.0,
        "{m}"
    );
    sc.stop().await;
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    H1,
    H2c,
}

const BOTH: [Proto; 2] = [Proto::H1, Proto::H2c];

type Sent = BoxBody<Bytes, Infallible>;

fn client(proto: Proto) -> Client<HttpConnector, Sent> {
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(proto == Proto::H2c);
    b.build_http()
}

/// A body sent in `pieces` frames of `size` bytes, with no declared length.
fn streamed(pieces: usize, size: usize) -> Sent {
    let frames = (0..pieces).map(move |_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; size]))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

fn full(body: impl Into<Bytes>) -> Sent {
    Full::new(body.into()).boxed()
}

struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Result<Bytes, String>,
}

async fn send(proto: Proto, addr: SocketAddr, method: &str, path: &str, body: Sent) -> Got {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client(proto).request(req))
        .await
        .expect("answered in time")
        .unwrap_or_else(|e| panic!("{proto:?}: {e:?}"));
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body in time")
        .map(|c| c.to_bytes())
        .map_err(|e| format!("{e:?}"));
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Over both protocols: a body over the limit — declared or streamed past it — gets 413 in
/// OpenAI's error shape with a request id, an audit line and a count; one within it is served.
#[tokio::test]
async fn oversized_bodies_get_413_over_both_protocols() {
    let mut sc = start_limited(ROUTES, 100).await;
    for proto in BOTH {
        let got = send(
            proto,
            sc.addr,
            "POST",
            "/v1/chat/completions",
            full(vec![b'x'; 1000]),
        )
        .await;
        assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE, "{proto:?}");
        assert!(got.headers.contains_key("x-detour-request-id"), "{proto:?}");
        let text = String::from_utf8_lossy(got.body.as_ref().unwrap()).into_owned();
        assert!(text.contains("request_too_large"), "{proto:?}: {text}");
        let rec = sc.audit.recv().await.unwrap();
        assert_eq!((rec.outcome, rec.status), ("refused", 413), "{proto:?}");

        let got = send(proto, sc.addr, "POST", "/v1/chat/completions", streamed(3, 60)).await;
        assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE, "{proto:?}");

        let got = send(proto, sc.addr, "POST", "/v1/chat/completions", full(CHAT)).await;
        assert_eq!(got.status, StatusCode::OK, "{proto:?}");
    }
    let m = sc.metrics().await;
    assert_eq!(
        metric(&m, r#"detour_refused_requests_total{reason="body_too_large"}"#),
        4.0,
        "{m}"
    );
    sc.stop().await;
}

/// Over both protocols: a stream is delivered whole, `HEAD` gets a head only, and an
/// unknown path is a 404 with a request id.
#[tokio::test]
async fn streams_head_and_errors_over_both_protocols() {
    let sc = sidecar().await;
    for proto in BOTH {
        let got = send(proto, sc.addr, "POST", "/v1/chat/completions", full(STREAM)).await;
        assert_eq!(got.status, StatusCode::OK, "{proto:?}");
        let text = String::from_utf8_lossy(got.body.as_ref().unwrap()).into_owned();
        assert!(text.contains("data: [DONE]"), "{proto:?}: {text}");

        // An error answer has a body, but not to `HEAD`.
        let got = send(proto, sc.addr, "HEAD", "/v1/models", full("")).await;
        assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{proto:?}");
        assert!(got.body.unwrap().is_empty(), "{proto:?}");

        let got = send(proto, sc.addr, "GET", "/nope", full("")).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{proto:?}");
        assert!(got.headers.contains_key("x-detour-request-id"), "{proto:?}");
    }
    sc.stop().await;
}

fn limits(idle_ms: u64, write_ms: u64, max_connections: usize) -> Limits {
    Limits {
        max_connections,
        idle: Duration::from_millis(idle_ms),
        write: Duration::from_millis(write_ms),
        linger: Duration::from_millis(500),
    }
}

/// Whether the server closes `s` within `within` (EOF or reset), reading what it sends.
async fn closes_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.is_ok()
}

/// A connection with no request in flight is closed after the idle timeout, whether it
/// never sent anything, stopped mid-head, sent only an HTTP/2 preface, or is an idle
/// keep-alive connection after an answer.
#[tokio::test]
async fn idle_connections_are_closed_on_one_clock() {
    let sc = start_with_conn_limits(ROUTES, 1 << 20, limits(300, 5_000, 100)).await;
    let openings: [&[u8]; 4] = [
        b"",
        b"GET /v1/mod",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n",
    ];
    for opening in openings {
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        s.write_all(opening).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(
            closes_within(&mut s, Duration::from_secs(5)).await,
            "{:?} stays open",
            String::from_utf8_lossy(opening)
        );
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "closed too early"
        );
    }
    sc.stop().await;
}

/// Whether `got` holds a whole answer: a head with `content-length` and that many bytes after it.
fn whole_answer(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

/// The idle clock starts again at each answer: a keep-alive connection whose requests come
/// closer together than the idle timeout stays open past it, and closes once they stop.
#[tokio::test]
async fn the_idle_clock_restarts_at_each_answer() {
    let sc = start_with_conn_limits(ROUTES, 1 << 20, limits(300, 5_000, 100)).await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..6 {
        s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // The whole answer: its head, then content-length bytes of body.
        let mut got = Vec::new();
        while !whole_answer(&got) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed while requests kept coming, after {:?}",
                started.elapsed()
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(closes_within(&mut s, Duration::from_secs(5)).await, "stays open");
    sc.stop().await;
}

/// A request whose answer takes longer than the idle timeout is not cut by it: the idle
/// clock starts when the answer has been written, and the connection closes idle after that.
#[tokio::test]
async fn a_request_slower_than_the_idle_timeout_is_answered() {
    let routes = ROUTES.replace(
        r#"reply: "one two three""#,
        r#"reply: "one two three", latency: 700ms"#,
    );
    let sc = start_with_conn_limits(&routes, 1 << 20, limits(300, 5_000, 100)).await;
    for stream in [false, true] {
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        let body = if stream { STREAM } else { CHAT };
        s.write_all(post(body, "").as_bytes()).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if whole_answer(&got) || text.contains("[DONE]") {
                    return;
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(answered.is_ok(), "stream {stream}: no answer in 5 s: {text}");
        assert!(text.starts_with("HTTP/1.1 200"), "stream {stream}: {text}");
        assert!(text.contains("three"), "stream {stream}: cut short: {text}");
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "stream {stream}: answered early"
        );
        let ended = tokio::time::Instant::now();
        assert!(
            closes_within(&mut s, Duration::from_secs(5)).await,
            "stream {stream}: stays open"
        );
        assert!(
            ended.elapsed() >= Duration::from_millis(250),
            "stream {stream}: closed before an idle timeout after the answer"
        );
    }
    sc.stop().await;
}

/// A client that sends a request and never reads its (large) answer is disconnected after
/// the write timeout, and its connection no longer counts as open.
#[tokio::test]
async fn a_client_that_never_reads_is_dropped() {
    // 32 MiB in 32 words: the mock answers (and streams) word by word.
    let big = format!("{} ", "x".repeat(1 << 20)).repeat(32);
    let routes = ROUTES.replace("one two three", &big);
    let sc = start_with_conn_limits(&routes, 1 << 20, limits(60_000, 300, 100)).await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(post(CHAT, "").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    support::wait_for("the connection is dropped", async || {
        metric(&sc.metrics().await, "detour_open_connections") <= 1.0
    })
    .await;
    // What arrived is less than the answer: the transfer was cut.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(got.len() < big.len(), "{} bytes arrived", got.len());
    sc.stop().await;
}

/// At the connection cap a new connection is not served until one closes; the admin
/// listener keeps answering meanwhile.
#[tokio::test]
async fn the_connection_cap_holds_new_connections_back() {
    let sc = start_with_conn_limits(ROUTES, 1 << 20, limits(60_000, 5_000, 2)).await;
    let first = TcpStream::connect(sc.addr).await.unwrap();
    let _second = TcpStream::connect(sc.addr).await.unwrap();
    let mut third = TcpStream::connect(sc.addr).await.unwrap();
    third
        .write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    // A cancelled read consumes nothing.
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(early.is_err(), "served over the cap");
    let m = sc.metrics().await;
    assert!(m.contains("detour_open_connections"), "{m}");
    drop(first);
    let text = read_to_close(&mut third).await;
    assert_eq!(statuses(&text), ["200"], "{text}");
    sc.stop().await;
}

/// An HTTP/1.0 client gets its answer and the connection closes; a stream, which has no
/// length, runs to the close instead of being chunked.
#[tokio::test]
async fn http_1_0_clients_are_answered_without_chunking() {
    let sc = sidecar().await;
    let req = |body: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.0\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let text = exchange(sc.addr, req(CHAT).as_bytes()).await;
    assert_eq!(statuses(&text), ["200"], "{text}");
    assert!(text.contains("one two three"), "{text}");

    let text = exchange(sc.addr, req(STREAM).as_bytes()).await;
    assert_eq!(statuses(&text), ["200"], "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
    sc.stop().await;
}

/// An answer to `HEAD` has a head only: the next request on the connection is read right.
#[tokio::test]
async fn head_requests_get_no_body() {
    let sc = sidecar().await;
    let requests = "HEAD /v1/models HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let text = exchange(sc.addr, requests.as_bytes()).await;
    let codes = statuses(&text);
    assert_eq!(codes.len(), 2, "{text}");
    assert_eq!(codes[1], "200", "{text}");
    let first_head_end = text.find("\r\n\r\n").unwrap() + 4;
    assert!(
        text[first_head_end..].starts_with("HTTP/1.1 "),
        "no body after the first head: {text}"
    );
    sc.stop().await;
}

/// Answers every request with a stream that yields one event and then breaks.
#[derive(Clone)]
struct Breaks;

impl tower::Service<Request<hyper::body::Incoming>> for Breaks {
    type Response = detour_sidecar::body::Response;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<hyper::body::Incoming>) -> Self::Future {
        // The break comes a moment after the event, as when an upstream fails mid-stream.
        let first = futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"data: one\n\n")))]);
        let broken = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(detour_sidecar::body::Aborted)
        });
        let frames = futures_util::StreamExt::chain(first, broken);
        std::future::ready(Ok(http::Response::new(BodyExt::boxed_unsync(StreamBody::new(
            frames,
        )))))
    }
}

/// A response body that fails ends the transfer abnormally, over both protocols: over
/// HTTP/1.1 the chunked body has no last chunk and the connection closes, over HTTP/2 the
/// stream is reset; either way the client's read of the body fails after the first event.
#[tokio::test]
async fn a_broken_body_ends_the_transfer_abnormally() {
    use std::sync::Arc;
    let shared = Arc::new(detour_sidecar::proxy::Shared {
        table: arc_swap::ArcSwapOption::empty(),
        metrics: detour_sidecar::metrics::Metrics::new().unwrap(),
        audit: detour_sidecar::audit::Audit::with_tap(false, tokio::sync::mpsc::unbounded_channel().0),
        budget: detour_sidecar::budget::Budget::new(1 << 20),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    let mut conns = tokio::task::JoinSet::new();
    let accepting = async {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let slot = slots.clone().acquire_owned().await.unwrap();
            conns.spawn(detour_sidecar::conn::serve(
                tcp,
                Breaks,
                Limits::default(),
                shared.clone(),
                shutdown.clone(),
                slot,
            ));
        }
    };
    let checks = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/x HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let text = read_to_close(&mut s).await;
        assert!(
            text.contains("transfer-encoding: chunked") && text.contains("data: one"),
            "{text}"
        );
        assert!(!text.ends_with("0\r\n\r\n"), "a last chunk was sent: {text:?}");
        for proto in BOTH {
            let req = Request::get(format!("http://{addr}/v1/x"))
                .body(full(""))
                .unwrap();
            let resp = client(proto).request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{proto:?}");
            let read = resp.into_body().collect().await;
            assert!(read.is_err(), "{proto:?}: the broken body read as whole");
        }
    };
    tokio::select! {
        () = accepting => unreachable!("the accept loop runs until the checks end"),
        () = checks => {}
    }
}
