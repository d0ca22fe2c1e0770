//! `interop-proxy`: the WhatsApp DMA interoperability connection proxy.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use proxy::config::Config;
use proxy::demo::{DemoTargets, run as run_demo};
use proxy::{PreparedReload, prepare_reload};
use tokio::time::Instant;

/// How long a SIGHUP reload may take to read its files before it counts as failed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Clone)]
#[command(name = "interop-proxy", version, about = "WhatsApp DMA interoperability connection proxy")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration (config/proxy.toml documents every key). Without it: the embedded
    /// default (chatd simulator and partner server in-process, loopback listeners).
    #[arg(long, global = true)]
    config: Option<String>,
    /// Override `edge.listen`.
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Override `admin.listen`.
    #[arg(long, global = true)]
    admin_listen: Option<SocketAddr>,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// Serve (the default). SIGTERM, Ctrl-C or `POST /drain` drain and exit; SIGHUP reloads the
    /// TLS certificate and `[limits]`.
    Run,
    /// Validate the configuration as start does (files it names included, no socket bound) and
    /// exit.
    CheckConfig,
    /// Start the embedded default on ephemeral loopback ports, run the demo traffic through the
    /// proxy, print the proxy's metrics and exit.
    Demo,
    /// Write a throwaway local CA (`ca.pem`) and loopback server certificates signed by it
    /// (`NAME.pem`, `NAME.key` for localhost, 127.0.0.1 and ::1) into DIR: for test setups of the
    /// partner server, the simulator and the TLS edge. Production uses its own PKI.
    GenLocalCa {
        /// Output directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Certificates to issue, by file stem.
        #[arg(long = "cert", value_name = "NAME", default_values_t = ["server".to_owned()])]
        certs: Vec<String>,
    },
}

fn gen_local_ca(out: &std::path::Path, certs: &[String]) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let ca = tls_config::LocalCa::generate("interop-proxy local CA").map_err(|e| tls_config::error_chain(&e))?;
    let ca_file = out.join("ca.pem");
    ca.write_cert(&ca_file).map_err(|e| tls_config::error_chain(&e))?;
    println!("ca: {}", ca_file.display());
    for name in certs {
        let (cert, key) =
            ca.issue_loopback().and_then(|c| c.write(out, name)).map_err(|e| tls_config::error_chain(&e))?;
        println!("{name}: {} {}", cert.display(), key.display());
    }
    Ok(())
}

fn load(cli: &Cli) -> Result<Config, String> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::local(),
    };
    if let Some(a) = cli.listen {
        config.edge.listen = Some(a);
    }
    if let Some(a) = cli.admin_listen {
        config.admin.listen = a;
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        // Everything start does short of binding sockets: the file, every component's checks, the
        // token checker, the TLS certificate and key.
        Some(Command::CheckConfig) => {
            load(&cli).and_then(|c| proxy::Plan::new(c).map_err(|e| e.to_string())).map(|p| {
                println!("configuration OK (embedded: {})", p.config.embedded);
            })
        }
        Some(Command::Demo) => demo(&cli).await,
        Some(Command::GenLocalCa { out, certs }) => gen_local_ca(out, certs),
        Some(Command::Run) | None => run(&cli).await,
    };
    proxy::remove_local_pki();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interop-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn banner(proxy: &proxy::RunningProxy) {
    if let Some(a) = proxy.tcp_addr {
        println!("clients connect to   tcp://{a}");
    }
    if let Some(a) = proxy.tls_addr {
        println!("clients connect to   tls://{a}");
    }
    if let Some(a) = proxy.ws_addr {
        println!("clients connect to   ws://{a}");
    }
    println!("metrics at           http://{}/metrics (and /livez, /readyz)", proxy.admin_addr);
    if let Some(e) = &proxy.embedded {
        println!("embedded chatd-sim   chat {} https {}", e.sim.chat_addr, e.sim.http_url());
        println!("embedded partner     {}", e.partner.base_url());
        println!(
            "local CA             {} (HTTPS clients trust it: interop-client --ca-file, curl --cacert)",
            e.ca_file.display()
        );
        if let Some(ws) = e.sim.ws_addr {
            println!("whatsapp web clients ws://{ws}/ws/chat (chatd-sim, WhatsApp-side users)");
        }
    }
}

async fn run(cli: &Cli) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let config = load(cli)?;
    // Handlers first: an early SIGHUP must not kill the process (its default action).
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;
    let proxy = proxy::start(config).await.map_err(|e| e.to_string())?;
    banner(&proxy);
    if let (Some(e), Some(edge_addr)) = (&proxy.embedded, proxy.tcp_addr) {
        let targets = DemoTargets {
            partner_url: e.partner.base_url().to_owned(),
            sim_url: e.sim.http_url(),
            edge_addr,
            ca_file: Some(e.ca_file.clone()),
        };
        if let Err(e) = run_demo(&targets, e.sim.chat_addr, &|| print_metrics(&proxy)).await {
            eprintln!("interop-proxy: {e}");
        }
    }
    // The last line on stdout: whoever reads the banner can stop here.
    println!("serving");
    // A reload's file I/O (the configuration, the certificate and key) runs on a thread of its
    // own, never on this loop: a file that never answers (a FIFO, a hung mount) must not keep
    // SIGTERM waiting. At most one such thread exists; its answer is applied here.
    let reload_running = Arc::new(AtomicBool::new(false));
    let mut pending: Option<(tokio::sync::oneshot::Receiver<Result<PreparedReload, String>>, Instant)> = None;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = proxy.admin.drain_requested.cancelled() => break,
            _ = hup.recv() => {
                if reload_running.swap(true, Ordering::AcqRel) {
                    let _ = proxy.apply_reload(Err("SIGHUP ignored: the previous reload is still reading its files".into()));
                    continue;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (cli, tls, running) = (cli.clone(), proxy.tls_cert.clone(), Arc::clone(&reload_running));
                let spawned = std::thread::Builder::new().name("reload".into()).spawn(move || {
                    let prepared = prepare_reload(load(&cli), tls.as_deref());
                    running.store(false, Ordering::Release);
                    let _ = tx.send(prepared);
                });
                match spawned {
                    Ok(_) => pending = Some((rx, Instant::now() + RELOAD_TIMEOUT)),
                    Err(e) => {
                        reload_running.store(false, Ordering::Release);
                        let _ = proxy.apply_reload(Err(format!("cannot start the reload thread: {e}")));
                    }
                }
            }
            answer = async {
                match pending.as_mut() {
                    Some((rx, deadline)) => tokio::time::timeout_at(*deadline, rx).await,
                    None => std::future::pending().await,
                }
            }, if pending.is_some() => {
                pending = None;
                let prepared = match answer {
                    Ok(Ok(prepared)) => prepared,
                    Ok(Err(_)) => Err("the reload thread ended without an answer".into()),
                    Err(_) => Err(format!(
                        "reading the configuration and certificate took over {RELOAD_TIMEOUT:?} (a FIFO or a hung \
                         mount?); a SIGHUP is ignored until that read returns"
                    )),
                };
                let _ = proxy.apply_reload(prepared);
            }
        }
    }
    // The hard deadline holds even if the runtime is wedged: a plain thread ends the process.
    let deadline = Duration::from_secs(proxy.drain_config.deadline_secs);
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("interop-proxy: drain deadline of {deadline:?} reached; exiting");
        std::process::exit(2);
    });
    eprintln!(
        "interop-proxy: draining {} sessions over {} s (deadline {} s)",
        proxy.context.session.registry.len(),
        proxy.drain_config.window_secs,
        proxy.drain_config.deadline_secs
    );
    tokio::select! {
        clean = proxy.drain() => {
            if !clean {
                eprintln!("interop-proxy: drain deadline reached; remaining sessions cut off");
            }
        }
        // A second SIGTERM or Ctrl-C: stop now.
        _ = async { tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} } } => {
            eprintln!("interop-proxy: second signal; stopping now");
            proxy.context.session.registry.shutdown_now();
        }
    }
    // Let the relays send their FINs, then stop everything.
    let _ = tokio::time::timeout(Duration::from_secs(1), proxy.context.session.registry.wait_idle()).await;
    proxy.shutdown().await;
    Ok(())
}

async fn demo(cli: &Cli) -> Result<(), String> {
    let mut config = load(cli)?;
    if !config.embedded {
        return Err("the demo runs on the embedded default; drop --config or use config/local.toml".into());
    }
    // Ephemeral ports unless overridden, so the demo never collides with a running proxy.
    if cli.listen.is_none() {
        config.edge.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    if cli.admin_listen.is_none() {
        config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    }
    let proxy = proxy::start(config).await.map_err(|e| e.to_string())?;
    banner(&proxy);
    let (Some(e), Some(edge_addr)) = (&proxy.embedded, proxy.tcp_addr) else {
        return Err("no embedded servers".into());
    };
    let targets = DemoTargets {
        partner_url: e.partner.base_url().to_owned(),
        sim_url: e.sim.http_url(),
        edge_addr,
        ca_file: Some(e.ca_file.clone()),
    };
    let outcome = run_demo(&targets, e.sim.chat_addr, &|| print_metrics(&proxy)).await.map_err(|e| e.to_string());
    proxy.shutdown().await;
    outcome
}

/// The proxy's session, login and relay metrics, as a scrape would show them.
fn print_metrics(proxy: &proxy::RunningProxy) {
    let mut text = Vec::new();
    (proxy.admin.before_scrape)();
    let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &proxy.admin.registry.gather(), &mut text);
    for line in String::from_utf8_lossy(&text).lines() {
        let interesting = ["waproxy_logins_total", "waproxy_sessions", "waproxy_relay", "waproxy_upstream"];
        if !line.starts_with('#') && interesting.iter().any(|p| line.starts_with(p)) && !line.contains("_bucket") {
            println!("  {line}");
        }
    }
}
