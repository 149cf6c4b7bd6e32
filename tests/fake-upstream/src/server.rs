//! The loopback server every fake runs on: one listener, one task per connection, HTTP/1.1
//! by hyper, a count of accepted connections. In a test ([`Loopback`]) the tasks live in a
//! `JoinSet` and a panic in a handler is re-raised in the test by [`Loopback::check`]; in the
//! binary ([`serve`]) they run until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The body of every fake answer; an error ends the transfer abnormally (a scripted break).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// What a fake answers one request with; `Err` drops the connection without an answer.
pub trait Handler: Fn(Request<Incoming>) -> Self::Answer + Clone + Send + Sync + 'static {
    /// The future of one answer.
    type Answer: Future<Output = Result<Response<Body>, std::io::Error>> + Send + 'static;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, std::io::Error>> + Send + 'static,
{
    type Answer = Fut;
}

async fn connection(io: tokio::net::TcpStream, handler: impl Handler) {
    let svc = service_fn(handler);
    // The caller going away mid-answer is a scripted outcome, not a failure of the fake.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// A fake serving on `127.0.0.1:0` inside a test.
#[derive(Debug)]
pub struct Loopback {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl Loopback {
    /// Binds a free loopback port and serves `handler` on it.
    ///
    /// # Panics
    /// When no loopback port can be bound, which fails the test that asked.
    #[expect(clippy::expect_used, reason = "a fake that cannot listen is a failed test")]
    pub async fn start(handler: impl Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((io, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                conns.spawn(connection(io, handler.clone()));
                // A handler's panic ends this task with it, so `check` re-raises it.
                while let Some(r) = conns.try_join_next() {
                    if let Err(e) = r
                        && e.is_panic()
                    {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
        });
        Self {
            addr,
            connections,
            tasks,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Re-raises a panic of the fake's tasks in the calling test.
    pub fn check(&mut self) {
        while let Some(r) = self.tasks.try_join_next() {
            if let Err(e) = r
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.check();
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` resolves (the binary's loop).
///
/// # Errors
/// When accepting fails, or what `shutdown` returns.
pub async fn serve(
    listener: TcpListener,
    handler: impl Handler,
    shutdown: impl Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            r = &mut shutdown => return r,
            accepted = listener.accept() => {
                let (io, _) = accepted?;
                connections.spawn(connection(io, handler.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
