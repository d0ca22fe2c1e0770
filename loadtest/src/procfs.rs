//! Per-process resource samples from /proc, and the fd limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    pub rss_bytes: u64,
    /// User plus system CPU time.
    pub cpu_secs: f64,
    /// The kernel's part of it (sockets, epoll, loopback TCP).
    pub sys_secs: f64,
    pub fds: u64,
}

/// Reads RSS, CPU time and open fds of `pid`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Error::io(format!("/proc/{pid}/status"), e))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| Error::Invalid(format!("no VmRSS for pid {pid}")))?;
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| Error::io(format!("/proc/{pid}/stat"), e))?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15: indexes 11 and 12 after the name.
    let cpu_ticks = ticks(11) + ticks(12);
    let sys_ticks = ticks(12);
    let fds =
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| Error::io(format!("/proc/{pid}/fd"), e))?.count();
    Ok(ProcSample {
        rss_bytes: rss_kib * 1024,
        cpu_secs: cpu_ticks as f64 / clock_ticks(),
        sys_secs: sys_ticks as f64 / clock_ticks(),
        fds: fds as u64,
    })
}

fn clock_ticks() -> f64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        t => t as f64,
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum })
        .map_err(|e| Error::io("setrlimit", e.into()))?;
    Ok(lim.maximum.unwrap_or(u64::MAX))
}

/// A reading taken while something ran: seconds since the sampler started, a counter the
/// scenario maintains (sessions held, cycles done), and the process sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub t: f64,
    pub count: u64,
    #[serde(flatten)]
    pub proc: ProcSample,
}

/// Samples a process every `period` in the background until stopped.
pub struct Sampler {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<Point>>,
}

impl Sampler {
    pub fn start(pid: Option<u32>, count: Arc<AtomicU64>, period: Duration) -> Sampler {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut points = Vec::new();
            let Some(pid) = pid else { return points };
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Ok(proc) = sample(pid) {
                    points.push(Point { t: start.elapsed().as_secs_f64(), count: count.load(Ordering::Relaxed), proc });
                }
            }
            points
        });
        Sampler { stop, task }
    }

    pub async fn finish(self) -> Vec<Point> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}
