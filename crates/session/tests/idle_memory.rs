//! What an idle session costs in memory, measured as the growth of the process's resident set
//! over many copies (its own test binary, so nothing else allocates meanwhile; aws-lc allocates
//! its cipher contexts with C `malloc`, which a Rust allocator hook would not see, and the
//! workspace forbids the `unsafe` a call to glibc's `mallinfo2` needs). With thousands of copies
//! the page granularity of the resident set is a few bytes per copy. The relay's own state is
//! measured in `sessions.rs` (`idle_sessions_hold_no_relay_buffers`); this adds the parts that
//! live on the heap outside it.

use wire::noise::{RecvCipher, SendCipher};
use wire::testing::TestServer;

/// Resident bytes of this process now (`VmRSS`).
fn live() -> isize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: isize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

/// The proxy's half of a finished handshake.
fn ciphers(server: &TestServer) -> (SendCipher, RecvCipher) {
    server.transports().0.split()
}

#[cfg(target_os = "linux")]
#[test]
fn an_idle_sessions_heap_beyond_the_relay_state() {
    let server = TestServer::generate(0);
    drop(ciphers(&server));
    let n = 4000;
    let before = live();
    let held: Vec<_> = (0..n).map(|_| ciphers(&server)).collect();
    let inline_size = std::mem::size_of::<(SendCipher, RecvCipher)>();
    let per_pair = (live() - before) as usize / n - inline_size;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let before = live();
    let timers: Vec<_> = rt
        .block_on(async { (0..n).map(|_| Box::pin(tokio::time::sleep(std::time::Duration::from_secs(60)))).collect() });
    let per_timer = (live() - before) as usize / n;

    let before = live();
    let handles: Vec<_> = (0..n).map(|_| session::CancelHandle::new()).collect();
    let per_handle = (live() - before) as usize / n;

    // What an idle relay keeps of its ciphers: the secrets, the expanded keys parked.
    let before = live();
    let parked: Vec<_> = (0..n)
        .map(|_| {
            let (mut send, mut recv) = ciphers(&server);
            send.park();
            recv.park();
            (send, recv)
        })
        .collect();
    let per_parked = ((live() - before) / n as isize).max(0) as usize;
    // The registry's part: one claimed account (its slot, async mutex, strings, map entry).
    let registry = session::Registry::new(None);
    let before = live();
    let claims: Vec<_> = rt.block_on(async {
        let mut claims = Vec::with_capacity(n);
        for i in 0..n {
            claims.push(registry.claim(&format!("1-{}@interop", 15_550_000_000u64 + i as u64)).await.unwrap());
        }
        claims
    });
    let per_claim = (live() - before) as usize / n;
    // Everything stays held until here, so no measurement reuses memory another one freed.
    drop((held, timers, handles, parked, claims));

    println!(
        "idle session heap outside the relay state: ciphers {per_pair} B on the heap + {inline_size} B inline \
         (both directions; {per_parked} B in all once parked), idle timer {per_timer} B, cancel handle {per_handle} B, \
         registry claim {per_claim} B"
    );
    assert!(per_pair > 0 && per_pair < 4096, "{per_pair}");
    assert!(per_parked <= inline_size + 64, "parked ciphers should hold no context: {per_parked} B per pair");
}
