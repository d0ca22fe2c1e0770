//! `interop-proxy` as a process: config checking, and what it refuses to start.

use std::process::Command;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_interop-proxy"))
}

#[test]
fn check_config_accepts_the_documented_example_and_names_bad_keys() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/proxy.toml");
    let out = proxy().args(["check-config", "--config", path]).output().unwrap();
    assert!(out.status.success(), "proxy.toml: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
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

#[test]
fn the_local_world_is_another_binary() {
    let out = proxy().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no --config") && stderr.contains("interop-local"), "{stderr}");
    let local = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/local.toml");
    for command in ["check-config", "run"] {
        let out = proxy().args([command, "--config", local]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("embedded = true") && stderr.contains("interop-local --config"), "{stderr}");
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
