//! `interop-proxy`: the WhatsApp DMA interoperability connection proxy. It serves a configuration
//! file; the one-machine local world (simulator, partner server and demo in-process) is
//! `interop-local`, a binary of its own, so this one links none of them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use error_report::Report;
use proxy::config::Config;
use proxy::process::{ConfigArgs, Signals, print_banner};

/// jemalloc returns the pages a login burst freed within about a second (the decay settings are
/// built in through `.cargo/config.toml`; a background thread purges while sessions sit idle),
/// where glibc keeps them. It also serves C `malloc` (the `unprefixed_malloc_on_supported_platforms`
/// feature), so aws-lc's cipher contexts, which an idle session parks, go back to the system too.
/// Paired `loadtest steady` runs: docs/performance.md, "Allocator" and "The live session as its
/// own task".
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Clone)]
#[command(name = "interop-proxy", version, about = "WhatsApp DMA interoperability connection proxy")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: ConfigArgs,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// Serve (the default). SIGTERM, Ctrl-C or `POST /drain` drain and exit; SIGHUP reloads the
    /// TLS certificate and `[limits]`.
    Run,
    /// Validate the configuration as start does (files it names included, no socket bound) and
    /// exit.
    CheckConfig,
}

/// Reads `--config` with the command-line overrides. Refuses what only the local world runs.
fn load(cli: &Cli) -> Result<Config, String> {
    let Some(path) = &cli.args.config else {
        return Err("no --config FILE (config/proxy.toml documents every key); for the one-machine local world \
                    (chatd simulator, partner server and demo in-process) run interop-local"
            .into());
    };
    let mut config = Config::from_file(path).map_err(|e| Report(&e).to_string())?;
    if config.embedded {
        return Err(format!(
            "{path}: embedded = true is the local world's (chatd simulator and partner server in-process): run \
             interop-local --config {path}"
        ));
    }
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
        // Everything start does short of binding sockets: the file, every component's checks, the
        // token checker, the TLS certificate and key.
        Some(Command::CheckConfig) => load(&cli)
            .and_then(|c| proxy::Plan::new(c).map_err(|e| Report(&e).to_string()))
            .map(|_| println!("configuration OK")),
        Some(Command::Run) | None => run(&cli).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interop-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<(), String> {
    let config = load(cli)?;
    let mut signals = Signals::install()?;
    let proxy = proxy::start(config).await.map_err(|e| Report(&e).to_string())?;
    print_banner(&proxy);
    // The last line on stdout: whoever reads the banner can stop here.
    println!("serving");
    let cli = cli.clone();
    signals.serve_until_drained(&proxy, move || load(&cli)).await;
    proxy.shutdown().await;
    Ok(())
}
