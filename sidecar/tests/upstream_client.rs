//! The upstream client against scripted upstreams on loopback (plain and TLS, HTTP/1.1 and
//! HTTP/2 by ALPN) and a loopback HTTP proxy: reuse, what closes a connection, what is never
//! reused, errors, the private-CA option, and egress through `CONNECT` or absolute-form.
#![expect(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "test code: a failed unwrap is a failed test; the upstream's tasks end with the test's runtime"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use detour_sidecar::providers::client::{
    ConnectKind, HttpClient, IDLE_TIMEOUT, MAX_IDLE_PER_ORIGIN, Proxies,
};
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
    /// Answers and keeps the connection until [`Upstream::close`] is notified, then closes it
    /// without saying so and notifies [`Upstream::has_closed`].
    CloseWhenTold,
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
    close: Arc<tokio::sync::Notify>,
    has_closed: Arc<tokio::sync::Notify>,
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
            close: Arc::default(),
            has_closed: Arc::default(),
        };
        let (accepted, requests, heads) = (up.accepted.clone(), up.requests.clone(), up.heads.clone());
        let (close, has_closed) = (up.close.clone(), up.has_closed.clone());
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (requests, heads, script, tls) =
                    (requests.clone(), heads.clone(), script.clone(), tls.clone());
                let (close, has_closed) = (close.clone(), has_closed.clone());
                tokio::spawn(async move {
                    let notes = (&*close, &*has_closed);
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, &script, &requests, &heads, notes).await;
                            }
                        }
                        None => serve(tcp, &script, &requests, &heads, notes).await,
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
    (close, has_closed): (&tokio::sync::Notify, &tokio::sync::Notify),
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
            Then::KeepAlive | Then::CloseSilently | Then::CloseWhenTold => answer(""),
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
            Then::CloseWhenTold => {
                close.notified().await;
                drop(s);
                has_closed.notify_one();
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

/// A client that ignores the environment's proxy settings.
fn direct(ca: Option<&std::path::Path>) -> HttpClient {
    HttpClient::build(ca, MAX_IDLE_PER_ORIGIN, Proxies::builder().build()).unwrap()
}

/// Sequential requests go out on one connection, in origin form with the `Host` of the URL.
#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let up = Upstream::start(vec![], None).await;
    let client = direct(None);
    let url = up.url("http", "127.0.0.1");
    for _ in 0..5 {
        assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    }
    assert_eq!((up.accepted(), up.requests()), (1, 5));
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
    let client = direct(None);
    let url = up.url("http", "127.0.0.1");
    let batch = || futures_util::future::join_all((0..8).map(|_| call(&client, &url)));
    assert!(batch().await.iter().all(|r| r.is_ok()));
    let opened = up.accepted();
    assert!((1..=8).contains(&opened), "{opened}");
    assert!(batch().await.iter().all(|r| r.is_ok()));
    assert_eq!(
        up.accepted(),
        opened,
        "the second batch reused the idle connections"
    );
    assert_eq!(up.requests(), 16);
}

/// A response body dropped before its end closes that connection: the next request opens a
/// new one and gets a whole answer.
#[tokio::test]
async fn a_body_dropped_before_its_end_is_not_reused() {
    let up = Upstream::start(vec![Then::HalfBody], None).await;
    let client = direct(None);
    let url = up.url("http", "127.0.0.1");
    let resp = client.request(post(&url)).await.unwrap();
    drop(resp);
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 2);
}

/// An idle connection the upstream closed without notice is skipped, not failed on.
#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_skipped() {
    let up = Upstream::start(vec![Then::CloseSilently], None).await;
    let client = direct(None);
    let url = up.url("http", "127.0.0.1");
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!((up.accepted(), up.requests()), (2, 2));
}

/// The upstream closes an idle connection just as the next request is handed to it: hyper
/// gives the request back unsent, and it goes once more, on a new connection, instead of
/// failing.
#[tokio::test]
async fn a_request_on_an_idle_connection_closed_under_it_goes_again_on_a_new_one() {
    let up = Upstream::start(vec![Then::CloseWhenTold], None).await;
    let client = direct(None);
    let url = up.url("http", "127.0.0.1");
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    up.close.notify_one();
    up.has_closed.notified().await;
    // The pooled connection still looks ready: the client has not read the close yet.
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!((up.accepted(), up.requests()), (2, 2));
}

/// Requests to different paths of one origin, through destinations resolved once, share its
/// idle connection.
#[tokio::test]
async fn destinations_on_one_origin_share_its_connections() {
    let up = Upstream::start(vec![], None).await;
    let client = direct(None);
    let port = up.addr.port();
    let chat = client
        .dest(
            &format!("http://127.0.0.1:{port}/v1/chat/completions")
                .parse()
                .unwrap(),
        )
        .unwrap();
    let embed = client
        .dest(&format!("http://127.0.0.1:{port}/v1/embeddings").parse().unwrap())
        .unwrap();
    for dest in [&chat, &embed, &chat, &embed] {
        let mut req = post("/");
        *req.uri_mut() = dest.path().clone();
        let resp = dest.send(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, ANSWER);
    }
    assert_eq!((up.accepted(), up.requests()), (1, 4));
    let heads = up.heads.lock().unwrap().clone();
    assert!(
        heads[1].starts_with("post /v1/embeddings http/1.1\r\n"),
        "{}",
        heads[1]
    );
}

/// An idle connection is closed by the client once it has been idle for the idle timeout,
/// with no request to notice it. (The upstream here waits for the close without a clock of
/// its own.)
#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/v1/chat/completions",
        listener.local_addr().unwrap().port()
    );
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // The head and the 13-byte body of `post`.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") || !buf.ends_with(br#"{"model":"m"}"#) {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before its request");
            buf.extend_from_slice(&chunk[..n]);
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
            ANSWER.len()
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    let client = direct(None);
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(closed.try_recv().is_err(), "kept after its answer");
    tokio::time::pause();
    tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
    tokio::time::resume();
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the idle connection was closed")
        .unwrap();
}

/// `connection: close` from the upstream keeps the connection out of the pool.
#[tokio::test]
async fn connection_close_is_honoured() {
    let up = Upstream::start(vec![Then::AnnounceClose], None).await;
    let client = direct(None);
    let url = up.url("http", "127.0.0.1");
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 2);
}

/// A connection idle for longer than the idle timeout is not used again.
#[tokio::test]
async fn idle_connections_expire() {
    let up = Upstream::start(vec![], None).await;
    let client = direct(None);
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
    let client = direct(None);
    let err = client
        .request(post(&format!("http://127.0.0.1:{port}/v1/chat/completions")))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert_eq!(err.connect_kind(), Some(ConnectKind::Refused), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{port} refused the connection")),
        "{err}"
    );
}

/// A name that does not resolve is told apart from a refused connection, naming the host.
#[tokio::test]
async fn unresolvable_name_is_a_dns_connect_error() {
    let client = direct(None);
    let err = client
        .request(post("http://nothing-here.invalid/v1/chat/completions"))
        .await
        .unwrap_err();
    assert_eq!(err.connect_kind(), Some(ConnectKind::Dns), "{err}");
    assert!(
        err.to_string().contains("cannot resolve nothing-here.invalid:80"),
        "{err}"
    );
}

/// A link-local address (the metadata service) is refused by the destination rules before
/// any byte is sent, and the error says so.
#[tokio::test]
async fn link_local_is_refused_by_the_destination_rules() {
    let client = direct(None);
    let err = client
        .request(post("http://169.254.169.254/latest/meta-data/"))
        .await
        .unwrap_err();
    assert_eq!(err.connect_kind(), Some(ConnectKind::DestinationRule), "{err}");
}

/// A CA and a `localhost` server certificate it signed; returns the CA's PEM and the
/// server's acceptor.
fn private_ca() -> (String, tokio_rustls::TlsAcceptor) {
    private_ca_with_alpn(&[])
}

/// [`private_ca`], the server offering `alpn`.
fn private_ca_with_alpn(alpn: &[&[u8]]) -> (String, tokio_rustls::TlsAcceptor) {
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
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
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

    let trusting = direct(Some(&ca_file));
    for _ in 0..3 {
        assert_eq!(call(&trusting, &url).await.unwrap(), ANSWER);
    }
    assert_eq!((up.accepted(), up.requests()), (1, 3));

    let default = direct(None);
    let err = default.request(post(&url)).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert_eq!(err.connect_kind(), Some(ConnectKind::Tls), "{err}");
    assert!(err.to_string().contains("TLS handshake with localhost:"), "{err}");
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
    let client = direct(None);
    let url = up.url("http", "127.0.0.1");
    assert_eq!(
        exchange(&client, &url).await.unwrap(),
        (200, Bytes::from("hello world"))
    );
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
    let client = direct(None);
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
    let client = direct(None);
    let url = up.url("http", "127.0.0.1");
    assert_eq!(exchange(&client, &url).await.unwrap(), (200, Bytes::from(ANSWER)));
    assert_eq!(exchange(&client, &url).await.unwrap(), (200, Bytes::from("ok")));
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    assert_eq!(up.accepted(), 3);
}

/// A 204 has no body, whatever follows it, and keeps the connection.
#[tokio::test]
async fn a_204_has_no_body() {
    let up = Upstream::start(vec![Then::Raw(&["HTTP/1.1 204 No Content\r\n\r\n"], false)], None).await;
    let client = direct(None);
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
    let client = direct(None);
    let url = up.url("http", "127.0.0.1");
    // Cut short: an error of the body, never a short answer.
    assert!(exchange(&client, &url).await.is_err());
    assert!(exchange(&client, &url).await.is_err());
    assert!(exchange(&client, &url).await.is_err());
    for _ in 0..2 {
        let err = client.request(post(&url)).await.unwrap_err();
        assert!(err.is_protocol(), "{err}");
    }
    let err = client.request(post(&url)).await.unwrap_err();
    assert!(!err.is_connect(), "the request was sent: {err}");
    assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
}

/// Credentials written into an endpoint URL never reach the `Host` header or a message.
#[tokio::test]
async fn userinfo_in_a_url_stays_out_of_the_host_header() {
    let up = Upstream::start(vec![], None).await;
    let client = direct(None);
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

/// A loopback HTTP proxy: answers `CONNECT host:port` with 200 and then relays bytes both
/// ways to that address (on loopback). Records each request head it reads.
struct Proxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            heads: Arc::default(),
        };
        let heads = proxy.heads.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let heads = heads.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        if !read_more(&mut tcp, &mut buf).await {
                            return;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    heads.lock().unwrap().push(head.clone());
                    let Some(target) = head.strip_prefix("CONNECT ").and_then(|r| r.split(' ').next()) else {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    };
                    let port = target.rsplit_once(':').unwrap().1;
                    let Ok(mut up) = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await else {
                        let _ = tcp.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
                });
            }
        });
        proxy
    }

    fn url(&self, userinfo: &str) -> String {
        format!("http://{userinfo}127.0.0.1:{}", self.addr.port())
    }
}

/// HTTPS through an HTTP proxy: a `CONNECT` tunnel to the upstream's name and port with the
/// proxy URL's credentials in `Proxy-Authorization`; TLS (and the certificate check) still
/// ends at the upstream, and the tunnelled connection is reused.
#[tokio::test]
async fn https_goes_through_a_connect_tunnel() {
    let (ca_pem, acceptor) = private_ca();
    let up = Upstream::start(vec![], Some(acceptor)).await;
    let proxy = Proxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let proxies = Proxies::builder().https(proxy.url("user:pw@")).build();
    let client = HttpClient::build(Some(&ca_file), 8, proxies).unwrap();
    let url = up.url("https", "localhost");
    for _ in 0..3 {
        assert_eq!(call(&client, &url).await.unwrap(), ANSWER);
    }
    let heads = proxy.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "one tunnel, reused: {heads:?}");
    let connect = heads[0].to_ascii_lowercase();
    assert!(
        connect.starts_with(&format!("connect localhost:{} http/1.1\r\n", up.addr.port())),
        "{connect}"
    );
    // base64("user:pw")
    assert!(
        connect.contains("proxy-authorization: basic dxnlcjpwdw=="),
        "{connect}"
    );
    assert_eq!(up.requests(), 3);
}

/// Plain HTTP through an HTTP proxy: absolute-form requests to the proxy, with its
/// credentials; `NO_PROXY` hosts go direct; a proxy that is down is a connect error.
#[tokio::test]
async fn http_goes_to_the_proxy_in_absolute_form_unless_no_proxy() {
    // The scripted upstream plays the proxy: it answers whatever it is asked.
    let fake_proxy = Upstream::start(vec![], None).await;
    let proxies = Proxies::builder()
        .http(format!("http://u:p@127.0.0.1:{}", fake_proxy.addr.port()))
        .no("direct.test, 127.0.0.2")
        .build();
    let client = HttpClient::build(None, 8, proxies).unwrap();
    assert_eq!(
        call(&client, "http://api.example.test:8080/v1/chat/completions")
            .await
            .unwrap(),
        ANSWER
    );
    let head = fake_proxy.heads.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("post http://api.example.test:8080/v1/chat/completions http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("proxy-authorization: basic dtpw"), "{head}");

    let up = Upstream::start(vec![], None).await;
    let bypassed = format!("http://127.0.0.2:{}/v1/chat/completions", up.addr.port());
    // 127.0.0.2 is loopback on Linux; the upstream listens on 127.0.0.1 only, so reaching it
    // is not the point: not going to the proxy is.
    let _ = exchange(&client, &bypassed).await;
    assert_eq!(fake_proxy.requests(), 1, "NO_PROXY host went to the proxy");

    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = HttpClient::build(
        None,
        8,
        Proxies::builder()
            .http(format!("http://127.0.0.1:{down}"))
            .build(),
    )
    .unwrap();
    let err = client
        .request(post("http://api.example.test/v1/chat/completions"))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}

/// An HTTPS upstream on 127.0.0.1 that offers only HTTP/2 by ALPN and answers each request
/// with `answer`: its address, the connections it accepted, and a client trusting its CA (the
/// directory holding the CA file goes with it).
async fn h2_upstream<F, Fut>(answer: F) -> (SocketAddr, Arc<AtomicUsize>, HttpClient, tempfile::TempDir)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Bytes> + Send + 'static,
{
    use hyper::server::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (ca_pem, acceptor) = private_ca_with_alpn(&[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let answer = answer(req);
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            answer.await,
                        )))
                    }
                });
                let _ = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let client = direct(Some(&ca_file));
    (addr, accepted, client, dir)
}

/// An HTTPS upstream that offers HTTP/2 by ALPN gets it: once the first answer has shown
/// it, concurrent requests share its one connection.
#[tokio::test]
async fn http2_is_used_when_the_upstream_offers_it() {
    let (addr, accepted, client, _dir) = h2_upstream(|req: Request<hyper::body::Incoming>| {
        let v = format!("{:?}", req.version());
        async move { Bytes::from(v) }
    })
    .await;
    let url = format!("https://localhost:{}/v1/chat/completions", addr.port());
    assert_eq!(
        exchange(&client, &url).await.unwrap(),
        (200, Bytes::from("HTTP/2.0"))
    );
    let answers = futures_util::future::join_all((0..4).map(|_| exchange(&client, &url))).await;
    for a in answers {
        assert_eq!(a.unwrap(), (200, Bytes::from("HTTP/2.0")));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one HTTP/2 connection carries them all"
    );
}

/// Requests in flight together to an HTTP/2 upstream are streams of its one connection: the
/// upstream answers none of them until all four have arrived on it.
#[tokio::test]
async fn http2_carries_requests_in_flight_together_on_one_connection() {
    // The first request alone, then four that wait for each other.
    let together = Arc::new(tokio::sync::Barrier::new(4));
    let seen = Arc::new(AtomicUsize::new(0));
    let (addr, accepted, client, _dir) = h2_upstream(move |_: Request<hyper::body::Incoming>| {
        let (together, seen) = (together.clone(), seen.clone());
        async move {
            if seen.fetch_add(1, Ordering::SeqCst) > 0 {
                together.wait().await;
            }
            Bytes::from_static(b"together")
        }
    })
    .await;
    let url = format!("https://localhost:{}/v1/chat/completions", addr.port());
    assert_eq!(
        exchange(&client, &url).await.unwrap(),
        (200, Bytes::from("together"))
    );
    let answers = futures_util::future::join_all((0..4).map(|_| exchange(&client, &url))).await;
    for a in answers {
        assert_eq!(a.unwrap(), (200, Bytes::from("together")));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// The sidecar binary reads the proxy from the environment as curl does, lower-case names
/// included: with only `http_proxy` set, a plain-HTTP target's request goes to the proxy in
/// absolute form.
#[tokio::test]
async fn the_binary_takes_its_proxy_from_lower_case_environment_variables() {
    let fake_proxy = Upstream::start(vec![], None).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "apiVersion: detour.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: m}\nspec:\n  model: m\n  targets:\n    - {name: t, provider: openai-compatible, model: up, endpoint: \"http://llm.models.svc:8080/v1\"}\n",
    )
    .unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, admin) = (free(), free());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_detour-sidecar"));
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "REQUEST_METHOD",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .env(
            "http_proxy",
            format!("http://127.0.0.1:{}", fake_proxy.addr.port()),
        )
        .args(["--routes", routes.to_str().unwrap()])
        // Plain http only to an in-cluster Service name, and only one the platform allows.
        .args(["--allowed-hosts", "llm.models.svc"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut sent = false;
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent, "the sidecar did not start");
    let heads = fake_proxy.heads.lock().unwrap().clone();
    assert!(
        heads.first().is_some_and(
            |h| h.starts_with("post http://llm.models.svc:8080/v1/chat/completions http/1.1\r\n")
        ),
        "{heads:?}"
    );
    child.kill().await.unwrap();
}
