//! `loadtest`: the bundled load harness. See loadtest/README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use error_report::Report;
use loadtest::env::{Env, External, StartOptions};
use loadtest::error::{Error, Result};
use loadtest::progress::Progress;
use loadtest::scenarios::{self, ChatParams, ChurnParams, Ctx, Outcome, RampParams, SteadyParams, StormParams};
use loadtest::{crypto, procfs, report};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load harness for interop-proxy, with direct, HAProxy and crypto-ceiling baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Results folder (default loadtest/results/<UTC timestamp>).
    #[arg(long, global = true)]
    results: Option<PathBuf>,
    /// Where chatd-sim, partner-server and interop-proxy are (default: next to this binary).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Run the scenario for this long (hold, repeat or cycle): e.g. 90s, 30m, 4h (at most 24h).
    #[arg(long, global = true, value_parser = parse_duration)]
    soak: Option<Duration>,
    /// Skip the HAProxy baseline.
    #[arg(long, global = true)]
    no_haproxy: bool,
    /// Skip the direct-to-chatd baseline.
    #[arg(long, global = true)]
    no_direct: bool,
    /// Run the proxy under this command, e.g. "valgrind --tool=callgrind" (split on spaces).
    #[arg(long, global = true)]
    proxy_wrapper: Option<String>,
    #[command(flatten)]
    external: ExternalArgs,
}

/// Target running services instead of starting them (all four must be given).
#[derive(Args)]
struct ExternalArgs {
    /// The proxy's plain TCP edge.
    #[arg(long, global = true, requires_all = ["sim_http", "sim_chat", "partner_url"])]
    proxy_addr: Option<SocketAddr>,
    /// The proxy's admin listener, for /metrics.
    #[arg(long, global = true)]
    proxy_admin: Option<SocketAddr>,
    /// The proxy's pid, for /proc sampling.
    #[arg(long, global = true)]
    proxy_pid: Option<u32>,
    /// The simulator's HTTP base URL (http://127.0.0.1:PORT).
    #[arg(long, global = true)]
    sim_http: Option<String>,
    /// The simulator's chat listener (for the direct and HAProxy baselines).
    #[arg(long, global = true)]
    sim_chat: Option<SocketAddr>,
    /// The partner server's base URL (POST /oauth/token).
    #[arg(long, global = true)]
    partner_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// N idle sessions held through the proxy, pinging at the client interval; memory and fds per
    /// session, against HAProxy's per connection.
    Steady {
        #[arg(long, default_value_t = 9000)]
        sessions: usize,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 60)]
        hold: u64,
        /// Seconds between a client's keepalive pings.
        #[arg(long, default_value_t = 25)]
        ping_secs: u64,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// N sessions established as fast as possible on each path; sessions/s and handshakes per
    /// proxy CPU-second against the crypto ceiling.
    Ramp {
        #[arg(long, default_value_t = 5000)]
        sessions: usize,
        /// Logins in flight at once (the proxy sheds above its max_concurrent_handshakes, 1024).
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
    },
    /// Pairs exchanging 256-byte stanzas: saturation throughput, then open-loop latency at fixed
    /// rates (default 10%, 25% and 50% of the proxy's saturation).
    Chat {
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        /// Total stanzas/s in the open-loop phase (one phase at this rate).
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds of the open-loop phase.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Seconds of the saturation phase.
        #[arg(long, default_value_t = 10)]
        saturation: u64,
        /// Unacknowledged stanzas per client in the saturation phase.
        #[arg(long, default_value_t = 16)]
        window: u64,
    },
    /// All sessions dropped at once and reconnecting with jitter.
    Storm {
        #[arg(long, default_value_t = 5000)]
        sessions: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Largest reconnect delay, milliseconds.
        #[arg(long, default_value_t = 2000)]
        jitter_ms: u64,
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
    },
    /// Connect/disconnect cycles; proxy memory and fds must stay flat.
    Churn {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 100_000)]
        cycles: u64,
    },
    /// Only the crypto ceiling.
    Crypto,
    /// Every scenario at small N, a few seconds each; fails on any error or violated invariant
    /// (what CI runs).
    Smoke,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    if secs == 0 || secs > 24 * 3600 {
        return Err(format!("{s:?}: must be between 1 s and 24 h (tokens are issued for a day)"));
    }
    Ok(Duration::from_secs(secs))
}

fn timestamp() -> String {
    let secs = wire_io::clock::unix_now();
    // Civil date from days since the epoch (Howard Hinnant's algorithm), so no date crate is needed.
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "mem_gib": mem_kib as f64 / 1048576.0,
        "loadavg_at_start": load.trim(),
    })
}

async fn run(cli: Cli) -> Result<bool> {
    let fd_limit = procfs::raise_fd_limit()?;
    // The crate's own folder, wherever the command runs from.
    let results = cli
        .results
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results").join(timestamp()));
    std::fs::create_dir_all(&results).map_err(|e| Error::io(format!("creating {}", results.display()), e))?;
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .ok_or_else(|| Error::Invalid("cannot find this binary's folder; pass --bin-dir".into()))?,
    };
    let progress = Arc::new(Progress::default());
    let _printer = progress.spawn_printer();
    let started = Instant::now();
    let mut machine = machine();
    machine["fd_limit"] = fd_limit.into();
    eprintln!("loadtest: results in {}", results.display());

    progress.phase("crypto ceiling");
    let budget =
        if matches!(cli.command, Command::Smoke) { Duration::from_millis(50) } else { Duration::from_millis(500) };
    let ceiling = tokio::task::spawn_blocking(move || crypto::measure(budget))
        .await
        .map_err(|e| Error::Invalid(format!("crypto ceiling task: {}", Report(&e))))??;
    if matches!(cli.command, Command::Crypto) {
        let json = serde_json::json!({ "machine": machine, "crypto_ceiling": ceiling });
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        println!("{text}");
        report::write(&results.join("report.json"), &text)?;
        return Ok(true);
    }

    let env = match &cli.external.proxy_addr {
        Some(proxy_addr) => {
            let ext = External {
                proxy_addr: *proxy_addr,
                proxy_admin: cli.external.proxy_admin,
                proxy_pid: cli.external.proxy_pid,
                sim_http: cli.external.sim_http.clone().unwrap_or_default(),
                sim_chat: cli.external.sim_chat.ok_or_else(|| Error::Invalid("--sim-chat is required".into()))?,
                partner_url: cli.external.partner_url.clone().unwrap_or_default(),
            };
            Env::external(&ext, !cli.no_haproxy, &results).await?
        }
        None => {
            let opts = StartOptions {
                bin_dir,
                work_dir: results.join("services"),
                haproxy: !cli.no_haproxy,
                proxy_wrapper: cli
                    .proxy_wrapper
                    .as_deref()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            };
            Env::start(&opts).await?
        }
    };
    let haproxy = env.haproxy.as_ref().map(|h| h.version.clone());
    let haproxy_skipped = env.haproxy_skipped.clone();
    let mut ctx = Ctx::new(env, Arc::clone(&progress), !cli.no_direct, cli.soak);
    ctx.ceiling = Some(ceiling.clone());

    let outcomes = run_scenarios(&ctx, &cli.command).await;
    let Ctx { env, .. } = ctx;
    env.shutdown().await;
    let outcomes = outcomes?;
    drop(_printer);

    let mut violations = Vec::new();
    let mut md = format!(
        "# loadtest {}\n\nMachine: {} × {}, {:.0} GiB, load average at start {}. fd limit {fd_limit} per process. HAProxy: {}.\n\n\
         Crypto ceiling (one core, aws-lc-rs as in wire::noise): X25519 {:.0} keygen/s, {:.0} agreements/s → **{:.0} logins/s** (2 base-point multiplications + 3 agreements each); AES-256-GCM {:.0} MB/s at 256 B ({:.0} MB/s at 16 KiB) → **{:.0} stanzas/s**.\n\n",
        timestamp(),
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["mem_gib"].as_f64().unwrap_or(0.0),
        machine["loadavg_at_start"].as_str().unwrap_or("?"),
        haproxy.clone().or(haproxy_skipped.clone()).unwrap_or_default(),
        ceiling.x25519_keygen_per_sec,
        ceiling.x25519_agree_per_sec,
        ceiling.handshakes_per_sec_per_core,
        ceiling.aes_gcm_256b_bytes_per_sec / 1e6,
        ceiling.aes_gcm_16k_bytes_per_sec / 1e6,
        ceiling.stanzas_per_sec_per_core,
    );
    let mut scenarios_json = serde_json::Map::new();
    let mut plot_notes = Vec::new();
    for o in &outcomes {
        md += &o.markdown;
        md += "\n";
        for p in &o.plots {
            match report::draw(&results, p) {
                Ok(None) => md += &format!("![{}]({})\n\n", p.title, p.file),
                Ok(Some(why)) => plot_notes.push(why),
                Err(e) => plot_notes.push(Report(&e).to_string()),
            }
        }
        violations.extend(o.violations.iter().cloned());
        scenarios_json.insert(o.name.clone(), o.json.clone());
    }
    if !plot_notes.is_empty() {
        md += &format!("Plots skipped: {}\n\n", plot_notes.join("; "));
    }
    md += &if violations.is_empty() {
        "**No errors, no invariant violations.**\n".to_owned()
    } else {
        format!("**Violations:**\n\n{}\n", violations.iter().map(|v| format!("- {v}\n")).collect::<String>())
    };
    let json = serde_json::json!({
        "machine": machine,
        "haproxy": haproxy,
        "haproxy_skipped": haproxy_skipped,
        "crypto_ceiling": ceiling,
        "scenarios": scenarios_json,
        "violations": violations,
        "secs": started.elapsed().as_secs_f64(),
    });
    report::write(&results.join("report.json"), &serde_json::to_string_pretty(&json).unwrap_or_default())?;
    report::write(&results.join("summary.md"), &md)?;
    println!("{md}");
    eprintln!("loadtest: {:.1} s; report in {}", started.elapsed().as_secs_f64(), results.display());
    Ok(violations.is_empty())
}

async fn run_scenarios(ctx: &Ctx, command: &Command) -> Result<Vec<Outcome>> {
    Ok(match *command {
        Command::Steady { sessions, hold, ping_secs, concurrency } => {
            let p = SteadyParams {
                sessions,
                hold: Duration::from_secs(hold),
                ping_every: Duration::from_secs(ping_secs.max(1)),
                concurrency,
            };
            vec![scenarios::steady(ctx, &p).await?]
        }
        Command::Ramp { sessions, concurrency } => {
            vec![scenarios::ramp(ctx, &RampParams { sessions, concurrency }).await?]
        }
        Command::Chat { pairs, rate, duration, saturation, window } => {
            let p = ChatParams {
                pairs,
                rate,
                duration: Duration::from_secs(duration.max(1)),
                saturation: Duration::from_secs(saturation.max(1)),
                window: window.max(1),
            };
            vec![scenarios::chat(ctx, &p).await?]
        }
        Command::Storm { sessions, rounds, jitter_ms, concurrency } => {
            let p =
                StormParams { sessions, rounds: rounds.max(1), jitter: Duration::from_millis(jitter_ms), concurrency };
            vec![scenarios::storm(ctx, &p).await?]
        }
        Command::Churn { clients, cycles } => {
            vec![scenarios::churn(ctx, &ChurnParams { clients: clients.max(1), cycles }).await?]
        }
        Command::Crypto => Vec::new(),
        Command::Smoke => smoke(ctx).await?,
    })
}

/// Every scenario at small N: seconds each.
async fn smoke(ctx: &Ctx) -> Result<Vec<Outcome>> {
    let secs = Duration::from_secs;
    Ok(vec![
        scenarios::steady(ctx, &SteadyParams { sessions: 100, hold: secs(2), ping_every: secs(1), concurrency: 64 })
            .await?,
        scenarios::ramp(ctx, &RampParams { sessions: 300, concurrency: 128 }).await?,
        scenarios::chat(
            ctx,
            &ChatParams { pairs: 10, rate: Some(400.0), duration: secs(2), saturation: secs(1), window: 8 },
        )
        .await?,
        scenarios::storm(
            ctx,
            &StormParams { sessions: 100, rounds: 2, jitter: Duration::from_millis(300), concurrency: 64 },
        )
        .await?,
        scenarios::churn(ctx, &ChurnParams { clients: 8, cycles: 400 }).await?,
    ])
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("loadtest: FAILED: errors or invariant violations (see the summary above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("loadtest: {}", Report(&e));
            ExitCode::FAILURE
        }
    }
}
