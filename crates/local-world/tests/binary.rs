//! `interop-local` as a process: the demo on the embedded default, and its configuration.

use std::process::Command;

fn local() -> Command {
    Command::new(env!("CARGO_BIN_EXE_interop-local"))
}

#[test]
fn demo_runs_real_traffic_through_the_proxy_and_exits() {
    let out = local().arg("demo").env("RUST_LOG", "warn").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("clients connect to   tcp://127.0.0.1:"), "{stdout}");
    // The simulator's WebSocket chat listener, for WhatsApp Web client libraries (issue 13).
    assert!(stdout.contains("whatsapp web clients ws://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("/ws/chat (chatd-sim, WhatsApp-side users)"), "{stdout}");
    // Decrypted on the devices: text both ways, media with its hashes checked, receipts.
    assert!(stdout.contains("wa    <- 1-10853634039893@interop: \"Hi from a Partner app!\""), "{stdout}");
    assert!(stdout.contains("bob   <- 15550001234@s.whatsapp.net: \"Hello bob, from WhatsApp\""), "{stdout}");
    assert_eq!(stdout.matches("hashes match: true").count(), 4, "{stdout}");
    // A voice note and a video, shown as the receiving app presents them (issue 13).
    assert!(stdout.contains("wa    <- 1-10853634039893@interop: [voice note 3s] (audio/ogg; codecs=opus)"), "{stdout}");
    assert!(
        stdout.contains("bob   <- 15550001234@s.whatsapp.net: [video 7s] the interop launch (video/mp4)"),
        "{stdout}"
    );
    assert!(stdout.matches("delivery receipt from").count() >= 7, "{stdout}");
    assert!(stdout.contains("demo: done"), "{stdout}");
    // The metrics were taken with both Partner sessions up.
    assert!(stdout.contains("waproxy_upstream_logins_total{result=\"accepted\"} 2"), "{stdout}");
    assert!(stdout.contains("waproxy_sessions_active 2"), "{stdout}");
}

#[test]
fn check_config_accepts_the_local_example() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/local.toml");
    let out = local().args(["check-config", "--config", path]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK (embedded: true)"));
}
