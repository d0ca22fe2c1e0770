//! `interop-client`: a Partner (or simulated WhatsApp) user on the command line. The device's
//! keys, sessions and thread live in the `--state` directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};
use client::client::{enlist_partner, register_whatsapp};
use client::listen::{ListenOptions, PushOptions, Status, listen};
use client::media::MediaKind;
use client::message::MediaRef;
use client::{Account, Client, Content, Event, Route, Store};
use error_report::Report;

#[derive(Parser)]
#[command(
    name = "interop-client",
    version,
    about = "A Partner messaging client with Signal E2EE, through the interop proxy"
)]
struct Cli {
    /// The device's state directory (keys, sessions, thread). Keep it private.
    #[arg(long, global = true, default_value = ".interop-client")]
    state: PathBuf,
    /// The proxy's edge (host:port). Partner users connect here.
    #[arg(long, global = true)]
    proxy: Option<SocketAddr>,
    /// Connect straight to chatd (host:port) instead of the proxy (WhatsApp-side users).
    #[arg(long, global = true, conflicts_with = "proxy")]
    direct: Option<SocketAddr>,
    /// chatd's certificate root key (hex) for --direct; by default the simulator's published one.
    #[arg(long, global = true)]
    root: Option<String>,
    /// PEM CA certificates trusted for the HTTPS services (partner server, chatd's enlistment
    /// and media host) besides the platform's roots: a private PKI, or the CA the embedded
    /// proxy prints at start. Remembered in the state directory by enlist / register-wa.
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create this device and enlist it as a Partner user.
    Enlist {
        /// The Partner user identifier (what the user is known as on your service).
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 1)]
        integrator: u16,
        /// The partner server (tokens, push, media).
        #[arg(long)]
        partner: String,
        /// chatd's HTTP base (enlistment API, media host).
        #[arg(long)]
        chatd: String,
    },
    /// Create this device as a WhatsApp-side user of the simulator (for testing).
    RegisterWa {
        #[arg(long)]
        phone: u64,
        #[arg(long)]
        chatd: String,
    },
    /// Log in once, publish one-time prekeys, and print the account.
    Login,
    /// Send an end-to-end encrypted text.
    Send {
        text: String,
        #[arg(long)]
        to: String,
    },
    /// Send a file end-to-end encrypted (images, videos and audio by type, other files as
    /// documents), a voice note (--voice) or a video (--video).
    #[command(group(ArgGroup::new("what").required(true).args(["file", "voice", "video"])))]
    SendMedia {
        file: Option<PathBuf>,
        /// A recorded voice message: an Ogg/Opus file (.ogg, .opus), shown as a voice note.
        #[arg(long, value_name = "FILE.ogg")]
        voice: Option<PathBuf>,
        /// A video: an MP4 file.
        #[arg(long, value_name = "FILE.mp4")]
        video: Option<PathBuf>,
        /// The video's length in seconds, shown to the recipient.
        #[arg(long, requires = "video")]
        seconds: Option<u32>,
        #[arg(long)]
        to: String,
        /// MIME type (guessed from the extension when absent).
        #[arg(long, conflicts_with_all = ["voice", "video"])]
        mime: Option<String>,
        #[arg(long, conflicts_with = "voice")]
        caption: Option<String>,
    },
    /// Show or change this user's settings (kept on the device).
    Settings {
        /// Send read receipts for the messages you are shown, and see your contacts' (off:
        /// neither, as WhatsApp does for 1:1 chats).
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        read_receipts: Option<bool>,
    },
    /// Print incoming messages, receipts and notices as they arrive.
    Listen {
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long = "for")]
        seconds: Option<u64>,
        /// Sleep when idle and wake on the partner server's push (like a phone app).
        #[arg(long)]
        push: bool,
        /// Save received media into this directory.
        #[arg(long)]
        download: Option<PathBuf>,
    },
    /// Block a WhatsApp user.
    Block { jid: String },
    /// Unblock a WhatsApp user.
    Unblock { jid: String },
    /// List blocked users.
    Blocklist,
    /// Forget the secure session with a peer ("reset secure session"; also what a device that
    /// lost its state looks like): the next message either way starts a new one, through a retry
    /// receipt if the peer still uses the old session.
    ResetSession { jid: String },
    /// Delete this account at WhatsApp (opt out of interop).
    DeleteAccount {
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("say on or off".into()),
    }
}

fn mime_of(path: &Path) -> String {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "ogg" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
    .to_owned()
}

async fn route(cli: &Cli, store: &Store) -> Result<Route, String> {
    if let Some(addr) = cli.direct {
        let root = match &cli.root {
            Some(hex_key) => {
                hex::decode(hex_key).ok().and_then(|b| b.try_into().ok()).ok_or("--root must be 64 hex characters")?
            }
            None => client::services::Services::for_store(store)
                .map_err(|e| Report(&e).to_string())?
                .chatd_root(&store.endpoints().chatd_http)
                .await
                .map_err(|e| format!("{} (or give chatd's root key with --root)", Report(&e)))?,
        };
        return Ok(Route::Direct { addr, root });
    }
    match (cli.proxy, store.account()) {
        (Some(addr), _) => Ok(Route::Edge { addr, tls: None }),
        (None, Some(Account::WhatsApp { .. })) => Err("WhatsApp-side users connect with --direct CHATD_ADDR".into()),
        (None, _) => Err("say where the proxy is: --proxy HOST:PORT".into()),
    }
}

fn print_event(e: &Event, download: Option<&Path>, saved: &mut Vec<(String, MediaRef)>) {
    match e {
        Event::Message { from, content: Content::Text(t), offline, .. } => {
            println!("{from}: {t}{}", if *offline { " (sent while you were away)" } else { "" })
        }
        Event::Message { from, id, content: Content::Media(m), .. } => {
            match m.kind {
                MediaKind::Image | MediaKind::Document => {
                    println!(
                        "{from}: [{}, {} bytes] {}",
                        m.mimetype,
                        m.file_length,
                        m.label.clone().unwrap_or_default()
                    )
                }
                _ => println!("{from}: {}", m.summary()),
            }
            if download.is_some() {
                saved.push((id.clone(), m.clone()));
            }
        }
        Event::Message { from, .. } => println!("{from}: [a message this client cannot show]"),
        Event::Delivered { peer, id } => println!("  ✓ delivered to {peer} ({id})"),
        Event::Read { peer, id } => println!("  ✓✓ read by {peer} ({id})"),
        Event::IdentityChanged { peer } => {
            println!("  ! {peer}'s security code changed (new phone or reinstall); verify it if you want")
        }
        Event::Undecryptable { from, id, reason } => {
            println!("  … a message from {from} ({id}) could not be decrypted ({reason}); asked them to resend")
        }
        Event::Resent { peer, id, .. } => println!("  ↻ re-sent {id} to {peer} at their request"),
        Event::Closed(r) => println!("  connection closed: {r}"),
    }
}

/// `--ca-file`, when given, replaces the one the store remembers.
fn apply_ca_file(cli: &Cli, store: &mut Store) {
    if let Some(ca) = &cli.ca_file {
        let mut endpoints = store.endpoints().clone();
        endpoints.ca_file = Some(std::path::absolute(ca).unwrap_or_else(|_| ca.clone()));
        store.set_endpoints(endpoints);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let e = |e: client::ClientError| Report(&e).to_string();
    match &cli.command {
        Command::Enlist { user, integrator, partner, chatd } => {
            let mut store = Store::create(Some(&cli.state)).map_err(|e| Report(&e).to_string())?;
            apply_ca_file(&cli, &mut store);
            eprintln!("enlisting {user} with integrator {integrator}...");
            let jid = enlist_partner(&mut store, chatd, partner, *integrator, user).await.map_err(e)?;
            println!("enlisted: {jid}");
            println!("next: interop-client --state {} --proxy HOST:PORT login", cli.state.display());
            return Ok(());
        }
        Command::RegisterWa { phone, chatd } => {
            let mut store = Store::create(Some(&cli.state)).map_err(|e| Report(&e).to_string())?;
            apply_ca_file(&cli, &mut store);
            let jid = register_whatsapp(&mut store, chatd, *phone).await.map_err(e)?;
            println!("registered: {jid}");
            return Ok(());
        }
        _ => {}
    }
    let mut store = Store::open(&cli.state).map_err(|e| Report(&e).to_string())?;
    apply_ca_file(&cli, &mut store);
    if let Command::Settings { read_receipts } = &cli.command {
        if let Some(on) = read_receipts {
            store.set_read_receipts(*on);
            store.save().map_err(|e| Report(&e).to_string())?;
        }
        let on_off = |on: bool| if on { "on" } else { "off" };
        println!("read receipts: {}", on_off(store.settings().read_receipts));
        return Ok(());
    }
    let route = route(&cli, &store).await?;
    if let Command::Listen { seconds, push, download } = &cli.command {
        let mut opts = ListenOptions::new(route.clone());
        opts.duration = seconds.map(Duration::from_secs);
        // What this prints is shown to the user.
        opts.mark_read = true;
        if *push {
            opts.push = Some(PushOptions { idle: Duration::from_secs(5) });
        }
        let mut media = Vec::new();
        eprintln!("listening as {} (Ctrl-C to stop)", store.account().map(Account::jid).unwrap_or_default());
        let store = listen(
            store,
            opts,
            |ev| print_event(ev, download.as_deref(), &mut media),
            |s| match s {
                Status::Connected => eprintln!("  connected"),
                Status::Reconnecting { reason, after } => eprintln!("  {reason}; reconnecting in {after:.1?}"),
                Status::ReEnlisted { jid } => eprintln!("  the account was removed; enlisted again as {jid}"),
                Status::Sleeping => eprintln!("  idle: disconnected, waiting for a push"),
                Status::WokenByPush => eprintln!("  push received: connecting"),
            },
        )
        .await
        .map_err(e)?;
        if let (Some(dir), false) = (download, media.is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {}", dir.display(), Report(&e)))?;
            let mut client = Client::login(store, &route).await.map_err(|f| Report(&f.error).to_string())?;
            for (id, m) in &media {
                let bytes = client.download(m).await.map_err(e)?;
                let path = dir.join(m.file_name(id));
                std::fs::write(&path, bytes).map_err(|e| format!("{}: {}", path.display(), Report(&e)))?;
                println!("saved {}", path.display());
            }
            client.close().await;
        }
        return Ok(());
    }
    let mut client = Client::login(store, &route).await.map_err(|f| Report(&f.error).to_string())?;
    let outcome = match &cli.command {
        Command::Login => {
            println!("logged in as {}", client.jid());
            Ok(())
        }
        Command::Send { text, to } => match client.send_text(to, text).await {
            Ok(id) => {
                println!("sent {id} to {to}");
                wait_delivery(&mut client, &id).await;
                Ok(())
            }
            Err(err) => Err(e(err)),
        },
        Command::SendMedia { file, voice, video, seconds, to, mime, caption } => {
            let path = file.as_ref().or(voice.as_ref()).or(video.as_ref()).ok_or("say which file to send")?;
            let data = std::fs::read(path).map_err(|e| format!("{}: {}", path.display(), Report(&e)))?;
            let sent = if voice.is_some() {
                client.send_voice_note(to, &data).await
            } else if video.is_some() {
                client.send_video(to, &data, caption.clone(), *seconds).await
            } else {
                let mime = mime.clone().unwrap_or_else(|| mime_of(path));
                let label = caption.clone().or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()));
                client.send_media(to, &data, &mime, label).await
            };
            match sent {
                Ok(id) => {
                    println!("sent {} ({} bytes, encrypted) as {id} to {to}", path.display(), data.len());
                    wait_delivery(&mut client, &id).await;
                    Ok(())
                }
                Err(err) => Err(format!("{}: {}", path.display(), e(err))),
            }
        }
        Command::Block { jid } => client.set_blocked(jid, true).await.map(|_| println!("blocked {jid}")).map_err(e),
        Command::Unblock { jid } => {
            client.set_blocked(jid, false).await.map(|_| println!("unblocked {jid}")).map_err(e)
        }
        Command::ResetSession { jid } => {
            client.forget_session(jid).map(|_| println!("forgot the session with {jid}")).map_err(e)
        }
        Command::Blocklist => client.blocklist().await.map(|l| l.iter().for_each(|j| println!("{j}"))).map_err(e),
        Command::DeleteAccount { yes: false } => {
            Err("this deletes the account at WhatsApp; run again with --yes".into())
        }
        Command::DeleteAccount { yes: true } => {
            return client.delete_account().await.map(|_| println!("account deleted")).map_err(e);
        }
        Command::Enlist { .. } | Command::RegisterWa { .. } | Command::Listen { .. } | Command::Settings { .. } => {
            Ok(())
        }
    };
    client.close().await;
    outcome
}

/// Waits briefly for the delivery receipt so the user sees it (the recipient may be offline).
async fn wait_delivery(client: &mut Client, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(ev)) = client.next_event(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        if let Event::Delivered { id: got, peer } = &ev
            && got == id
        {
            println!("  ✓ delivered to {peer}");
            return;
        }
    }
    println!("  (not delivered yet: the recipient is offline; chatd keeps it for them)");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interop-client: {e}");
            ExitCode::FAILURE
        }
    }
}
