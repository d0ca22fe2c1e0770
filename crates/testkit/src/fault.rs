//! A small TCP fault proxy for tests: it listens on loopback, forwards every connection to a
//! target, and misbehaves on demand. The mode can be switched at any time and applies at once to
//! the connections already open (and to the ones accepted later):
//!
//! - [`Mode::Pass`]: forward both ways, FIN for FIN.
//! - [`Mode::Delay`]: hold every chunk for the given time before forwarding it (order is kept).
//! - [`Mode::DropAfter`]: forward until the connection has carried N bytes in total (both ways,
//!   counted from when it was accepted), then close both sides (FIN).
//! - [`Mode::Reset`]: reset both sides at once (`SO_LINGER` 0, so the peers get RST); new
//!   connections are reset as soon as they are accepted.
//! - [`Mode::Blackhole`]: stop forwarding and keep both sockets open; what arrives is read and
//!   discarded, and a FIN is not passed on (a network path that silently loses everything).
//!
//! Bytes pass through unchanged (a PROXY header sent first is forwarded like any other bytes).
//! Dropping the [`FaultProxy`] closes every socket it holds. Loopback only; panics are test
//! failures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the fault proxy does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    DropAfter(usize),
    Reset,
    Blackhole,
}

/// Counters, shared with the connection tasks.
#[derive(Default)]
struct Stats {
    accepted: AtomicUsize,
    /// Connections whose downstream side (the one that connected to us) has not closed yet.
    downstream_open: AtomicUsize,
    /// Connections with a task still holding sockets.
    live: AtomicUsize,
    bytes_forwarded: AtomicUsize,
}

/// A running fault proxy.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `target` in [`Mode::Pass`].
    pub async fn start(target: SocketAddr) -> FaultProxy {
        Self::start_on("127.0.0.1:0".parse().unwrap(), target).await
    }

    /// Listens on `listen` and forwards to `target` in [`Mode::Pass`].
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(listen).await.expect("fault proxy: bind");
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let (mode_rx, task_stats, task_stop) = (mode.subscribe(), Arc::clone(&stats), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = task_stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((down, _)) = accepted else { continue };
                task_stats.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(connection(down, target, mode_rx.clone(), Arc::clone(&task_stats), task_stop.clone()));
            }
        });
        FaultProxy { addr, mode, stats, stop }
    }

    /// The address to point the client (or the proxy's `upstream.addr`) at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the mode; open connections follow at once.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose downstream peer (the one that connected to the fault proxy) has not
    /// closed or reset its socket yet: the oracle for "the proxy closed its upstream" when the
    /// target cannot see it (blackhole).
    pub fn downstream_open(&self) -> usize {
        self.stats.downstream_open.load(Ordering::SeqCst)
    }

    /// Connections for which the fault proxy still holds sockets.
    pub fn live(&self) -> usize {
        self.stats.live.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far, both ways.
    pub fn bytes_forwarded(&self) -> usize {
        self.stats.bytes_forwarded.load(Ordering::SeqCst)
    }

    /// Polls until `downstream_open()` is `want`; returns how long that took, or `None` after
    /// `limit`.
    pub async fn wait_downstream_open(&self, want: usize, limit: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        while start.elapsed() < limit {
            if self.downstream_open() == want {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn connection(
    down: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    stats.live.fetch_add(1, Ordering::SeqCst);
    stats.downstream_open.fetch_add(1, Ordering::SeqCst);
    let _live = LiveGuard(Arc::clone(&stats));
    let conn = Arc::new(Conn {
        carried: AtomicUsize::new(0),
        kill: CancellationToken::new(),
        down_open: AtomicBool::new(true),
        stats: Arc::clone(&stats),
    });
    if *mode.borrow() == Mode::Reset {
        reset(&down);
        conn.close_downstream();
        return;
    }
    let Ok(up) = TcpStream::connect(target).await else {
        reset(&down);
        conn.close_downstream();
        return;
    };
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let (down_r, down_w) = down.into_split();
    let (up_r, up_w) = up.into_split();
    let a = pump(down_r, up_w, mode.clone(), Arc::clone(&conn), stop.clone(), true);
    let b = pump(up_r, down_w, mode, Arc::clone(&conn), stop, false);
    let halves = tokio::join!(a, b);
    // Both pumps ended: the sockets close here (FIN, or RST where the linger was set to 0).
    drop(halves);
    conn.close_downstream();
}

struct LiveGuard(Arc<Stats>);
impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Conn {
    carried: AtomicUsize,
    kill: CancellationToken,
    down_open: AtomicBool,
    stats: Arc<Stats>,
}

impl Conn {
    fn close_downstream(&self) {
        if self.down_open.swap(false, Ordering::SeqCst) {
            self.stats.downstream_open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Copies `from` to `to` under the current mode. Returns the halves so that the sockets stay
/// open until both directions are done.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    conn: Arc<Conn>,
    stop: CancellationToken,
    downstream: bool,
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *mode.borrow_and_update() == Mode::Reset {
            reset(from.as_ref());
            reset(to.as_ref());
            conn.kill.cancel();
            break;
        }
        let read = tokio::select! {
            _ = stop.cancelled() => {
                reset(from.as_ref());
                reset(to.as_ref());
                break;
            }
            _ = conn.kill.cancelled() => break,
            _ = mode.changed() => continue,
            r = from.read(&mut buf) => r,
        };
        let n = match read {
            Ok(n) if n > 0 => n,
            _ => {
                if downstream {
                    conn.close_downstream();
                }
                // Pass the FIN on, unless the path is blackholed.
                if *mode.borrow() != Mode::Blackhole {
                    let _ = to.shutdown().await;
                }
                break;
            }
        };
        let current = *mode.borrow();
        match current {
            Mode::Pass | Mode::Reset => {}
            Mode::Delay(d) => tokio::time::sleep(d).await,
            Mode::Blackhole => continue,
            Mode::DropAfter(limit) => {
                let before = conn.carried.fetch_add(n, Ordering::SeqCst);
                if before + n > limit {
                    let allowed = limit.saturating_sub(before);
                    let _ = to.write_all(&buf[..allowed]).await;
                    conn.stats.bytes_forwarded.fetch_add(allowed, Ordering::SeqCst);
                    conn.kill.cancel();
                    break;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            conn.kill.cancel();
            break;
        }
        conn.stats.bytes_forwarded.fetch_add(n, Ordering::SeqCst);
    }
    (from, to)
}
