//! The upstream client's connection handling against a scripted HTTP/1.1 upstream on
//! loopback (plain and TLS): reuse, what closes a connection, what is never reused, and the
//! private-CA option.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a failed unwrap is a failed test; the upstream's tasks end with the test's runtime"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use detour_sidecar::providers::client::{HttpClient, IDLE_TIMEOUT, SHED_AFTER};
use http::{Method, Request};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the upstream does after reading a request.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Answers and keeps the connection.
    KeepAlive,
    /// Answers and closes the connection without saying so.
    CloseSilently,
    /// Answers with `connection: close` and closes.
    AnnounceClose,
    /// Sends the head and half the body, then waits for the client to go away.
    HalfBody,
    /// Sends these pieces of a response as written, each flushed on its own a moment after
    /// the last, then keeps the connection (`false`) or closes it (`true`).
    Raw(&'static [&'static str], bool),
}

const ANSWER: &str = r#"{"ok":true}"#;

struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    /// Request `i` (counted over all connections) is answered per `script[i]`, later ones
    /// with keep-alive. With `tls`, connections are TLS with that server config.
    async fn start(script: Vec<Then>, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Self {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            requests: Arc::default(),
            heads: Arc::default(),
        };
        let (accepted, requests, heads) = (up.accepted.clone(), up.requests.clone(), up.heads.clone());
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (requests, heads, script, tls) =
                    (requests.clone(), heads.clone(), script.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, &script, &requests, &heads).await;
                            }
                        }
                        None => serve(tcp, &script, &requests, &heads).await,
                    }
                });
            }
        });
        up
    }

    fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}/v1/chat/completions", self.addr.port())
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A minimal HTTP/1.1 server loop: reads each request (head and `content-length` body) and
/// answers per the script.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    script: &[Then],
    requests: &AtomicUsize,
    heads: &Mutex<Vec<String>>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        }
        buf.drain(..head_end + len);
        heads.lock().unwrap().push(head);
        let n = requests.fetch_add(1, Ordering::SeqCst);
        let then = script.get(n).copied().unwrap_or(Then::KeepAlive);
        let answer = |extra: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{ANSWER}",
                ANSWER.len()
            )
        };
        if let Then::Raw(pieces, close) = then {
            for piece in pieces {
                if s.write_all(piece.as_bytes()).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if close {
                let _ = s.shutdown().await;
                return;
            }
            continue;
        }
        let out = match then {
            Then::Raw(..) => unreachable!("answered above"),
            Then::KeepAlive | Then::CloseSilently => answer(""),
            Then::AnnounceClose => answer("connection: close\r\n"),
            Then::HalfBody => format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
                ANSWER.len(),
                &ANSWER[..5]
            ),
        };
        if s.write_all(out.as_bytes()).await.is_err() || s.flush().await.is_err() {
            return;
        }
        match then {
            Then::KeepAlive | Then::Raw(..) => {}
            Then::CloseSilently | Then::AnnounceClose => {
                let _ = s.shutdown().await;
                return;
            }
            Then::HalfBody => {
                // Until the client closes its side.
                while read_more(&mut s, &mut buf).await {}
                return;
            }
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

fn post(url: &str) -> Request<Bytes> {
    Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", "application/json")
        .body(Bytes::from_static(br#"{"model":"m"}"#))
        .unwrap()
}

/// One request, its body read to the end.
async fn call(client: &HttpClient, url: &str) -> Result<Bytes, String> {
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(post(url)))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(body.to_bytes())
}

/// One request: its status and whole body, or the error (of the head or of the body).
async fn exchange(client: &HttpClient, url: &str) -> Result<(u16, Bytes), String> {
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(post(url)))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

/// Sequential requests go out on one connection, in origin form with the `Host` of the URL.
#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let up = Upstream::start(vec![], None).await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    for _ in 0..5 {
        assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    }
    assert_eq!((up.accepted(), up.requests()), (1, 5));
    assert_eq!(client.idle_connections(), 1);
    let heads = up.heads.lock().unwrap().clone();
    let first = heads.first().unwrap();
    assert!(
        first.starts_with("post /v1/chat/completions http/1.1\r\n"),
        "{first}"
    );
    assert!(
        first.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", up.addr.port())),
        "{first}"
    );
}

/// Concurrent requests each get a connection; all of them are kept and serve the next
/// concurrent batch without a new connect.
#[tokio::test]
async fn concurrent_requests_keep_their_connections_for_the_next_batch() {
    let up = Upstream::start(vec![], None).await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    let batch = || futures_util::future::join_all((0..8).map(|_| call(&client, &url)));
    assert!(batch().await.iter().all(|r| r.is_ok()));
    let opened = up.accepted();
    assert!((1..=8).contains(&opened), "{opened}");
    assert_eq!(client.idle_connections(), opened);
    assert!(batch().await.iter().all(|r| r.is_ok()));
    assert_eq!(
        up.accepted(),
        opened,
        "the second batch reused the idle connections"
    );
    assert_eq!(up.requests(), 16);
}

/// A burst keeps its connections while it lasts; once they have been idle for a few seconds,
/// only the configured number stays.
#[tokio::test]
async fn idle_connections_beyond_the_number_are_shed_after_a_burst() {
    let up = Upstream::start(vec![], None).await;
    let client = HttpClient::with_max_idle(None, 2).unwrap();
    let url = up.url("http", "127.0.0.1");
    let results = futures_util::future::join_all((0..5).map(|_| call(&client, &url))).await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(up.accepted(), 5);
    assert_eq!(client.idle_connections(), 5, "kept while the burst may go on");
    tokio::time::pause();
    tokio::time::advance(SHED_AFTER + Duration::from_secs(1)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::resume();
    eventually("the excess is closed", || client.idle_connections() == 2).await;
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 5, "the kept ones are reused");
}

/// A response body dropped before its end closes that connection: the next request opens a
/// new one and gets a whole answer.
#[tokio::test]
async fn a_body_dropped_before_its_end_is_not_reused() {
    let up = Upstream::start(vec![Then::HalfBody], None).await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    let resp = client.request(post(&url)).await.unwrap();
    drop(resp);
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 2);
}

/// An idle connection the upstream closed without notice is skipped, not failed on.
#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_skipped() {
    let up = Upstream::start(vec![Then::CloseSilently], None).await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    eventually("the pooled connection sees the close", || {
        client.idle_connections() == 0
    })
    .await;
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!((up.accepted(), up.requests()), (2, 2));
}

/// `connection: close` from the upstream keeps the connection out of the pool.
#[tokio::test]
async fn connection_close_is_honoured() {
    let up = Upstream::start(vec![Then::AnnounceClose], None).await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 2);
}

/// A connection idle for longer than the idle timeout is not used again.
#[tokio::test]
async fn idle_connections_expire() {
    let up = Upstream::start(vec![], None).await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    tokio::time::pause();
    tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
    tokio::time::resume();
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 2);
}

/// Nothing listening: a connect error, which the proxy classifies as such.
#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = HttpClient::new(None).unwrap();
    let err = client
        .request(post(&format!("http://127.0.0.1:{port}/v1/chat/completions")))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}

/// A CA and a `localhost` server certificate it signed; returns the CA's PEM and the
/// server's acceptor.
fn private_ca() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
    (ca_cert.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// An HTTPS upstream behind a private CA: trusted with `--upstream-ca-file`, its
/// connection reused like a plain one; refused (a connect error) without it.
#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let (ca_pem, acceptor) = private_ca();
    let up = Upstream::start(vec![], Some(acceptor)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let url = up.url("https", "localhost");

    let trusting = HttpClient::new(Some(&ca_file)).unwrap();
    for _ in 0..3 {
        assert_eq!(call(&trusting, &url).await.unwrap(), ANSWER);
    }
    assert_eq!((up.accepted(), up.requests()), (1, 3));

    let default = HttpClient::new(None).unwrap();
    let err = default.request(post(&url)).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert_eq!(up.requests(), 3, "nothing was sent over the untrusted connection");
}

/// A CA file that cannot be used stops the client from being built, naming the file and why.
#[test]
fn unusable_ca_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = HttpClient::new(Some(&missing)).unwrap_err().to_string();
    assert!(err.contains("missing.pem"), "{err}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let err = HttpClient::new(Some(&empty)).unwrap_err().to_string();
    assert!(
        err.contains("empty.pem") && err.contains("no CERTIFICATE"),
        "{err}"
    );

    let garbled = dir.path().join("garbled.pem");
    std::fs::write(
        &garbled,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = HttpClient::new(Some(&garbled)).unwrap_err().to_string();
    assert!(err.contains("garbled.pem"), "{err}");
}

/// A chunked answer, cut inside its chunk-size lines and data and with an extension and a
/// trailer, is decoded whole; the connection then serves the next request.
#[tokio::test]
async fn chunked_answers_are_decoded_and_keep_the_connection() {
    let up = Upstream::start(
        vec![Then::Raw(
            &[
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;",
                "x=y\r\nhel",
                "lo\r",
                "\n6\r\n world\r\n0\r\nx-trailer: t\r\n",
                "\r\n",
            ],
            false,
        )],
        None,
    )
    .await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    assert_eq!(
        exchange(&client, &url).await.unwrap(),
        (200, Bytes::from("hello world"))
    );
    assert_eq!(client.idle_connections(), 1);
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 1);
}

/// Interim responses (100, 103) before the answer are skipped.
#[tokio::test]
async fn interim_responses_are_skipped() {
    let up = Upstream::start(
        vec![Then::Raw(
            &[
                "HTTP/1.1 100 Continue\r\n\r\n",
                "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            ],
            false,
        )],
        None,
    )
    .await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    assert_eq!(exchange(&client, &url).await.unwrap(), (201, Bytes::from("ok")));
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 1);
}

/// A body without a length runs to the close, and so do HTTP/1.0 answers: read whole, the
/// connection never reused.
#[tokio::test]
async fn bodies_up_to_the_close_are_read_and_their_connection_not_reused() {
    let up = Upstream::start(
        vec![
            Then::Raw(&["HTTP/1.1 200 OK\r\n\r\n{\"ok\":", "true}"], true),
            Then::Raw(&["HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"], false),
        ],
        None,
    )
    .await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    assert_eq!(exchange(&client, &url).await.unwrap(), (200, Bytes::from(ANSWER)));
    assert_eq!(exchange(&client, &url).await.unwrap(), (200, Bytes::from("ok")));
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 3);
}

/// A 204 has no body, whatever follows it, and keeps the connection.
#[tokio::test]
async fn a_204_has_no_body() {
    let up = Upstream::start(vec![Then::Raw(&["HTTP/1.1 204 No Content\r\n\r\n"], false)], None).await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    assert_eq!(exchange(&client, &url).await.unwrap(), (204, Bytes::new()));
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 1);
}

/// An answer cut short (the connection closes before its length, or inside a chunk) is an
/// error, never a short answer, and what the upstream sends that is not HTTP/1.1 is a
/// protocol error.
#[tokio::test]
async fn truncated_or_malformed_answers_are_errors() {
    let up = Upstream::start(
        vec![
            Then::Raw(&["HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"ok\":"], true),
            Then::Raw(
                &["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc"],
                true,
            ),
            Then::Raw(
                &["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
                false,
            ),
            Then::Raw(
                &["HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nok"],
                false,
            ),
            Then::Raw(&["SSH-2.0-OpenSSH_9.2\r\n\r\n"], false),
            Then::Raw(&["HTTP/1.1 200 OK\r\ncontent-"], true),
        ],
        None,
    )
    .await;
    let client = HttpClient::new(None).unwrap();
    let url = up.url("http", "127.0.0.1");
    let closed = "upstream closed the connection before the end of the response";
    assert_eq!(exchange(&client, &url).await.unwrap_err(), closed);
    assert_eq!(exchange(&client, &url).await.unwrap_err(), closed);
    let err = exchange(&client, &url).await.unwrap_err();
    assert!(err.contains("invalid chunk size line"), "{err}");
    let err = client.request(post(&url)).await.unwrap_err();
    assert!(
        err.is_protocol() && err.to_string().contains("content-length"),
        "{err}"
    );
    let err = client.request(post(&url)).await.unwrap_err();
    assert!(
        err.is_protocol() && err.to_string().contains("malformed head"),
        "{err}"
    );
    assert_eq!(exchange(&client, &url).await.unwrap_err(), closed);
    assert_eq!(client.idle_connections(), 0, "no broken connection is kept");
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
}

/// Credentials written into an endpoint URL never reach the `Host` header or a message.
#[tokio::test]
async fn userinfo_in_a_url_stays_out_of_the_host_header() {
    let up = Upstream::start(vec![], None).await;
    let client = HttpClient::new(None).unwrap();
    let url = format!(
        "http://user:s3cret@127.0.0.1:{}/v1/chat/completions",
        up.addr.port()
    );
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    let head = up.heads.lock().unwrap()[0].clone();
    assert!(
        head.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", up.addr.port())) && !head.contains("s3cret"),
        "{head}"
    );
    let dest = client.dest(&url.parse().unwrap()).unwrap();
    assert!(!dest.to_string().contains("s3cret"), "{dest}");
}
