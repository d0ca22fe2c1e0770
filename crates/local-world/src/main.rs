//! `interop-local`: the proxy with the chatd simulator and the partner server in-process (the
//! local world), the demo, and a throwaway local CA for test setups.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use error_report::Report;
use local_world::LocalWorld;
use local_world::demo::{DemoTargets, run as run_demo};
use proxy::config::Config;
use proxy::process::{ConfigArgs, Signals, print_banner};

#[derive(Parser, Clone)]
#[command(
    name = "interop-local",
    version,
    about = "The interop proxy with the chatd simulator and the partner server in-process, and the demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: ConfigArgs,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// Serve (the default): start the local world, run the demo once, keep serving. SIGTERM,
    /// Ctrl-C or `POST /drain` drain and exit; SIGHUP reloads the TLS certificate and `[limits]`.
    Run,
    /// Validate the configuration as start does (files it names included, no socket bound) and
    /// exit.
    CheckConfig,
    /// Start the local world on ephemeral loopback ports, run the demo traffic through the proxy,
    /// print the proxy's metrics and exit.
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
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {}", out.display(), Report(&e)))?;
    let ca = tls_config::LocalCa::generate("interop-proxy local CA").map_err(|e| Report(&e).to_string())?;
    let ca_file = out.join("ca.pem");
    ca.write_cert(&ca_file).map_err(|e| Report(&e).to_string())?;
    println!("ca: {}", ca_file.display());
    for name in certs {
        let (cert, key) = ca.issue_loopback().and_then(|c| c.write(out, name)).map_err(|e| Report(&e).to_string())?;
        println!("{name}: {} {}", cert.display(), key.display());
    }
    Ok(())
}

fn load(cli: &Cli) -> Result<Config, String> {
    let mut config = match &cli.args.config {
        Some(path) => Config::from_file(path).map_err(|e| Report(&e).to_string())?,
        None => Config::local(),
    };
    cli.args.apply(&mut config);
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
        // Everything start does short of binding sockets (the embedded servers are planned with
        // placeholders).
        Some(Command::CheckConfig) => {
            load(&cli).and_then(|c| proxy::Plan::new(c).map_err(|e| Report(&e).to_string())).map(|p| {
                println!("configuration OK (embedded: {})", p.config.embedded);
            })
        }
        Some(Command::Demo) => demo(&cli).await,
        Some(Command::GenLocalCa { out, certs }) => gen_local_ca(out, certs),
        Some(Command::Run) | None => run(&cli).await,
    };
    local_world::remove_local_pki();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interop-local: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The proxy's banner, then where the embedded servers are.
fn banner(world: &LocalWorld) {
    print_banner(world);
    if let Some(e) = &world.embedded {
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

/// The demo's parties in `world`, when it has its embedded servers and a TCP edge.
fn demo_targets(world: &LocalWorld) -> Option<(DemoTargets, SocketAddr)> {
    let (e, edge_addr) = (world.embedded.as_ref()?, world.tcp_addr?);
    let targets = DemoTargets {
        partner_url: e.partner.base_url().to_owned(),
        sim_url: e.sim.http_url(),
        edge_addr,
        ca_file: Some(e.ca_file.clone()),
    };
    Some((targets, e.sim.chat_addr))
}

async fn run(cli: &Cli) -> Result<(), String> {
    let config = load(cli)?;
    let mut signals = Signals::install()?;
    let world = local_world::start(config).await.map_err(|e| Report(&e).to_string())?;
    banner(&world);
    if let Some((targets, chat_addr)) = demo_targets(&world)
        && let Err(e) = run_demo(&targets, chat_addr, &|| print_metrics(&world)).await
    {
        eprintln!("interop-local: {e}");
    }
    // The last line on stdout: whoever reads the banner can stop here.
    println!("serving");
    let cli = cli.clone();
    signals.serve_until_drained(&world, move || load(&cli)).await;
    world.shutdown().await;
    Ok(())
}

async fn demo(cli: &Cli) -> Result<(), String> {
    let mut config = load(cli)?;
    if !config.embedded {
        return Err("the demo runs on the embedded default; drop --config or use config/local.toml".into());
    }
    // Ephemeral ports unless overridden, so the demo never collides with a running proxy.
    if cli.args.listen.is_none() {
        config.edge.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    if cli.args.admin_listen.is_none() {
        config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    }
    let world = local_world::start(config).await.map_err(|e| Report(&e).to_string())?;
    banner(&world);
    let Some((targets, chat_addr)) = demo_targets(&world) else {
        return Err("no embedded servers".into());
    };
    let outcome = run_demo(&targets, chat_addr, &|| print_metrics(&world)).await.map_err(|e| Report(&e).to_string());
    world.shutdown().await;
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
