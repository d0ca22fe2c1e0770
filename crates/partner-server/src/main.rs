//! `partner-server --config FILE [--listen ADDR]`: the reference Partner server as a process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use error_report::Report;
use partner_server::{Config, PartnerServer};

/// The reference Partner-side HTTP server for WhatsApp DMA interop (JWKS, tokens, push, media).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML configuration file (see config/partner-server.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Override `listen` from the file (e.g. 127.0.0.1:0 for a free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("partner-server: {}", Report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let server = PartnerServer::start(config).await?;
    // Machine-readable lines on stdout (logs go to stderr): scripts and tests read the URLs here.
    println!("base_url: {}", server.base_url());
    println!("jwks_url: {}", server.jwks_url());
    // SIGHUP re-reads the TLS certificate and key from the configured files; a failed reload
    // keeps the old pair.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => {
                r?;
                break;
            }
            _ = hup.recv() => match server.reload_tls(None) {
                Ok(()) => tracing::info!(tls = server.is_tls(), "TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %Report(&e), "TLS reload failed; keeping the old certificate"),
            },
        }
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
