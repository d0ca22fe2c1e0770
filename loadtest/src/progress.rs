//! The progress line: phase, elapsed time and counters, redrawn in place on a terminal and
//! printed every few seconds otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Progress {
    phase: Mutex<(String, Option<Instant>)>,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

impl Progress {
    /// Starts a phase and resets the counters.
    pub fn phase(&self, name: impl Into<String>) {
        let name = name.into();
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = (name, Some(Instant::now()));
        for c in [&self.ok, &self.failed, &self.sent, &self.received] {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn line(&self) -> String {
        let (name, start) = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let t = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "[{name}] {t:6.1}s ok={} failed={} sent={} received={}",
            get(&self.ok),
            get(&self.failed),
            get(&self.sent),
            get(&self.received)
        )
    }

    /// Prints the line until the returned handle is dropped.
    pub fn spawn_printer(self: &Arc<Self>) -> PrinterGuard {
        let me = Arc::clone(self);
        let tty = std::io::stderr().is_terminal();
        let period = if tty { Duration::from_millis(500) } else { Duration::from_secs(5) };
        PrinterGuard {
            task: tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                loop {
                    tick.tick().await;
                    let line = me.line();
                    let mut err = std::io::stderr().lock();
                    let _ = if tty { write!(err, "\r\x1b[K{line}") } else { writeln!(err, "{line}") };
                    let _ = err.flush();
                }
            }),
            tty,
        }
    }
}

pub struct PrinterGuard {
    task: tokio::task::JoinHandle<()>,
    tty: bool,
}

impl Drop for PrinterGuard {
    fn drop(&mut self) {
        self.task.abort();
        if self.tty {
            eprintln!();
        }
    }
}
