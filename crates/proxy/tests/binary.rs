//! `interop-proxy` as a process: the demo on the embedded default, and config checking.

use std::process::Command;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_interop-proxy"))
}

#[test]
fn demo_runs_real_traffic_through_the_proxy_and_exits() {
    let out = proxy().arg("demo").env("RUST_LOG", "warn").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("clients connect to   tcp://127.0.0.1:"), "{stdout}");
    // The simulator's WebSocket chat listener, for WhatsApp Web client libraries (issue 13).
    assert!(stdout.contains("whatsapp web clients ws://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("/ws/chat (chatd-sim, WhatsApp-side users)"), "{stdout}");
    // Decrypted on the devices: text both ways, media with its hashes checked, receipts.
    assert!(stdout.contains("wa    <- 1-10853634039893@interop: \"Hi from a Partner app!\""), "{stdout}");
    assert!(stdout.contains("bob   <- 15550001234@s.whatsapp.net: \"Hello bob, from WhatsApp\""), "{stdout}");
    assert_eq!(stdout.matches("hashes match: true").count(), 2, "{stdout}");
    assert!(stdout.matches("delivery receipt from").count() >= 5, "{stdout}");
    assert!(stdout.contains("demo: done"), "{stdout}");
    // The metrics were taken with both Partner sessions up.
    assert!(stdout.contains("waproxy_upstream_logins_total{result=\"accepted\"} 2"), "{stdout}");
    assert!(stdout.contains("waproxy_sessions_active 2"), "{stdout}");
}

#[test]
fn check_config_accepts_the_documented_examples_and_names_bad_keys() {
    for example in ["proxy.toml", "local.toml"] {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/").to_owned() + example;
        let out = proxy().args(["check-config", "--config", &path]).output().unwrap();
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    }
    let dir = std::env::temp_dir().join(format!("proxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, key) in [
        ("[edge]\nlisten = \"127.0.0.1:1\"\n", "upstream"),
        (
            "[edge]\nlisten = \"127.0.0.1:1\"\nmax_frame_size = 0\n[upstream]\naddr = \"x:1\"\n[auth]\njwks_url = \"http://x/j\"\nissuer = \"i\"\n",
            "edge.max_frame_size",
        ),
        (
            "[edge]\nlisten = \"127.0.0.1:1\"\n[upstream]\naddr = \"nohost\"\n[auth]\njwks_url = \"http://x/j\"\nissuer = \"i\"\n",
            "upstream.addr",
        ),
        (
            "[edge]\nlisten = \"127.0.0.1:1\"\n[upstream]\naddr = \"x:1\"\nproxy_protocol = \"v3\"\n[auth]\njwks_url = \"http://x/j\"\nissuer = \"i\"\n",
            "proxy_protocol",
        ),
        ("[edge]\nlisten = \"127.0.0.1:1\"\nsurprise = 1\n", "surprise"),
    ] {
        assert_refused(&dir, text, key);
    }
}

/// check-config exits 1 on `text`, naming `key`.
fn assert_refused(dir: &std::path::Path, text: &str, key: &str) {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = proxy().args(["check-config", "--config", path.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(stderr.contains(key), "{text}: {stderr}");
}

/// A valid `[upstream]` and `[auth]` after `[edge]`/`[session]` lines.
fn with_sections(edge: &str, extra: &str) -> String {
    format!(
        "[edge]\nlisten = \"127.0.0.1:0\"\n{edge}[upstream]\naddr = \"127.0.0.1:1\"\nroot_public_key = \"{}\"\n\
         connect_timeout_ms = 100\n[auth]\njwks_url = \"http://127.0.0.1:1/jwks\"\nissuer = \"i\"\n{extra}",
        "11".repeat(32)
    )
}

#[test]
fn check_config_refuses_what_start_would_refuse() {
    let dir = std::env::temp_dir().join(format!("proxy-config-runs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("no-such.pem");
    let missing = missing.to_str().unwrap();
    for (edge, extra, key) in [
        // Values the relay and the upstream dial cannot run with: each closed every session with
        // `internal` after "configuration OK".
        ("", "[session]\nmax_buffered_bytes = 4096\n", "session.max_buffered_bytes"),
        ("", "[session]\nmax_buffered_bytes = 8191\n", "session.max_buffered_bytes"),
        ("max_frame_size = 1023\n", "", "edge.max_frame_size"),
        ("", "[session]\nidle_timeout_secs = 2592001\n", "session.idle_timeout_secs"),
        ("login_timeout_secs = 2592001\n", "", "edge.login_timeout_secs"),
    ] {
        assert_refused(&dir, &with_sections(edge, extra), key);
    }
    let zero_connect = with_sections("", "").replace("connect_timeout_ms = 100", "connect_timeout_ms = 0");
    assert_refused(&dir, &zero_connect, "upstream.connect_timeout_ms");
    let zero_handshake = with_sections("", "").replace("connect_timeout_ms = 100", "handshake_timeout_ms = 0");
    assert_refused(&dir, &zero_handshake, "upstream.handshake_timeout_ms");
    // What start reads, check-config reads: the TLS files and the JWKS URL's scheme.
    let tls = format!("[edge.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{missing}\"\nkey = \"{missing}\"\n");
    assert_refused(&dir, &with_sections("", "").replacen("[upstream]", &format!("{tls}[upstream]"), 1), "no-such.pem");
    let ftp = with_sections("", "").replace("http://127.0.0.1:1/jwks", "ftp://127.0.0.1:1/jwks");
    assert_refused(&dir, &ftp, "ftp://");
}

#[test]
fn a_config_check_config_accepts_starts_and_serves() {
    let dir = std::env::temp_dir().join(format!("proxy-config-starts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ok.toml");
    // The smallest values check-config accepts.
    let text = with_sections(
        "max_frame_size = 1024\nlogin_timeout_secs = 1\n",
        "[session]\nmax_buffered_bytes = 8192\nidle_timeout_secs = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    std::fs::write(&path, &text).unwrap();
    let out = proxy().args(["check-config", "--config", path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut child = proxy()
        .args(["--config", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = std::io::BufRead::lines(stdout).map_while(Result::ok);
    let started = lines.any(|l| l == "serving");
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "the accepted configuration started");
}
