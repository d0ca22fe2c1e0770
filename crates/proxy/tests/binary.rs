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
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = proxy().args(["check-config", "--config", path.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(stderr.contains(key), "{text}: {stderr}");
    }
}
