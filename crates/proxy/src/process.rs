//! The process around a running proxy, shared by `interop-proxy` and the local world's
//! `interop-local`: the configuration flags, the banner, and the signal loop (SIGHUP reloads;
//! SIGTERM, Ctrl-C or `POST /drain` drain and return).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use error_report::Report;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

use crate::config::Config;
use crate::{PreparedReload, RunningProxy, prepare_reload};

/// The configuration flags both binaries take.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    /// TOML configuration: config/proxy.toml documents every key (interop-proxy requires one;
    /// interop-local defaults to config/local.toml's embedded world).
    #[arg(long, global = true)]
    pub config: Option<String>,
    /// Override `edge.listen`.
    #[arg(long, global = true)]
    pub listen: Option<SocketAddr>,
    /// Override `admin.listen`.
    #[arg(long, global = true)]
    pub admin_listen: Option<SocketAddr>,
}

impl ConfigArgs {
    /// Applies the listen overrides to a loaded configuration.
    pub fn apply(&self, config: &mut Config) {
        if let Some(a) = self.listen {
            config.edge.listen = Some(a);
        }
        if let Some(a) = self.admin_listen {
            config.admin.listen = a;
        }
    }
}

/// How long a SIGHUP reload may take to read its files before it counts as failed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the listeners are, one line each. Whoever reads it stops at `serving`, which the caller
/// prints last.
pub fn print_banner(proxy: &RunningProxy) {
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
}

/// SIGTERM and SIGHUP handlers, installed before the proxy starts: an early SIGHUP must not kill
/// the process (its default action).
pub struct Signals {
    term: Signal,
    hup: Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, String> {
        let term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {}", Report(&e)))?;
        let hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {}", Report(&e)))?;
        Ok(Signals { term, hup })
    }

    /// Serves until SIGTERM, Ctrl-C or `POST /drain`, reloading on SIGHUP from what `load` reads;
    /// then drains (a second signal cuts the drain short) and lets the relays send their FINs.
    /// The caller shuts the proxy down after.
    pub async fn serve_until_drained<L>(&mut self, proxy: &RunningProxy, load: L)
    where
        L: Fn() -> Result<Config, String> + Clone + Send + 'static,
    {
        // A reload's file I/O (the configuration, the certificate and key) runs on a thread of its
        // own, never on this loop: a file that never answers (a FIFO, a hung mount) must not keep
        // SIGTERM waiting. At most one such thread exists; its answer is applied here.
        let reload_running = Arc::new(AtomicBool::new(false));
        let mut pending: Option<(tokio::sync::oneshot::Receiver<Result<PreparedReload, String>>, Instant)> = None;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = self.term.recv() => break,
                _ = proxy.admin.drain_requested.cancelled() => break,
                _ = self.hup.recv() => {
                    if reload_running.swap(true, Ordering::AcqRel) {
                        let _ = proxy.apply_reload(Err("SIGHUP ignored: the previous reload is still reading its files".into()));
                        continue;
                    }
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let (load, tls, running) = (load.clone(), proxy.tls_cert.clone(), Arc::clone(&reload_running));
                    let spawned = std::thread::Builder::new().name("reload".into()).spawn(move || {
                        let prepared = prepare_reload(load(), tls.as_deref());
                        running.store(false, Ordering::Release);
                        let _ = tx.send(prepared);
                    });
                    match spawned {
                        Ok(_) => pending = Some((rx, Instant::now() + RELOAD_TIMEOUT)),
                        Err(e) => {
                            reload_running.store(false, Ordering::Release);
                            let _ = proxy.apply_reload(Err(format!("cannot start the reload thread: {}", Report(&e))));
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
        let term = &mut self.term;
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
        // Let the relays send their FINs, then the caller stops everything.
        let _ = tokio::time::timeout(Duration::from_secs(1), proxy.context.session.registry.wait_idle()).await;
    }
}
