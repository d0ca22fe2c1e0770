//! HDR histograms of microseconds, their summaries, and percentiles over time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies up to a minute at 3 significant digits.
fn new_hist() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    match Histogram::new_with_bounds(1, 60_000_000, 3) {
        Ok(h) => h,
        Err(_) => unreachable!("1..60e6 at 3 significant digits is a valid histogram"),
    }
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    Summary {
        count: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
    }
}

/// One interval of a [`Recorder`]'s timeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interval {
    /// Seconds since the recorder started, at the end of the interval.
    pub t: f64,
    #[serde(flatten)]
    pub summary: Summary,
}

struct Inner {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    timeline: Vec<Interval>,
}

/// A histogram shared by many tasks, with a per-interval copy for percentiles over time.
pub struct Recorder {
    inner: Mutex<Inner>,
    start: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            inner: Mutex::new(Inner { total: new_hist(), interval: new_hist(), timeline: Vec::new() }),
            start: Instant::now(),
        }
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let mut g = self.lock();
        g.total.saturating_record(us.max(1));
        g.interval.saturating_record(us.max(1));
    }

    /// Closes the current interval (called once a second by a ticker).
    pub fn tick(&self) {
        let t = self.start.elapsed().as_secs_f64();
        let mut g = self.lock();
        let summary = summarize(&g.interval);
        g.interval.reset();
        if summary.count > 0 {
            g.timeline.push(Interval { t, summary });
        }
    }

    pub fn summary(&self) -> Summary {
        summarize(&self.lock().total)
    }

    pub fn timeline(&self) -> Vec<Interval> {
        self.lock().timeline.clone()
    }
}

/// Ticks recorders once a second until dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Ticker {
    pub fn start(recorders: Vec<std::sync::Arc<Recorder>>) -> Ticker {
        Ticker(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                for r in &recorders {
                    r.tick();
                }
            }
        }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}
