//! `interop-local` as a process under signals (the signal loop is the proxy's, shared with
//! `interop-proxy`): SIGTERM drains live sessions spread over the drain window and exits before the deadline; SIGHUP swaps the TLS certificate without dropping
//! sessions.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use local_world::demo::{DemoTargets, login_frame};
use support::{
    Banner, Enlisted, WAIT, ack_for, enlisted_at, get_text, message, read_banner, self_signed, tls_connector,
};
use wire::{Jid, Node, Server};
use wire_io::{ClientError, EdgeClient};

/// A running `interop-local` process and the addresses its banner printed.
struct Proc {
    child: Child,
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    admin: SocketAddr,
    targets: DemoTargets,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("proxy-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the binary on `config` (TOML text) and waits for its banner and the demo to finish.
fn spawn(config: &str, dir: &std::path::Path) -> Proc {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_interop-local"))
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let Banner { tcp, tls, admin, sim, partner, ca_file, sim_ws, .. } = read_banner(stdout);
    // The embedded simulator offers its WebSocket chat listener, on loopback (issue 13).
    assert!(sim_ws.is_some_and(|a| a.ip().is_loopback()), "no simulator WebSocket listener in the banner");
    let targets = DemoTargets {
        partner_url: partner.expect("partner url"),
        sim_url: sim.expect("sim url"),
        edge_addr: tcp.unwrap_or_else(|| "127.0.0.1:1".parse().unwrap()),
        ca_file: Some(ca_file.expect("the banner names the local CA")),
    };
    Proc { child, tcp, tls, admin: admin.expect("admin address"), targets }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

async fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    let (_, text) = get_text(&format!("http://{admin}/metrics")).await;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn login<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S, who: &Enlisted) -> EdgeClient<S> {
    let mut c = EdgeClient::new(stream);
    c.send_payload(&login_frame(&who.user, &who.jid, &who.token).unwrap()).await.unwrap();
    let first = c.recv(WAIT).await.unwrap();
    assert_eq!(first.tag, "success", "{first:?}");
    c.recv_tag("ib", WAIT).await.unwrap();
    c
}

fn ping(id: &str) -> Node {
    Node::new("iq").attr("id", id).attr("xmlns", "w:p").attr("type", "get").attr("to", Jid::server(Server::Whatsapp))
}

/// What one client saw from the moment SIGTERM was sent.
struct Seen {
    notice: Option<Duration>,
    closed: Duration,
    acked_before_notice: Vec<String>,
    messages: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_spread_over_the_window_and_exits_before_the_deadline() {
    const N: usize = 20;
    let dir = temp_dir("drain");
    let p = spawn(
        "embedded = true\n[edge]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [limits]\nper_ip_connections_per_sec = 1000\n[drain]\nwindow_secs = 2\ndeadline_secs = 5\n",
        &dir,
    );
    let edge_addr = p.tcp.unwrap();
    let mut people = Vec::new();
    for i in 0..N {
        people.push(enlisted_at(&p.targets, &format!("drain{i}")).await);
    }
    let mut clients = Vec::new();
    for who in &people {
        clients.push(login(tokio::net::TcpStream::connect(edge_addr).await.unwrap(), who).await);
    }
    // Pairs (i, i^1) message each other and ack; then each sends one more message that is not
    // waited for, right before SIGTERM.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&message(&people[i ^ 1].jid, &format!("m{i}"), b"before")).await.unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = (false, false);
        while got != (true, true) {
            let n = c.recv(WAIT).await.unwrap();
            match n.tag.as_str() {
                "ack" => got.0 = true,
                "message" => {
                    got.1 = true;
                    c.send(&ack_for(&n)).await.unwrap();
                }
                _ => {}
            }
        }
        c.send(&message(&people[i ^ 1].jid, &format!("late{i}"), b"late")).await.unwrap();
    }

    // Readiness watcher, then SIGTERM.
    let admin = p.admin;
    let sent = Instant::now();
    let ready_flip = tokio::spawn(async move {
        loop {
            let (status, _) = get_text(&format!("http://{admin}/readyz")).await;
            if status == 503 {
                return sent.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let sent = Instant::now();
    signal(&p.child, "TERM");
    let mut watchers = Vec::new();
    for mut c in clients {
        watchers.push(tokio::spawn(async move {
            let mut seen = Seen { notice: None, closed: Duration::ZERO, acked_before_notice: vec![], messages: vec![] };
            loop {
                match c.recv(Duration::from_secs(10)).await {
                    Ok(n) if n.tag == "stream:error" => {
                        assert_eq!((n.get_str("code"), n.get_str("text")), (Some("503"), Some("draining")));
                        seen.notice = Some(sent.elapsed());
                    }
                    Ok(n) if n.tag == "ack" && seen.notice.is_none() => {
                        seen.acked_before_notice.push(n.get_str("id").unwrap_or_default().to_owned())
                    }
                    Ok(n) if n.tag == "message" => seen.messages.push(n.get_str("id").unwrap_or_default().to_owned()),
                    Ok(_) => {}
                    Err(ClientError::Closed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            seen.closed = sent.elapsed();
            seen
        }));
    }
    let ready_after = tokio::time::timeout(WAIT, ready_flip).await.unwrap().unwrap();
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await.unwrap());
    }
    let mut child = p;
    let exit = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break (status, sent.elapsed());
        }
        assert!(sent.elapsed() < Duration::from_secs(7), "the process did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let mut closes: Vec<Duration> = seen.iter().map(|s| s.closed).collect();
    closes.sort();
    let (min, median, max) = (closes[0], closes[N / 2], closes[N - 1]);
    println!(
        "SIGTERM -> /readyz 503 after {ready_after:?}; {N} closes: min {min:?}, median {median:?}, max {max:?}; \
         process exited {:?} after SIGTERM with {}",
        exit.1, exit.0
    );
    assert!(seen.iter().all(|s| s.notice.is_some()), "every client got the draining notice before the close");
    assert!(ready_after < min, "readiness flipped ({ready_after:?}) before the first close ({min:?})");
    assert!(max - min >= Duration::from_millis(1500), "closes spread over the 2 s window, not at once");
    assert!(median >= Duration::from_millis(600) && median <= Duration::from_millis(1600), "{median:?}");
    let first_half = closes.iter().filter(|c| **c < min + Duration::from_secs(1)).count();
    assert!((6..=14).contains(&first_half), "about half closed in the first second: {first_half}");
    assert!(exit.0.success() && exit.1 < Duration::from_secs(5), "exited cleanly before the deadline: {exit:?}");
    // Every stanza sent before the notice reached chatd: its ack came back before the notice,
    // or the recipient got the message.
    for (i, s) in seen.iter().enumerate() {
        let late = format!("late{i}");
        let delivered = seen[i ^ 1].messages.contains(&late);
        assert!(
            s.acked_before_notice.contains(&late) || delivered,
            "client {i}: {late} lost; notice {:?} close {:?} acks {:?}; partner notice {:?} messages {:?}",
            s.notice,
            s.closed,
            s.acked_before_notice,
            seen[i ^ 1].notice,
            seen[i ^ 1].messages
        );
    }
}

async fn tls_connect(
    addr: SocketAddr,
    trust: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tls_connector(trust).connect("localhost".try_into().unwrap(), tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate_without_dropping_sessions() {
    let dir = temp_dir("reload");
    let old = self_signed(&dir);
    let config = format!(
        "embedded = true\n[edge]\nlisten = \"127.0.0.1:0\"\n[edge.tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[drain]\nwindow_secs = 1\ndeadline_secs = 3\n",
        dir.join("cert.pem"),
        dir.join("key.pem")
    );
    let p = spawn(&config, &dir);
    let tls_addr = p.tls.unwrap();
    let olga = enlisted_at(&p.targets, "reloadolga").await;
    let mut established = login(tls_connect(tls_addr, &old).await.unwrap(), &olga).await;

    let new = self_signed(&dir);
    signal(&p.child, "HUP");
    let start = Instant::now();
    while metric(p.admin, "waproxy_config_reloads_total{result=\"ok\"}").await < 1.0 {
        assert!(start.elapsed() < WAIT, "no reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The established session is untouched.
    established.send(&ping("after-hup")).await.unwrap();
    assert_eq!(established.recv_tag("iq", WAIT).await.unwrap().0.get_str("id"), Some("after-hup"));
    // New handshakes see the new certificate, and only it.
    let fresh = tls_connect(tls_addr, &new).await.unwrap();
    let served = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(served.as_ref(), new.cert.der().as_ref());
    assert!(tls_connect(tls_addr, &old).await.is_err(), "the old certificate is no longer served");
    let pia = enlisted_at(&p.targets, "reloadpia").await;
    login(fresh, &pia).await;

    // A broken file: the reload fails and the current certificate stays.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    signal(&p.child, "HUP");
    let start = Instant::now();
    while metric(p.admin, "waproxy_config_reloads_total{result=\"error\"}").await < 1.0 {
        assert!(start.elapsed() < WAIT, "no failed reload counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tls_connect(tls_addr, &new).await.is_ok(), "still serving the last good certificate");
    established.send(&ping("after-bad-hup")).await.unwrap();
    assert_eq!(established.recv_tag("iq", WAIT).await.unwrap().0.get_str("id"), Some("after-bad-hup"));
}

/// Opens the write end of `fifo` once a reader has it open (a non-blocking open fails with ENXIO
/// until then), and keeps it: the reader then waits in read() for bytes that never come.
fn writer_once_read(fifo: &std::path::Path, limit: Duration) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK (0o4000 on Linux): fail instead of waiting for a reader.
    const O_NONBLOCK: i32 = 0o4000;
    let start = Instant::now();
    loop {
        match std::fs::OpenOptions::new().write(true).custom_flags(O_NONBLOCK).open(fifo) {
            Ok(f) => return f,
            Err(e) => assert!(start.elapsed() < limit, "nobody opened {fifo:?} to read: {e}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_hung_sighup_reload_still_drains_by_the_deadline() {
    let dir = temp_dir("fifo");
    self_signed(&dir);
    let config = |cert: &std::path::Path| {
        format!(
            "embedded = true\n[edge]\nlisten = \"127.0.0.1:0\"\n[edge.tls]\nlisten = \"127.0.0.1:0\"\ncert = {cert:?}\n\
             key = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n[drain]\nwindow_secs = 1\ndeadline_secs = 3\n",
            dir.join("key.pem")
        )
    };
    let p = spawn(&config(&dir.join("cert.pem")), &dir);
    let olga = enlisted_at(&p.targets, "fifoolga").await;
    let mut session = login(tokio::net::TcpStream::connect(p.tcp.unwrap()).await.unwrap(), &olga).await;

    // The configuration now names a FIFO as the certificate: reading it waits for a writer.
    let fifo = dir.join("cert.fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    std::fs::write(dir.join("proxy.toml"), config(&fifo)).unwrap();
    signal(&p.child, "HUP");
    // Once the reload has opened the FIFO, a writer that never writes keeps it reading.
    let fifo_for_writer = fifo.clone();
    let _writer = tokio::task::spawn_blocking(move || writer_once_read(&fifo_for_writer, WAIT)).await.unwrap();

    // The proxy serves on while the reload hangs.
    session.send(&ping("during-hung-reload")).await.unwrap();
    assert_eq!(session.recv_tag("iq", WAIT).await.unwrap().0.get_str("id"), Some("during-hung-reload"));
    let reloads = metric(p.admin, "waproxy_config_reloads_total{result=\"ok\"}").await
        + metric(p.admin, "waproxy_config_reloads_total{result=\"error\"}").await;
    assert_eq!(reloads, 0.0, "the reload is still reading the FIFO");

    // SIGTERM drains and exits by the 3 s deadline (the 1 s window, with one session).
    let sent = Instant::now();
    signal(&p.child, "TERM");
    let (notice, _) = session.recv_tag("stream:error", WAIT).await.unwrap();
    assert_eq!(notice.get_str("text"), Some("draining"));
    let mut p = p;
    let exit = loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            break (status, sent.elapsed());
        }
        assert!(sent.elapsed() < Duration::from_secs(6), "the process did not exit after SIGTERM during a hung reload");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("SIGTERM during a SIGHUP reload hung on a FIFO: exited {:?} after SIGTERM with {}", exit.1, exit.0);
    assert!(exit.0.success() && exit.1 < Duration::from_secs(3), "drained by the deadline: {exit:?}");
}
