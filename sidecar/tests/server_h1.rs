//! The app-facing HTTP/1.1 server, byte for byte: pipelining, chunked and `Expect: 100-continue`
//! request bodies, HTTP/1.0 clients, `HEAD`, and how malformed or oversized requests are
//! answered — against the running sidecar with an in-process `mock` route.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]

#[expect(dead_code, reason = "shared test support; this file uses part of it")]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{Sidecar, start, start_limited};
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

/// The status lines in `text`, in order.
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
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

/// Over the body limit: 413 in OpenAI's error shape, whether the length is declared (the
/// body is not waited for) or the chunks run past it, and the connection closes.
#[tokio::test]
async fn oversized_bodies_get_413_and_the_connection_closes() {
    let sc = start_limited(ROUTES, 100).await;
    let declared = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n";
    let text = exchange(sc.addr, declared.as_bytes()).await;
    assert_eq!(statuses(&text), ["413"], "{text}");
    assert!(
        text.contains("request_too_large") && text.contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("x-detour-request-id: "), "{text}");

    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n",
        150,
        "x".repeat(150)
    );
    let text = exchange(sc.addr, chunked.as_bytes()).await;
    assert_eq!(statuses(&text), ["413"], "{text}");
    sc.stop().await;
}

/// Requests that cannot be read safely are answered 400 (431 for a head over the limits),
/// naming the problem, and the connection closes.
#[tokio::test]
async fn malformed_requests_are_refused_and_the_connection_closes() {
    let sc = sidecar().await;
    let cases = [
        ("GARBAGE\r\n\r\n".to_owned(), "400", "malformed head"),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n".to_owned(),
            "400",
            "transfer-encoding",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"
                .to_owned(),
            "400",
            "transfer-encoding",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n".to_owned(),
            "400",
            "content-length",
        ),
        (
            format!("GET /v1/models HTTP/1.1\r\nx-big: {}\r\n\r\n", "v".repeat(70_000)),
            "431",
            "head larger than",
        ),
    ];
    for (request, status, says) in cases {
        let text = exchange(sc.addr, request.as_bytes()).await;
        assert_eq!(statuses(&text), [status], "{text}");
        assert!(
            text.contains(says) && text.contains("connection: close"),
            "{text}"
        );
    }
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
