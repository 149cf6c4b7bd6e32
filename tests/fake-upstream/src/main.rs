//! `detour-fake-upstream [--listen 127.0.0.1:0]`: the run-time scripted OpenAI upstream of
//! [`detour_fake_upstream::modes`] (modes, parameters and control paths are described there
//! and in docs/testing.md).
//!
//! Prints `listening on ADDR` on stdout once bound, and exits on SIGTERM or SIGINT.

use detour_fake_upstream::modes::Upstream;
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--listen"
            && let Some(v) = args.next()
        {
            listen = v;
        }
    }
    let listener = TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    let upstream = Upstream::new();
    #[expect(
        clippy::print_stdout,
        reason = "the soak driver reads the bound address from stdout"
    )]
    {
        println!("listening on {addr}");
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {},
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok::<(), std::io::Error>(())
    };
    upstream.serve(listener, shutdown).await
}
