//! `chatd-sim`: run the chatd simulator.

use std::net::SocketAddr;
use std::process::ExitCode;

use chatd_sim::{ChatdSim, Config};
use clap::Parser;
use error_report::Report;

#[derive(Parser)]
#[command(name = "chatd-sim", version, about = "WhatsApp chatd and enlistment API simulator for interop testing")]
struct Cli {
    /// TOML configuration (see config/chatd-sim.toml); without it, loopback defaults on ephemeral ports.
    #[arg(long)]
    config: Option<String>,
    /// Override `chat.listen`.
    #[arg(long)]
    chat_listen: Option<SocketAddr>,
    /// Override `chat.ws_listen`.
    #[arg(long)]
    ws_listen: Option<SocketAddr>,
    /// Override `http.listen`.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("chatd-sim: {}", Report(&e));
                return ExitCode::FAILURE;
            }
        },
        None => Config::local(),
    };
    if let Some(a) = cli.chat_listen {
        config.chat.listen = a;
    }
    if let Some(a) = cli.ws_listen {
        config.chat.ws_listen = Some(a);
    }
    if let Some(a) = cli.http_listen {
        config.http.listen = a;
    }
    let running = match ChatdSim::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatd-sim: {}", Report(&e));
            return ExitCode::FAILURE;
        }
    };
    // One line per fact, so scripts and tests can read them.
    println!("chat_addr={}", running.chat_addr);
    if let Some(ws) = running.ws_addr {
        println!("ws_url=ws://{ws}/ws/chat");
    }
    println!("http_url={}", running.http_url());
    println!("root_public_key={}", hex::encode(running.root_public_key()));
    // SIGTERM or Ctrl-C stop; SIGHUP re-reads the HTTPS certificate and key.
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
        eprintln!("chatd-sim: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match running.reload_tls() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %Report(&e), "TLS reload failed; keeping the old certificate"),
            },
        }
    }
    running.shutdown().await;
    ExitCode::SUCCESS
}
