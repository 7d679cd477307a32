//! `switchyard-server`: parses flags, installs logging, binds, and runs the coordinator.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use switchyard_server::ServerArgs;
use switchyard_telemetry::logging;

/// jemalloc, not glibc's malloc: with glibc a tenth of the coordinator's time serving
/// `Submit`s went to merging freed blocks back (`malloc_consolidate`) between the buffers
/// each HTTP/2 request allocates (issue 12).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServerArgs::parse();
    let log_format = args.log_format;
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            logging::exit_error(log_format, &err);
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServerArgs) -> anyhow::Result<()> {
    logging::init(
        args.log_format,
        logging::Filter::try_new(&args.log).context("--log")?,
    )?;
    // OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set; flushed when `run` returns.
    let _traces = switchyard_telemetry::init_from_env("switchyard-coordinator");
    // Failpoints from FAILPOINTS, in a build made for tests (elsewhere there are none).
    let _failpoints = fail::FailScenario::setup();

    // A bad tokens file stops the start before anything is bound.
    if let Some(path) = &args.tokens {
        switchyard_server::auth::Tokens::load(path).map_err(anyhow::Error::msg)?;
    }
    if let Some(tls) = &args.config().tls {
        switchyard_server::tls_config(tls)?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // `SWITCHYARD_METRICS` was the flag's environment name before it became --http; it still
    // works where `--http` and `SWITCHYARD_HTTP` are both unset.
    let http = match (args.metrics, std::env::var("SWITCHYARD_METRICS")) {
        (Some(at), _) => Some(at),
        (None, Ok(text)) => Some(
            text.parse::<std::net::SocketAddr>()
                .with_context(|| format!("SWITCHYARD_METRICS={text:?} is not an address"))?,
        ),
        (None, Err(_)) => None,
    };
    let metrics = match http {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("binding --http {at}"))?,
        ),
        None => None,
    };
    // The only lines on stdout: scripts and tests read the chosen addresses from them. Both
    // listeners are bound first, so a second line never follows a failed start.
    println!("switchyard-server listening on {addr}");
    if let Some(metrics) = &metrics {
        println!("switchyard-server metrics on {}", metrics.local_addr()?);
    }
    tracing::info!(%addr, db = %args.db, sync = ?args.sync, "coordinator starting");

    // SIGINT and SIGTERM both start a drain.
    let shutdown = switchyard_telemetry::shutdown::on_signals();
    let result =
        switchyard_server::run_with(listener, metrics, args.config(), shutdown.clone()).await;
    // Also ends the signal task when the coordinator stopped for another reason.
    shutdown.cancel();
    result.context("coordinator failed")?;
    tracing::info!("coordinator stopped");
    Ok(())
}
