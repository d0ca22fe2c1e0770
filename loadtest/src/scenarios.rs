//! The scenarios. Each is bounded in count and duration, returns its figures as JSON and
//! Markdown, the plots to draw, and the invariant violations it saw (which fail the run).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wire::{Jid, Node};

use crate::client::{Conn, PathKind, Target, User};
use crate::crypto::Ceiling;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::procfs::{ProcSample, Sampler, sample};
use crate::progress::Progress;
use crate::setup::{observe, provision};
use crate::stats::{Recorder, Summary, Ticker};

/// Longest a teardown may take before the simulator must have no live connection.
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// Encoded size of a chat stanza, the "small stanza".
pub const STANZA_BYTES: usize = 256;

/// A line chart to draw.
pub struct Plot {
    pub file: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// What a scenario found.
pub struct Outcome {
    pub name: String,
    pub json: serde_json::Value,
    pub markdown: String,
    pub plots: Vec<Plot>,
    pub violations: Vec<String>,
}

/// What every scenario shares.
pub struct Ctx {
    pub env: Env,
    pub progress: Arc<Progress>,
    pub tag: String,
    pub ceiling: Option<Ceiling>,
    pub direct: bool,
    /// When set, each scenario runs for this long (held, repeated or cycled) instead of its count.
    pub soak: Option<Duration>,
    next_ip: AtomicUsize,
}

impl Ctx {
    pub fn new(env: Env, progress: Arc<Progress>, direct: bool, soak: Option<Duration>) -> Ctx {
        Ctx { env, progress, tag: crate::setup::run_tag(), ceiling: None, direct, soak, next_ip: AtomicUsize::new(0) }
    }

    pub fn target(&self, kind: PathKind) -> Option<Target> {
        match kind {
            PathKind::Proxy => Some(Target::new(kind, self.env.proxy_addr, self.env.root)),
            PathKind::Direct => self.direct.then(|| Target::new(kind, self.env.sim_chat, self.env.root)),
            PathKind::Haproxy => self.env.haproxy.as_ref().map(|h| Target::new(kind, h.addr, self.env.root)),
        }
    }

    /// Every path this run compares, the proxy first.
    pub fn targets(&self) -> Vec<Target> {
        [PathKind::Proxy, PathKind::Direct, PathKind::Haproxy].into_iter().filter_map(|k| self.target(k)).collect()
    }

    async fn users(&self, name: &str, n: usize) -> Result<Vec<User>> {
        let first = self.next_ip.fetch_add(n, Ordering::Relaxed);
        provision(&self.env, &format!("{}{name}", self.tag), n, first, &self.progress).await
    }

    fn proc(&self, kind: PathKind) -> Option<u32> {
        match kind {
            PathKind::Proxy => self.env.proxy_pid,
            PathKind::Haproxy => self.env.haproxy.as_ref().map(|h| h.pid),
            PathKind::Direct => self.env.sim_pid,
        }
    }
}

fn rand_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    if n == 0 { 0 } else { u64::from_le_bytes(b) % n }
}

fn maybe_sample(pid: Option<u32>) -> Option<ProcSample> {
    pid.and_then(|p| sample(p).ok())
}

/// Counts of failures by class.
#[derive(Default)]
struct Failures(Mutex<BTreeMap<String, u64>>);

impl Failures {
    fn add(&self, e: &Error) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(e.class()).or_default() += 1;
    }
    fn map(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn total(&self) -> u64 {
        self.map().values().sum()
    }
}

/// Logs in, retrying what a real client retries: overload answers (after `retry_after`) and
/// lost connections, a few times.
async fn login_retrying(target: &Target, user: &User, retries: &Failures) -> Result<(Conn, Duration)> {
    let mut attempt = 0;
    loop {
        let start = Instant::now();
        match Conn::login(target, user).await {
            Ok(c) => return Ok((c, start.elapsed())),
            Err(e) if attempt < 5 => {
                let wait = match &e {
                    Error::Refused { reason, retry_after, .. } if reason == "429" => {
                        Duration::from_secs(retry_after.unwrap_or(1))
                    }
                    Error::Refused { .. } => return Err(e),
                    _ => Duration::from_millis(100),
                };
                attempt += 1;
                retries.add(&e);
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A user's index, its login (with latency), and when it finished.
type LoginResult = (usize, Result<(Conn, Duration)>, f64);

/// Sessions logged in by [`establish`].
struct Established {
    conns: Vec<(usize, Conn)>,
    failures: Failures,
    /// Attempts retried, by why.
    retries: BTreeMap<String, u64>,
    elapsed: Duration,
    login: Arc<Recorder>,
    /// Seconds from the start at which each login completed.
    done_at: Vec<f64>,
}

async fn establish(
    target: &Target,
    users: &[User],
    concurrency: usize,
    progress: &Progress,
    counter: &AtomicU64,
) -> Established {
    let start = Instant::now();
    let login = Arc::new(Recorder::default());
    let failures = Failures::default();
    let retries = Failures::default();
    let results: Vec<LoginResult> = futures_util::stream::iter(users.iter().enumerate())
        .map(|(i, u)| {
            let retries = &retries;
            async move {
                let r = login_retrying(target, u, retries).await;
                if r.is_ok() {
                    counter.fetch_add(1, Ordering::Relaxed);
                    progress.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                }
                (i, r, start.elapsed().as_secs_f64())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = start.elapsed();
    let mut conns = Vec::with_capacity(results.len());
    let mut done_at = Vec::with_capacity(results.len());
    for (i, r, t) in results {
        match r {
            Ok((c, latency)) => {
                login.record(latency);
                done_at.push(t);
                conns.push((i, c));
            }
            Err(e) => failures.add(&e),
        }
    }
    conns.sort_by_key(|(i, _)| *i);
    Established { conns, failures, retries: retries.map(), elapsed, login, done_at }
}

/// Completions per second in `bin`-second bins.
fn rate_series(done_at: &[f64], bin: f64) -> Vec<(f64, f64)> {
    let last = done_at.iter().copied().fold(0.0, f64::max);
    let bins = (last / bin).ceil() as usize + 1;
    let mut counts = vec![0u64; bins];
    for t in done_at {
        counts[((t / bin) as usize).min(bins - 1)] += 1;
    }
    counts.iter().enumerate().map(|(i, c)| ((i as f64 + 1.0) * bin, *c as f64 / bin)).collect()
}

fn summary_json(s: &Summary) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

fn md_latency(s: &Summary) -> String {
    format!("{} / {} / {} / {} / {} µs", s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us)
}

fn fail_violation(what: &str, f: &Failures) -> Option<String> {
    let total = f.total();
    (total > 0).then(|| format!("{what}: {total} failures {:?}", f.map()))
}

/// Holds idle sessions, pinging each at `every` (first ping at a random offset) until `stop`.
fn hold(
    conns: Vec<(usize, Conn)>,
    every: Duration,
    stop: CancellationToken,
    pings: Arc<Recorder>,
    failures: Arc<Failures>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for (i, mut conn) in conns {
        let (stop, pings, failures) = (stop.clone(), Arc::clone(&pings), Arc::clone(&failures));
        set.spawn(async move {
            let mut next = tokio::time::Instant::now() + Duration::from_millis(rand_below(every.as_millis() as u64));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(next) => {
                        n += 1;
                        let start = Instant::now();
                        match conn.ping(&format!("p{i}-{n}"), Duration::from_secs(10)).await {
                            Ok(()) => pings.record(start.elapsed()),
                            Err(e) => { failures.add(&e); break; }
                        }
                        next += every;
                    }
                    r = conn.recv(Duration::from_secs(3600)) => {
                        // Nothing else is expected on an idle session: a close or stream error is a failure.
                        if let Err(e) = r { failures.add(&e); break; }
                    }
                }
            }
        });
    }
    set
}

pub struct SteadyParams {
    pub sessions: usize,
    pub hold: Duration,
    pub ping_every: Duration,
    pub concurrency: usize,
}

/// `steady`: N idle sessions through the proxy, pinging at the client interval; memory and fds
/// per session; then the same N connections through HAProxy for its memory per connection.
pub async fn steady(ctx: &Ctx, p: &SteadyParams) -> Result<Outcome> {
    let users = ctx.users("steady", p.sessions).await?;
    let mut violations = Vec::new();
    let mut json = serde_json::Map::new();
    let mut md = format!(
        "### steady: {} idle sessions\n\n| path | established | memory per session (RSS delta / sessions) | fds per session | login p50/p90/p99/p99.9/max |\n|---|---|---|---|---|\n",
        p.sessions
    );
    let mut plots = Vec::new();
    let mut mem_series = Vec::new();
    let mut time_series = Vec::new();
    let hold_for = ctx.soak.unwrap_or(p.hold);
    for target in ctx.targets().into_iter().filter(|t| t.kind != PathKind::Direct) {
        let kind = target.kind;
        ctx.env.wait_sim_idle(IDLE_WAIT).await?;
        let pid = ctx.proc(kind);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = maybe_sample(pid);
        ctx.progress.phase(format!("steady {}: establishing", kind.name()));
        let counter = Arc::new(AtomicU64::new(0));
        let sampler = Sampler::start(pid, Arc::clone(&counter), Duration::from_millis(250));
        let est = establish(&target, &users, p.concurrency, &ctx.progress, &counter).await;
        let n = est.conns.len() as u64;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let settled = maybe_sample(pid);
        let pings = Arc::new(Recorder::default());
        let hold_failures = Arc::new(Failures::default());
        let stop = CancellationToken::new();
        ctx.progress.phase(format!("steady {}: holding {n} for {hold_for:?}", kind.name()));
        let mut set = hold(est.conns, p.ping_every, stop.clone(), Arc::clone(&pings), Arc::clone(&hold_failures));
        tokio::time::sleep(hold_for).await;
        let held = maybe_sample(pid);
        // What the relays hold while idle (the proxy releases idle sessions' buffers).
        let relay_buffers = match (kind, ctx.env.proxy_admin) {
            (PathKind::Proxy, Some(a)) => ctx
                .env
                .http
                .metric(&format!("http://{a}/metrics"), "waproxy_relay_buffer_capacity_bytes")
                .await
                .ok()
                .flatten(),
            _ => None,
        };
        stop.cancel();
        while set.join_next().await.is_some() {}
        let points = sampler.finish().await;
        let per = |s: Option<ProcSample>, f: fn(&ProcSample) -> u64| match (before, s) {
            (Some(b), Some(a)) if n > 0 => Some((f(&a) as f64 - f(&b) as f64) / n as f64),
            _ => None,
        };
        let mem_settled = per(settled, |s| s.rss_bytes);
        let marginal = marginal_bytes(&points, n);
        let mem_held = per(held, |s| s.rss_bytes);
        let fds = per(held, |s| s.fds);
        if let Some(b) = before {
            let series: Vec<(f64, f64)> = points
                .iter()
                .filter(|pt| pt.count > 0)
                .map(|pt| (pt.count as f64, (pt.proc.rss_bytes as f64 - b.rss_bytes as f64) / pt.count as f64 / 1024.0))
                .collect();
            mem_series.push((format!("{} (RSS delta / sessions)", kind.name()), series));
            // The same over time, through the hold: where the settled figure comes from.
            let series: Vec<(f64, f64)> = points
                .iter()
                .filter(|pt| pt.count > 0)
                .map(|pt| (pt.t, (pt.proc.rss_bytes as f64 - b.rss_bytes as f64) / pt.count as f64 / 1024.0))
                .collect();
            time_series.push((format!("{} (RSS delta / sessions)", kind.name()), series));
        }
        violations.extend(fail_violation(&format!("steady {} logins", kind.name()), &est.failures));
        violations.extend(fail_violation(&format!("steady {} held sessions", kind.name()), &hold_failures));
        let login = est.login.summary();
        let fmt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0} B"));
        md += &format!(
            "| {} | {n} / {} | {} settled, {} after hold; {} marginal | {} | {} |\n",
            kind.name(),
            p.sessions,
            fmt(mem_settled),
            fmt(mem_held),
            fmt(marginal),
            fds.map_or("n/a".into(), |v| format!("{v:.2}")),
            md_latency(&login)
        );
        json.insert(
            kind.name().into(),
            json!({
                "established": n, "failures": est.failures.map(), "retries": est.retries,
                "establish_secs": est.elapsed.as_secs_f64(),
                "before": before, "settled": settled, "after_hold": held,
                "memory_per_session_settled_bytes": mem_settled, "memory_per_session_after_hold_bytes": mem_held,
                "fds_per_session": fds, "marginal_bytes_per_session": marginal, "relay_buffer_capacity_bytes_while_idle": relay_buffers, "login_latency": summary_json(&login),
                "ping_rtt": summary_json(&pings.summary()), "hold_failures": hold_failures.map(),
                "samples": points,
            }),
        );
        ctx.env.wait_sim_idle(IDLE_WAIT).await?;
    }
    let obs = observe(&ctx.env, &users).await?;
    violations.extend(obs.violations("steady"));
    json.insert("observation".into(), serde_json::to_value(&obs).unwrap_or_default());
    md += &format!(
        "\nSimulator: {} accounts checked, highest concurrent connections per account {}, client IPs recorded for {}.\n",
        obs.accounts_checked,
        obs.max_concurrent_seen,
        obs.accounts_checked - obs.ip_missing
    );
    plots.push(Plot {
        file: "steady-memory-per-session.png".into(),
        title: "steady: memory per session vs sessions".into(),
        x_label: "sessions".into(),
        y_label: "KiB per session".into(),
        series: mem_series,
    });
    plots.push(Plot {
        file: "steady-memory-over-time.png".into(),
        title: "steady: memory per session held, over the logins and the hold".into(),
        x_label: "seconds".into(),
        y_label: "KiB per session".into(),
        series: time_series,
    });
    Ok(Outcome { name: "steady".into(), json: json.into(), markdown: md, plots, violations })
}

/// The slope of RSS over sessions held while the second half of them logged in (least squares):
/// the cost of one more session, without the fixed start-up growth that RSS delta / sessions
/// spreads over them.
fn marginal_bytes(points: &[crate::procfs::Point], n: u64) -> Option<f64> {
    let upper: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.count >= n / 2 && p.count > 0)
        .map(|p| (p.count as f64, p.proc.rss_bytes as f64))
        .collect();
    let k = upper.len() as f64;
    if upper.len() < 3 {
        return None;
    }
    let (sx, sy) = upper.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / k, sy / k);
    let (num, den) = upper.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (y - my), b + (x - mx) * (x - mx)));
    (den > 0.0).then(|| num / den)
}

pub struct RampParams {
    pub sessions: usize,
    pub concurrency: usize,
}

/// `ramp`: N sessions established as fast as possible on each path; sessions/s, login latency,
/// and for the proxy, handshakes per CPU-second against the crypto ceiling.
pub async fn ramp(ctx: &Ctx, p: &RampParams) -> Result<Outcome> {
    let users = ctx.users("ramp", p.sessions).await?;
    let mut violations = Vec::new();
    let mut json = serde_json::Map::new();
    let mut series = Vec::new();
    let mut md = format!(
        "### ramp: {} sessions, {} logins in flight\n\n| path | sessions/s | server CPU-s per 1k sessions | login p50/p90/p99/p99.9/max |\n|---|---|---|---|\n",
        p.sessions, p.concurrency
    );
    let started = Instant::now();
    let mut round = 0;
    let mut note = String::new();
    loop {
        round += 1;
        for target in ctx.targets() {
            let kind = target.kind;
            ctx.env.wait_sim_idle(IDLE_WAIT).await?;
            let pid = ctx.proc(kind);
            let before = maybe_sample(pid);
            ctx.progress.phase(format!("ramp {} round {round}", kind.name()));
            let counter = AtomicU64::new(0);
            let est = establish(&target, &users, p.concurrency, &ctx.progress, &counter).await;
            let after = maybe_sample(pid);
            let n = est.conns.len();
            drop(est.conns);
            let rate = n as f64 / est.elapsed.as_secs_f64();
            let cpu = match (before, after) {
                (Some(b), Some(a)) => Some(a.cpu_secs - b.cpu_secs),
                _ => None,
            };
            let sys = match (before, after) {
                (Some(b), Some(a)) => Some(a.sys_secs - b.sys_secs),
                _ => None,
            };
            let per_cpu = cpu.filter(|c| *c > 0.0).map(|c| n as f64 / c);
            violations.extend(fail_violation(&format!("ramp {} logins", kind.name()), &est.failures));
            let login = est.login.summary();
            if round == 1 {
                md += &format!(
                    "| {} | {rate:.0} | {} | {} |\n",
                    kind.name(),
                    match (cpu, sys) {
                        (Some(c), Some(s)) => format!(
                            "{:.2} ({}; {:.0}% in the kernel)",
                            c * 1000.0 / n.max(1) as f64,
                            cpu_owner(kind),
                            100.0 * s / c.max(1e-9)
                        ),
                        _ => "n/a".into(),
                    },
                    md_latency(&login)
                );
                series.push((kind.name().to_owned(), rate_series(&est.done_at, 0.25)));
                let mut entry = json!({
                    "established": n, "failures": est.failures.map(), "retries": est.retries,
                    "secs": est.elapsed.as_secs_f64(), "sessions_per_sec": rate,
                    "cpu_secs": cpu, "sys_cpu_secs": sys, "cpu_owner": cpu_owner(kind), "sessions_per_cpu_sec": per_cpu,
                    "login_latency": summary_json(&login),
                });
                if let (PathKind::Proxy, Some(c), Some(per)) = (kind, &ctx.ceiling, per_cpu) {
                    entry["ceiling_handshakes_per_sec_per_core"] = c.handshakes_per_sec_per_core.into();
                    entry["fraction_of_ceiling_per_core"] = (per / c.handshakes_per_sec_per_core).into();
                    note = format!(
                        "\nProxy: {per:.0} handshakes per proxy CPU-second = **{:.0}%** of the one-core crypto ceiling ({:.0}/s; target ≥ 70%).\n\n",
                        100.0 * per / c.handshakes_per_sec_per_core,
                        c.handshakes_per_sec_per_core
                    );
                }
                json.insert(kind.name().into(), entry);
            }
        }
        if ctx.soak.is_none_or(|s| started.elapsed() >= s) {
            break;
        }
    }
    md += &note;
    ctx.env.wait_sim_idle(IDLE_WAIT).await?;
    let obs = observe(&ctx.env, &users).await?;
    violations.extend(obs.violations("ramp"));
    json.insert("rounds".into(), round.into());
    json.insert("observation".into(), serde_json::to_value(&obs).unwrap_or_default());
    let plots = vec![Plot {
        file: "ramp-sessions-per-sec.png".into(),
        title: format!("ramp: sessions established per second ({} sessions)", p.sessions),
        x_label: "seconds".into(),
        y_label: "sessions/s".into(),
        series,
    }];
    Ok(Outcome { name: "ramp".into(), json: json.into(), markdown: md, plots, violations })
}

fn cpu_owner(kind: PathKind) -> &'static str {
    match kind {
        PathKind::Proxy => "interop-proxy",
        PathKind::Haproxy => "haproxy",
        PathKind::Direct => "chatd-sim",
    }
}

pub struct ChatParams {
    pub pairs: usize,
    /// Total stanzas/s for the open-loop phase; `None`: 10%, 25% and 50% of the proxy's
    /// saturation.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub saturation: Duration,
    /// Stanzas a client may have unacknowledged by chatd during the saturation phase.
    pub window: u64,
}

enum Mode {
    Saturate { window: u64 },
    Open { interval: Duration },
}

struct ChatRun {
    phase: u8,
    epoch: Instant,
    start: Instant,
    stop_at: Instant,
    until: Instant,
    mode: Mode,
    /// From each stanza's scheduled send time (open loop: includes any lag in sending).
    latency: Arc<Recorder>,
    /// From the moment it was actually written (what the relay path alone adds).
    service: Arc<Recorder>,
    sent: AtomicU64,
    delivered: AtomicU64,
    delivered_in_window: AtomicU64,
    failures: Failures,
}

/// Length of the `<enc>` bytes that make a stanza to `peer` [`STANZA_BYTES`] long.
fn enc_len(peer: &Jid) -> usize {
    let size =
        |len: usize| wire::encode::encode(&chat_message(peer, "0000000000000000", vec![0; len])).map_or(0, |v| v.len());
    let base = size(16);
    (16 + STANZA_BYTES).saturating_sub(base).clamp(17, 250)
}

fn chat_message(peer: &Jid, id: &str, enc: Vec<u8>) -> Node {
    Node::new("message")
        .attr("to", peer.clone())
        .attr("id", id)
        .attr("type", "text")
        .children(vec![Node::new("enc").attr("v", "2").attr("type", "msg").bytes(enc)])
}

/// One chat client: sends to its peer on the run's schedule, acks what it receives and times it.
async fn chat_client(
    i: usize,
    mut conn: Conn,
    peer: Jid,
    run: Arc<ChatRun>,
    progress: Arc<Progress>,
) -> Option<(usize, Conn)> {
    let len = enc_len(&peer);
    let offset = match run.mode {
        Mode::Open { interval } => Duration::from_nanos(rand_below(interval.as_nanos() as u64)),
        Mode::Saturate { .. } => Duration::ZERO,
    };
    let mut next = run.start + offset;
    let (mut seq, mut outstanding) = (0u64, 0u64);
    let until = tokio::time::Instant::from_std(run.until);
    loop {
        let now = Instant::now();
        let sending = now < run.stop_at;
        let (open, window_open) = match run.mode {
            Mode::Open { .. } => (sending && next < run.stop_at, false),
            Mode::Saturate { window } => (false, sending && outstanding < window),
        };
        let result: Result<()> = tokio::select! {
            biased;
            r = conn.recv(Duration::from_secs(3600)) => match r {
                Ok(n) => on_stanza(&mut conn, &n, &run, &mut outstanding, &progress).await,
                Err(e) => Err(e),
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)), if open => {
                let r = send_chat(&mut conn, &peer, i, seq, next, len, &run).await;
                seq += 1;
                if let Mode::Open { interval } = run.mode { next += interval; }
                r
            }
            _ = std::future::ready(()), if window_open => {
                let r = send_chat(&mut conn, &peer, i, seq, Instant::now(), len, &run).await;
                seq += 1;
                outstanding += 1;
                r
            }
            _ = tokio::time::sleep_until(until) => return Some((i, conn)),
        };
        if let Err(e) = result {
            run.failures.add(&e);
            progress.failed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if seq > 0 && seq % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

async fn send_chat(
    conn: &mut Conn,
    peer: &Jid,
    i: usize,
    seq: u64,
    scheduled: Instant,
    len: usize,
    run: &ChatRun,
) -> Result<()> {
    let mut enc = vec![0u8; len];
    enc[0] = run.phase;
    let since = |t: Instant| (t.saturating_duration_since(run.epoch).as_nanos() as u64).to_be_bytes();
    enc[1..9].copy_from_slice(&since(scheduled));
    enc[9..17].copy_from_slice(&since(Instant::now()));
    conn.send(&chat_message(peer, &format!("{:08X}{seq:08X}", i as u32), enc)).await?;
    run.sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn on_stanza(conn: &mut Conn, n: &Node, run: &ChatRun, outstanding: &mut u64, progress: &Progress) -> Result<()> {
    match n.tag.as_str() {
        "message" => {
            let now = Instant::now();
            let enc: &[u8] = match n.child("enc").map(|c| &c.content) {
                Some(wire::Content::Bytes(b)) => b,
                _ => &[],
            };
            if enc.len() >= 17 && enc[0] == run.phase {
                let at =
                    |b: &[u8]| run.epoch + Duration::from_nanos(u64::from_be_bytes(b.try_into().unwrap_or_default()));
                if matches!(run.mode, Mode::Open { .. }) {
                    run.latency.record(now.saturating_duration_since(at(&enc[1..9])));
                    run.service.record(now.saturating_duration_since(at(&enc[9..17])));
                }
                run.delivered.fetch_add(1, Ordering::Relaxed);
                if now <= run.stop_at {
                    run.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                }
                progress.received.fetch_add(1, Ordering::Relaxed);
            }
            let id = n.get_str("id").unwrap_or_default();
            let mut ack = Node::new("ack").attr("class", "message").attr("id", id);
            if let Some(from) = n.get("from") {
                ack = ack.attr("to", from.clone());
            }
            conn.send(&ack).await
        }
        "ack" => {
            if n.get_str("error").is_some() {
                return Err(Error::Invalid(format!(
                    "chatd refused a stanza: error {}",
                    n.get_str("error").unwrap_or("?")
                )));
            }
            *outstanding = outstanding.saturating_sub(1);
            progress.sent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Runs one chat phase over `conns` (pairs are neighbours: 0-1, 2-3, ...); returns the
/// connections still alive.
async fn chat_phase(
    conns: Vec<(usize, Conn)>,
    users: &[User],
    run: Arc<ChatRun>,
    progress: &Arc<Progress>,
) -> Vec<(usize, Conn)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, conn) in conns {
        let peer = users[i ^ 1].jid.clone();
        set.spawn(chat_client(i, conn, peer, Arc::clone(&run), Arc::clone(progress)));
    }
    let mut alive = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(c)) = r {
            alive.push(c);
        }
    }
    alive.sort_by_key(|(i, _)| *i);
    alive
}

fn new_run(phase: u8, mode: Mode, duration: Duration) -> Arc<ChatRun> {
    let start = Instant::now() + Duration::from_millis(100);
    Arc::new(ChatRun {
        phase,
        epoch: start - Duration::from_secs(1),
        start,
        stop_at: start + duration,
        // Stanzas in flight at the end get two seconds to arrive.
        until: start + duration + Duration::from_secs(2),
        mode,
        latency: Arc::new(Recorder::default()),
        service: Arc::new(Recorder::default()),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        delivered_in_window: AtomicU64::new(0),
        failures: Failures::default(),
    })
}

/// `chat`: pairs exchanging 256-byte stanzas. Per path: a saturation phase (each client keeps
/// `window` stanzas unacknowledged) gives the relay throughput and the server's CPU per stanza;
/// then open-loop phases at fixed rates (fractions of the proxy's saturation unless a rate is
/// given) give latency measured from each stanza's scheduled send time, so a stall cannot hide
/// the stanzas it delayed.
pub async fn chat(ctx: &Ctx, p: &ChatParams) -> Result<Outcome> {
    let mut violations = Vec::new();
    let mut json = serde_json::Map::new();
    let mut timeline_series = Vec::new();
    let mut p99_series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut rates: Option<Vec<f64>> = p.rate.map(|r| vec![r]);
    // (path, rate index) -> (p99 from schedule, p99 from write)
    let mut p99 = BTreeMap::new();
    let mut sat = BTreeMap::new();
    let mut cpu_per_stanza = BTreeMap::new();
    let duration = ctx.soak.unwrap_or(p.duration);
    let mut md = format!(
        "### chat: {} pairs, {STANZA_BYTES}-byte stanzas\n\n| path | saturation stanzas/s | relay MB/s | server CPU per stanza | open-loop rate | delivered | latency p50/p90/p99/p99.9/max (from schedule) | p99 from write |\n|---|---|---|---|---|---|---|---|\n",
        p.pairs
    );
    for target in ctx.targets() {
        let kind = target.kind;
        let users = ctx.users(&format!("chat-{}", kind.name()), p.pairs * 2).await?;
        ctx.progress.phase(format!("chat {}: logging in", kind.name()));
        let counter = AtomicU64::new(0);
        let est = establish(&target, &users, 256, &ctx.progress, &counter).await;
        violations.extend(fail_violation(&format!("chat {} logins", kind.name()), &est.failures));

        ctx.progress.phase(format!("chat {}: saturation", kind.name()));
        let pid = ctx.proc(kind);
        let before = maybe_sample(pid);
        let srun = new_run(1, Mode::Saturate { window: p.window }, p.saturation);
        let mut conns = chat_phase(est.conns, &users, Arc::clone(&srun), &ctx.progress).await;
        let after = maybe_sample(pid);
        let delivered_sat = srun.delivered_in_window.load(Ordering::Relaxed);
        let sat_rate = delivered_sat as f64 / p.saturation.as_secs_f64();
        sat.insert(kind.name(), sat_rate);
        violations.extend(fail_violation(&format!("chat {} saturation", kind.name()), &srun.failures));
        let cpu = match (before, after) {
            (Some(b), Some(a)) => Some(a.cpu_secs - b.cpu_secs),
            _ => None,
        };
        let per_stanza = cpu.filter(|_| delivered_sat > 0).map(|c| c / delivered_sat as f64);
        if let Some(c) = per_stanza {
            cpu_per_stanza.insert(kind.name(), c);
        }
        let rates = rates.get_or_insert_with(|| vec![sat_rate * 0.1, sat_rate * 0.25, sat_rate * 0.5]).clone();

        let mut open_json = Vec::new();
        for (ri, open_rate) in rates.iter().copied().enumerate() {
            ctx.progress.phase(format!("chat {}: open loop at {open_rate:.0}/s", kind.name()));
            let clients = conns.len().max(1) as f64;
            let interval = Duration::from_secs_f64(clients / open_rate.max(1.0));
            let orun = new_run(2 + ri as u8, Mode::Open { interval }, duration);
            let ticker = Ticker::start(vec![Arc::clone(&orun.latency)]);
            conns = chat_phase(conns, &users, Arc::clone(&orun), &ctx.progress).await;
            drop(ticker);
            violations.extend(fail_violation(&format!("chat {} open loop", kind.name()), &orun.failures));
            let lat = orun.latency.summary();
            let service = orun.service.summary();
            let sent = orun.sent.load(Ordering::Relaxed);
            let delivered = orun.delivered.load(Ordering::Relaxed);
            if delivered < sent {
                violations.push(format!(
                    "chat {} at {open_rate:.0}/s: {} of {sent} stanzas not delivered within 2 s of the end (above saturation)",
                    kind.name(),
                    sent - delivered
                ));
            }
            p99.insert((kind.name(), ri), (lat.p99_us, service.p99_us));
            p99_series.entry(kind.name()).or_default().push((open_rate, lat.p99_us as f64 / 1000.0));
            if ri + 1 == rates.len() {
                let timeline = orun.latency.timeline();
                for (label, f) in [("p50", (|s: &Summary| s.p50_us) as fn(&Summary) -> u64), ("p99", |s| s.p99_us)] {
                    timeline_series.push((
                        format!("{} {label}", kind.name()),
                        timeline.iter().map(|iv| (iv.t, f(&iv.summary) as f64 / 1000.0)).collect(),
                    ));
                }
            }
            md += &format!(
                "| {} | {} | {} | {} | {open_rate:.0}/s | {delivered}/{sent} | {} | {} µs |\n",
                kind.name(),
                if ri == 0 { format!("{sat_rate:.0}") } else { String::new() },
                if ri == 0 { format!("{:.2}", sat_rate * STANZA_BYTES as f64 / 1e6) } else { String::new() },
                match (ri, per_stanza) {
                    (0, Some(c)) => format!("{:.1} µs ({})", c * 1e6, cpu_owner(kind)),
                    _ => String::new(),
                },
                md_latency(&lat),
                service.p99_us
            );
            open_json.push(json!({
                "rate": open_rate, "secs": duration.as_secs_f64(), "sent": sent, "delivered": delivered,
                "latency": summary_json(&lat), "service_latency": summary_json(&service),
                "timeline": orun.latency.timeline(), "failures": orun.failures.map(),
            }));
        }
        drop(conns);
        json.insert(
            kind.name().into(),
            json!({
                "sessions": users.len(), "login_failures": est.failures.map(),
                "saturation": { "secs": p.saturation.as_secs_f64(), "window": p.window,
                    "sent": srun.sent.load(Ordering::Relaxed), "delivered_in_window": delivered_sat,
                    "stanzas_per_sec": sat_rate, "relay_bytes_per_sec": sat_rate * STANZA_BYTES as f64,
                    "cpu_secs": cpu, "cpu_owner": cpu_owner(kind), "cpu_secs_per_stanza": per_stanza,
                    "failures": srun.failures.map() },
                "open_loop": open_json,
            }),
        );
        ctx.env.wait_sim_idle(IDLE_WAIT).await?;
        let obs = observe(&ctx.env, &users).await?;
        violations.extend(obs.violations(&format!("chat {}", kind.name())));
    }
    let mut ratios = serde_json::Map::new();
    let mut added = Vec::new();
    for (ri, rate) in rates.unwrap_or_default().iter().enumerate() {
        if let (Some(proxy), Some(direct)) = (p99.get(&("proxy", ri)), p99.get(&("direct", ri))) {
            let a = proxy.0 as i64 - direct.0 as i64;
            let b = proxy.1 as i64 - direct.1 as i64;
            added.push(json!({ "rate": rate, "p99_added_us": a, "p99_added_from_write_us": b }));
            md += &format!(
                "\nAdded p99 latency (proxy − direct) at {rate:.0}/s: **{a} µs** from the scheduled send time, {b} µs from the actual write (target ≤ 100 µs at half saturation).\n"
            );
        }
    }
    ratios.insert("p99_added_latency".into(), added.into());
    if let (Some(proxy), Some(haproxy)) = (sat.get("proxy"), sat.get("haproxy")) {
        ratios.insert("throughput_proxy_over_haproxy".into(), (proxy / haproxy).into());
        md += &format!(
            "\nRelay throughput proxy / HAProxy, whole system: **{:.2}×** (target ≥ 0.8×).\n",
            proxy / haproxy
        );
    }
    if let (Some(proxy), Some(haproxy)) = (cpu_per_stanza.get("proxy"), cpu_per_stanza.get("haproxy")) {
        ratios.insert("per_core_throughput_proxy_over_haproxy".into(), (haproxy / proxy).into());
        md += &format!(
            "\nRelay throughput per CPU-second of the relay process, proxy / HAProxy: **{:.2}×** ({:.1} vs {:.1} µs per delivered stanza, which crosses the relay four times: message and ack each way).\n",
            haproxy / proxy,
            proxy * 1e6,
            haproxy * 1e6
        );
    }
    if let (Some(proxy), Some(c)) = (sat.get("proxy"), &ctx.ceiling) {
        ratios.insert("proxy_over_aes_ceiling".into(), (proxy / c.stanzas_per_sec_per_core).into());
    }
    json.insert("ratios".into(), ratios.into());
    let plots = vec![
        Plot {
            file: "chat-latency.png".into(),
            title: "chat: end-to-end stanza latency over time (open loop, highest rate)".into(),
            x_label: "seconds".into(),
            y_label: "milliseconds".into(),
            series: timeline_series,
        },
        Plot {
            file: "chat-p99-vs-rate.png".into(),
            title: "chat: p99 latency from the scheduled send time vs offered rate".into(),
            x_label: "stanzas/s".into(),
            y_label: "p99 milliseconds".into(),
            series: p99_series.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        },
    ];
    Ok(Outcome { name: "chat".into(), json: json.into(), markdown: md, plots, violations })
}

pub struct StormParams {
    pub sessions: usize,
    pub rounds: usize,
    pub jitter: Duration,
    pub concurrency: usize,
}

/// `storm`: N sessions through the proxy all dropped at once; each client reconnects after a
/// random delay up to `jitter`. How fast the wave is absorbed, and whether any account ever had
/// two chatd connections.
pub async fn storm(ctx: &Ctx, p: &StormParams) -> Result<Outcome> {
    let users = Arc::new(ctx.users("storm", p.sessions).await?);
    let target = ctx.target(PathKind::Proxy).ok_or_else(|| Error::Invalid("no proxy".into()))?;
    ctx.progress.phase("storm: establishing");
    let counter = AtomicU64::new(0);
    let est = establish(&target, &users, p.concurrency, &ctx.progress, &counter).await;
    let mut violations = Vec::new();
    violations.extend(fail_violation("storm initial logins", &est.failures));
    let mut conns = est.conns;
    let mut rounds = Vec::new();
    let mut md = format!(
        "### storm: {} sessions dropped at once, reconnecting within {} ms\n\n| round | reconnected | absorbed in | proxy CPU per reconnection | retried attempts, by cause | login p50/p90/p99/p99.9/max |\n|---|---|---|---|---|---|\n",
        p.sessions,
        p.jitter.as_millis()
    );
    let mut series = Vec::new();
    let started = Instant::now();
    let mut round = 0;
    while round < p.rounds || ctx.soak.is_some_and(|s| started.elapsed() < s) {
        round += 1;
        ctx.progress.phase(format!("storm: round {round}"));
        let t0 = Instant::now();
        let cpu_before = maybe_sample(ctx.env.proxy_pid);
        let held: Vec<usize> = conns.iter().map(|(i, _)| *i).collect();
        drop(conns);
        let login = Arc::new(Recorder::default());
        let failures = Arc::new(Failures::default());
        let retries = Arc::new(Failures::default());
        let mut set = tokio::task::JoinSet::new();
        for i in held {
            let (users, target, login, failures, retries, progress) = (
                Arc::clone(&users),
                target.clone(),
                Arc::clone(&login),
                Arc::clone(&failures),
                Arc::clone(&retries),
                Arc::clone(&ctx.progress),
            );
            let delay = Duration::from_millis(rand_below(p.jitter.as_millis() as u64 + 1));
            set.spawn(async move {
                tokio::time::sleep(delay).await;
                match login_retrying(&target, &users[i], &retries).await {
                    Ok((c, latency)) => {
                        login.record(latency);
                        progress.ok.fetch_add(1, Ordering::Relaxed);
                        Some((i, c, t0.elapsed().as_secs_f64()))
                    }
                    Err(e) => {
                        failures.add(&e);
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            });
        }
        let mut next = Vec::new();
        let mut done_at = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(Some((i, c, t))) = r {
                next.push((i, c));
                done_at.push(t);
            }
        }
        let absorbed = done_at.iter().copied().fold(0.0, f64::max);
        // The drop, the reconnections and their retries: what the wave cost the proxy.
        let cpu = match (cpu_before, maybe_sample(ctx.env.proxy_pid)) {
            (Some(b), Some(a)) => Some(a.cpu_secs - b.cpu_secs),
            _ => None,
        };
        let cpu_per_reconnect = cpu.filter(|_| !next.is_empty()).map(|c| c / next.len() as f64);
        let s = login.summary();
        violations.extend(fail_violation(&format!("storm round {round}"), &failures));
        if round <= 5 {
            md += &format!(
                "| {round} | {}/{} | {absorbed:.2} s | {} | {:?} | {} |\n",
                next.len(),
                p.sessions,
                cpu_per_reconnect.map_or("n/a".into(), |c| format!("{:.0} µs", c * 1e6)),
                retries.map(),
                md_latency(&s)
            );
            series.push((format!("round {round}"), rate_series(&done_at, 0.1)));
        }
        rounds.push(json!({
            "round": round, "reconnected": next.len(), "absorbed_secs": absorbed,
            "proxy_cpu_secs": cpu, "proxy_cpu_secs_per_reconnect": cpu_per_reconnect,
            "retries": retries.map(), "failures": failures.map(), "login_latency": summary_json(&s),
        }));
        conns = next;
    }
    drop(conns);
    ctx.env.wait_sim_idle(IDLE_WAIT).await?;
    let obs = observe(&ctx.env, &users).await?;
    violations.extend(obs.violations("storm"));
    md += &format!(
        "\nSimulator: highest concurrent chatd connections per account {} over {} accounts.\n",
        obs.max_concurrent_seen, obs.accounts_checked
    );
    let plots = vec![Plot {
        file: "storm-reconnects-per-sec.png".into(),
        title: "storm: reconnections completed per second".into(),
        x_label: "seconds after the drop".into(),
        y_label: "sessions/s".into(),
        series,
    }];
    let json = json!({ "sessions": p.sessions, "jitter_ms": p.jitter.as_millis() as u64, "rounds": rounds, "observation": obs });
    Ok(Outcome { name: "storm".into(), json, markdown: md, plots, violations })
}

pub struct ChurnParams {
    pub clients: usize,
    pub cycles: u64,
}

/// `churn`: `clients` workers each logging in and out as fast as they can, `cycles` in all;
/// the proxy's RSS and fd count sampled throughout must stay flat (within 5%).
pub async fn churn(ctx: &Ctx, p: &ChurnParams) -> Result<Outcome> {
    let users = Arc::new(ctx.users("churn", p.clients).await?);
    let target = ctx.target(PathKind::Proxy).ok_or_else(|| Error::Invalid("no proxy".into()))?;
    let pid = ctx.env.proxy_pid;
    ctx.env.wait_sim_idle(IDLE_WAIT).await?;
    let before = maybe_sample(pid);
    ctx.progress.phase("churn");
    let done = Arc::new(AtomicU64::new(0));
    let claimed = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(pid, Arc::clone(&done), Duration::from_millis(500));
    let failures = Arc::new(Failures::default());
    let retries = Arc::new(Failures::default());
    let deadline = ctx.soak.map(|s| Instant::now() + s);
    let cycles = if deadline.is_some() { u64::MAX } else { p.cycles };
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..p.clients {
        let (users, target, done, claimed, failures, retries, progress) = (
            Arc::clone(&users),
            target.clone(),
            Arc::clone(&done),
            Arc::clone(&claimed),
            Arc::clone(&failures),
            Arc::clone(&retries),
            Arc::clone(&ctx.progress),
        );
        set.spawn(async move {
            while claimed.fetch_add(1, Ordering::Relaxed) < cycles && deadline.is_none_or(|d| Instant::now() < d) {
                match login_retrying(&target, &users[w], &retries).await {
                    Ok((conn, _)) => {
                        drop(conn);
                        done.fetch_add(1, Ordering::Relaxed);
                        progress.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failures.add(&e);
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    ctx.env.wait_sim_idle(IDLE_WAIT).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = maybe_sample(pid);
    let points = sampler.finish().await;
    let total = done.load(Ordering::Relaxed);
    let mut violations = Vec::new();
    violations.extend(fail_violation("churn", &failures));
    // Warm reference: the first sample past a tenth of the cycles (allocator pools filled).
    let warm = points.iter().find(|pt| pt.count >= total / 10 && pt.count > 0).map(|pt| pt.proc);
    let rss_drift = match (warm, after) {
        (Some(w), Some(a)) if w.rss_bytes > 0 => Some((a.rss_bytes as f64 - w.rss_bytes as f64) / w.rss_bytes as f64),
        _ => None,
    };
    let fd_drift = match (before, after) {
        (Some(b), Some(a)) if b.fds > 0 => Some((a.fds as f64 - b.fds as f64) / b.fds as f64),
        _ => None,
    };
    if rss_drift.is_some_and(|d| d > 0.05) {
        violations
            .push(format!("churn: proxy RSS grew {:.1}% after warm-up (limit 5%)", rss_drift.unwrap_or(0.0) * 100.0));
    }
    if let (Some(b), Some(a)) = (before, after)
        && a.fds > b.fds + 2 + b.fds / 20
    {
        violations.push(format!("churn: proxy fds {} before, {} after", b.fds, a.fds));
    }
    let obs = observe(&ctx.env, &users).await?;
    violations.extend(obs.violations("churn"));
    let pct = |d: Option<f64>| d.map_or("n/a".to_owned(), |d| format!("{:+.1}%", d * 100.0));
    let md = format!(
        "### churn: {total} connect/disconnect cycles by {} clients\n\n{:.0} cycles/s. Proxy RSS {} → {} (warm) → {} MiB at the end: drift after warm-up {}. fds {} → {}: drift {}.\n",
        p.clients,
        total as f64 / elapsed.as_secs_f64(),
        before.map_or("n/a".into(), |s| format!("{:.1}", s.rss_bytes as f64 / 1048576.0)),
        warm.map_or("n/a".into(), |s| format!("{:.1}", s.rss_bytes as f64 / 1048576.0)),
        after.map_or("n/a".into(), |s| format!("{:.1}", s.rss_bytes as f64 / 1048576.0)),
        pct(rss_drift),
        before.map_or(0, |s| s.fds),
        after.map_or(0, |s| s.fds),
        pct(fd_drift),
    );
    let plots = vec![Plot {
        file: "churn-memory.png".into(),
        title: "churn: proxy RSS and fds vs cycles".into(),
        x_label: "cycles".into(),
        y_label: "RSS MiB / fds÷100".into(),
        series: vec![
            (
                "RSS MiB".into(),
                points.iter().map(|pt| (pt.count as f64, pt.proc.rss_bytes as f64 / 1048576.0)).collect(),
            ),
            ("fds / 100".into(), points.iter().map(|pt| (pt.count as f64, pt.proc.fds as f64 / 100.0)).collect()),
        ],
    }];
    let json = json!({
        "clients": p.clients, "cycles": total, "secs": elapsed.as_secs_f64(),
        "cycles_per_sec": total as f64 / elapsed.as_secs_f64(), "failures": failures.map(),
        "retries": retries.map(), "before": before, "warm": warm, "after": after,
        "rss_drift_after_warmup": rss_drift, "fd_drift": fd_drift, "samples": points, "observation": obs,
    });
    Ok(Outcome { name: "churn".into(), json, markdown: md, plots, violations })
}
