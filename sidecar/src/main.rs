//! `detour-sidecar`: parse flags, load the route table, serve until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use detour_sidecar::audit::Audit;
use detour_sidecar::cli::Cli;
use detour_sidecar::config::{self, Source};
use detour_sidecar::conn::Limits;
use detour_sidecar::server::{self, Options};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = EnvFilter::try_from_env("DETOUR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // The AWS SDK's crates log the credentials they load (an access key id) at info and more
    // at debug: they are held at warn whatever DETOUR_LOG says, so no key reaches a log.
    for quiet in [
        "aws_config",
        "aws_runtime",
        "aws_sdk_sts",
        "aws_smithy_runtime",
        "aws_credential_types",
    ] {
        if let Ok(d) = format!("{quiet}=warn").parse() {
            filter = filter.add_directive(d);
        }
    }
    // Human logs on stderr; stdout carries only the audit lines (and the demo's report, while
    // which the log lines are held so they cannot split its table on a terminal).
    let logs = detour_sidecar::demo::LogGate::default();
    let writer = if cli.demo {
        BoxMakeWriter::new(logs.clone())
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match cli.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, logs))
}

async fn run(cli: Cli, logs: detour_sidecar::demo::LogGate) -> ExitCode {
    let source = match &cli.routes {
        Some(p) => Source::Yaml(p.clone()),
        None => Source::Json(cli.config.clone()),
    };
    let mut guard = match detour_api::egress::AllowedHosts::parse_list(&cli.allowed_hosts) {
        Ok(hosts) => detour_sidecar::egress::Guard::new(hosts, &cli.credentials_dir),
        Err(e) => {
            tracing::error!("--allowed-hosts: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !cli.endpoint_overrides.is_empty() {
        if cli.routes.is_none() {
            tracing::error!(
                "--endpoint-override is for the standalone sidecar (--routes FILE.yaml) only; in a cluster, \
                 set the target's endpoint in its ModelRoute"
            );
            return ExitCode::FAILURE;
        }
        for o in &cli.endpoint_overrides {
            match detour_sidecar::egress::EndpointOverride::parse(o) {
                Ok(o) => {
                    tracing::warn!(target = %o.target, url = %o.url, "endpoint overridden (--endpoint-override)");
                    guard.endpoint_overrides.push(o);
                }
                Err(e) => {
                    tracing::error!("--endpoint-override {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let initial = match config::load_with(&source, &guard) {
        Ok(loaded) => Some(loaded),
        // Standalone: the file is the user's; refuse to start on it.
        Err(e) if matches!(source, Source::Yaml(_)) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
        // In a pod the ConfigMap may appear later: serve not-ready until it does.
        Err(e) => {
            tracing::warn!("no route table yet (not ready): {e}");
            None
        }
    };
    let opts = Options {
        listen: cli.listen,
        admin_listen: cli.admin_listen(),
        max_body_bytes: cli.max_body_bytes,
        source,
        reload_interval: Duration::from_millis(cli.reload_interval_ms.max(10)),
        drain_timeout: Duration::from_millis(cli.drain_timeout_ms),
        upstream_ca: cli.upstream_ca,
        upstream_max_idle: cli.upstream_max_idle,
        limits: Limits {
            max_connections: cli.max_connections.max(1),
            idle: Duration::from_millis(cli.idle_timeout_ms.max(1)),
            write: Duration::from_millis(cli.write_timeout_ms.max(1)),
            ..Limits::default()
        },
        max_buffered_bytes: cli.max_buffered_bytes,
        guard,
        fleet_key: cli.fleet_key.filter(|k| !k.is_empty()).map(Into::into),
    };
    let (audit, tap) = if cli.demo {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Audit::with_tap(false, tx), Some(rx))
    } else {
        (Audit::stdout(), None)
    };
    let running = match server::start(opts, audit, initial).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(tap) = tap {
        detour_sidecar::demo::run(&running, tap, &logs).await;
    }
    tokio::select! {
        () = wait_for_signal() => {}
        () = release_heap(&running.shared.metrics) => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    ExitCode::SUCCESS
}

/// Gives freed heap pages back to the system when [`detour_sidecar::heap::HeapWatch`] says
/// so (never returns). On a blocking thread, not the runtime's: one call takes microseconds
/// on a quiet heap, about 1 ms to walk one fragmented by a burst, and about 20 ms to give
/// back a freed 25 MB burst (its `madvise` calls), holding glibc's arena lock meanwhile
/// (requests allocating from their thread's own cache go on).
async fn release_heap(metrics: &detour_sidecar::metrics::Metrics) {
    let open = &metrics.connections;
    metrics
        .heap
        .run(
            || open.get(),
            || async {
                // A failed join only skips this round.
                let _ = tokio::task::spawn_blocking(detour_heap::release).await;
            },
        )
        .await;
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
