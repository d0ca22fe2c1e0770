//! `interop-client` as a person uses it: separate processes with state directories, against the
//! proxy on its embedded default.

use std::process::{Command, Output, Stdio};

fn client(state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_interop-client"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("run interop-client")
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "stdout: {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_user_and_a_whatsapp_user_talk_through_the_cli() {
    let mut config = proxy::config::Config::local();
    config.edge.listen = Some("127.0.0.1:0".parse().unwrap());
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    let proxy = local_world::start(config).await.unwrap();
    let e = proxy.embedded.as_ref().unwrap();
    let (chatd, partner) = (e.sim.http_url(), e.partner.base_url().to_owned());
    let ca_file = e.ca_file.to_str().unwrap().to_owned();
    assert!(chatd.starts_with("https://") && partner.starts_with("https://"));
    let (edge, chat) = (proxy.tcp_addr.unwrap().to_string(), e.sim.chat_addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let (alice, wa) = (dir.path().join("alice"), dir.path().join("wa"));

    let out = tokio::task::spawn_blocking({
        let (alice, wa, chatd, partner, edge, chat, ca_file) =
            (alice.clone(), wa.clone(), chatd.clone(), partner.clone(), edge.clone(), chat.clone(), ca_file.clone());
        move || {
            // The embedded services are HTTPS with a local CA: the CLI is told to trust it once,
            // at enlistment, and remembers it in its state directory.
            let enlisted = ok(&client(
                &alice,
                &["enlist", "--user", "alice", "--partner", &partner, "--chatd", &chatd, "--ca-file", &ca_file],
            ));
            let alice_jid = enlisted.trim().strip_prefix("enlisted: ").unwrap().lines().next().unwrap().to_owned();
            // Enlisting twice into the same state is refused with advice.
            let again = client(
                &alice,
                &["enlist", "--user", "alice", "--partner", &partner, "--chatd", &chatd, "--ca-file", &ca_file],
            );
            assert!(!again.status.success());
            assert!(String::from_utf8_lossy(&again.stderr).contains("another --state directory"));
            let registered =
                ok(&client(&wa, &["register-wa", "--phone", "15557654321", "--chatd", &chatd, "--ca-file", &ca_file]));
            let wa_jid = registered.trim().strip_prefix("registered: ").unwrap().to_owned();
            assert!(ok(&client(&alice, &["--proxy", &edge, "login"])).contains(&alice_jid));

            // The WhatsApp user listens while alice sends a text and a file.
            let listener = Command::new(env!("CARGO_BIN_EXE_interop-client"))
                .args(["--state", wa.to_str().unwrap(), "--direct", &chat, "listen", "--for", "8", "--download"])
                .arg(wa.join("downloads"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let sent = ok(&client(&alice, &["--proxy", &edge, "send", "hello from the cli", "--to", &wa_jid]));
            assert!(sent.contains("delivered to"), "{sent}");
            let file = dir.path().join("note.txt");
            std::fs::write(&file, b"a small secret file").unwrap();
            ok(&client(&alice, &["--proxy", &edge, "send-media", file.to_str().unwrap(), "--to", &wa_jid]));
            let voice = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/voice-3s.ogg");
            ok(&client(&alice, &["--proxy", &edge, "send-media", "--voice", voice, "--to", &wa_jid]));
            // Not Ogg/Opus: refused with the reason, nothing sent.
            let wrong =
                client(&alice, &["--proxy", &edge, "send-media", "--voice", file.to_str().unwrap(), "--to", &wa_jid]);
            assert!(!wrong.status.success());
            let why = String::from_utf8_lossy(&wrong.stderr);
            assert!(why.contains("note.txt") && why.contains("not an Ogg file"), "{why}");
            let heard = ok(&listener.wait_with_output().unwrap());
            assert!(heard.contains(&format!("{alice_jid}: hello from the cli")), "{heard}");
            assert!(heard.contains("[text/plain, 19 bytes] note.txt"), "{heard}");
            assert_eq!(std::fs::read(wa.join("downloads/note.txt")).unwrap(), b"a small secret file");
            assert!(heard.contains(&format!("{alice_jid}: [voice note 3s]")), "{heard}");
            let saved = heard.lines().find_map(|l| l.strip_prefix("saved ").filter(|p| p.ends_with(".ogg"))).unwrap();
            assert_eq!(std::fs::read(saved).unwrap(), std::fs::read(voice).unwrap());

            // The read-receipt setting: on by default, changed and kept in the state directory.
            assert_eq!(ok(&client(&alice, &["settings"])).trim(), "read receipts: on");
            assert_eq!(ok(&client(&alice, &["settings", "--read-receipts", "off"])).trim(), "read receipts: off");
            assert_eq!(ok(&client(&alice, &["settings"])).trim(), "read receipts: off");
            assert!(!client(&alice, &["settings", "--read-receipts", "maybe"]).status.success());

            ok(&client(&alice, &["--proxy", &edge, "block", &wa_jid]));
            assert_eq!(ok(&client(&alice, &["--proxy", &edge, "blocklist"])).trim(), wa_jid);
            ok(&client(&alice, &["--proxy", &edge, "unblock", &wa_jid]));
            assert_eq!(ok(&client(&alice, &["--proxy", &edge, "blocklist"])).trim(), "");
            let refused = client(&alice, &["--proxy", &edge, "delete-account"]);
            assert!(!refused.status.success(), "deletion needs --yes");
            ok(&client(&alice, &["--proxy", &edge, "delete-account", "--yes"]));
            // Errors say what to do.
            let missing = client(&dir.path().join("nobody"), &["--proxy", &edge, "login"]);
            String::from_utf8_lossy(&missing.stderr).into_owned()
        }
    })
    .await
    .unwrap();
    assert!(out.contains("run `interop-client enlist` first"), "{out}");
}
