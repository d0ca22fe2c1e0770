//! The system under test: the chatd simulator, the partner server and the proxy, started as
//! separate processes of the release binaries (each has its own fd limit and its own /proc
//! entry), or running ones given on the command line; and HAProxy for the relay baseline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use error_report::Report;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::error::{Error, Result};

const STARTUP: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Running services the harness does not start (all on loopback).
#[derive(Debug, Clone)]
pub struct External {
    pub proxy_addr: SocketAddr,
    pub proxy_admin: Option<SocketAddr>,
    pub proxy_pid: Option<u32>,
    pub sim_http: String,
    pub sim_chat: SocketAddr,
    pub partner_url: String,
}

/// A pooled HTTP client for the admin APIs: plain HTTP, or HTTPS (an embedded default's
/// simulator, whose local CA this process trusts; the platform's roots otherwise).
#[derive(Clone)]
pub struct Http(Client<HttpsConnector<HttpConnector>, Full<Bytes>>);

impl Default for Http {
    fn default() -> Self {
        // No CA file to read: building on the platform store cannot fail.
        Http(tls_config::https_client(&tls_config::ClientTls::default()).expect("a TLS client on the platform's roots"))
    }
}

impl Http {
    /// Sends JSON (or nothing, for GET) and parses the JSON answer; non-2xx is an error.
    pub async fn json(&self, method: &str, url: &str, body: Option<&serde_json::Value>) -> Result<serde_json::Value> {
        let bytes = self.request(method, url, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Http { url: url.to_owned(), detail: format!("not JSON: {}", Report(&e)) })
    }

    /// The value of the first metric line starting with `name` in a Prometheus text page.
    pub async fn metric(&self, url: &str, name: &str) -> Result<Option<f64>> {
        let bytes = self.request("GET", url, None).await?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok()))
    }

    async fn request(&self, method: &str, url: &str, body: Option<&serde_json::Value>) -> Result<Bytes> {
        let err = |detail: String| Error::Http { url: url.to_owned(), detail };
        let req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))
            .map_err(|e| err(e.to_string()))?;
        let resp = tokio::time::timeout(HTTP_TIMEOUT, self.0.request(req))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(Report(&e).to_string()))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| err(Report(&e).to_string()))?.to_bytes();
        if !status.is_success() {
            return Err(err(format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]))));
        }
        Ok(bytes)
    }
}

/// HAProxy in TCP mode in front of the simulator's chat port.
pub struct Haproxy {
    pub addr: SocketAddr,
    pub pid: u32,
    pub version: String,
}

/// Everything a scenario talks to.
pub struct Env {
    pub sim_http: String,
    pub sim_chat: SocketAddr,
    pub root: [u8; 32],
    pub partner_url: String,
    pub proxy_addr: SocketAddr,
    /// The proxy's admin listener (/metrics), when known.
    pub proxy_admin: Option<SocketAddr>,
    pub proxy_pid: Option<u32>,
    pub sim_pid: Option<u32>,
    pub haproxy: Option<Haproxy>,
    /// Why there is no HAProxy baseline, when there is none.
    pub haproxy_skipped: Option<String>,
    pub http: Http,
    children: Vec<Child>,
}

/// How to start the services.
pub struct StartOptions {
    /// Where `chatd-sim`, `partner-server` and `interop-proxy` are (default: next to this binary).
    pub bin_dir: PathBuf,
    /// Where configurations and logs go.
    pub work_dir: PathBuf,
    pub haproxy: bool,
    /// A command the proxy runs under, e.g. `valgrind --tool=callgrind` (profiling).
    pub proxy_wrapper: Vec<String>,
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn spawn(what: &'static str, bin: &Path, args: &[&str], log: &Path) -> Result<Child> {
    spawn_wrapped(what, &[], bin, args, log)
}

fn spawn_wrapped(what: &'static str, wrapper: &[String], bin: &Path, args: &[&str], log: &Path) -> Result<Child> {
    if !bin.exists() {
        return Err(Error::Startup {
            what,
            detail: format!(
                "{} not found; build it: cargo build --release -p chatd-sim -p partner-server -p proxy",
                bin.display()
            ),
        });
    }
    let log = std::fs::File::create(log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Startup { what, detail: Report(&e).to_string() })
}

/// Reads stdout lines until every key has been seen (`key` followed by the value to its right),
/// then keeps draining stdout in the background so the child never blocks on a full pipe.
async fn read_banner(what: &'static str, child: &mut Child, keys: &[&str]) -> Result<Vec<String>> {
    let stdout = child.stdout.take().ok_or(Error::Startup { what, detail: "no stdout".into() })?;
    let mut lines = BufReader::new(stdout).lines();
    let mut found: Vec<Option<String>> = vec![None; keys.len()];
    let read = async {
        while found.iter().any(Option::is_none) {
            let Ok(Some(line)) = lines.next_line().await else {
                return Err(Error::Startup { what, detail: "exited before it was ready (see its log)".into() });
            };
            for (k, slot) in keys.iter().zip(found.iter_mut()) {
                if let Some(v) = line.strip_prefix(k) {
                    *slot = Some(v.trim().to_owned());
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(STARTUP, read)
        .await
        .map_err(|_| Error::Startup { what, detail: "not ready in 30 s".into() })??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(found.into_iter().flatten().collect())
}

fn parse_addr(what: &'static str, s: &str) -> Result<SocketAddr> {
    let s = s.trim_start_matches("tcp://").trim_start_matches("http://");
    let s = s.split('/').next().unwrap_or_default();
    s.parse().map_err(|_| Error::Startup { what, detail: format!("bad address {s:?}") })
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("picking a port", e))?;
    Ok(l.local_addr().map_err(|e| Error::io("picking a port", e))?.port())
}

async fn wait_connectable(what: &'static str, addr: SocketAddr) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STARTUP;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::Startup { what, detail: format!("{addr} never accepted a connection") })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

impl Env {
    /// Starts the partner server, the simulator and the proxy (and HAProxy when asked and
    /// installed), wired to each other on ephemeral loopback ports.
    pub async fn start(opts: &StartOptions) -> Result<Env> {
        let dir = &opts.work_dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let bin = |name: &str| opts.bin_dir.join(name);

        let partner_cfg = dir.join("partner-server.toml");
        // Tokens outlive a day-long soak; the harness asks for many at once. Plain HTTP: the
        // harness measures the proxy's edge and chatd paths, not the Partner's HTTPS.
        write(
            &partner_cfg,
            "plain_http = true\nlisten = \"127.0.0.1:0\"\naudience = \"whatsapp\"\ntoken_ttl_secs = 86400\n\n[limits]\nmax_connections = 1024\n",
        )?;
        let partner_cfg_s = partner_cfg.to_string_lossy().into_owned();
        let mut partner = spawn(
            "partner-server",
            &bin("partner-server"),
            &["--config", &partner_cfg_s],
            &dir.join("partner-server.log"),
        )?;
        let b = read_banner("partner-server", &mut partner, &["base_url:", "jwks_url:"]).await?;
        let (partner_url, jwks_url) = (b[0].clone(), b[1].clone());

        let sim_cfg = dir.join("chatd-sim.toml");
        write(
            &sim_cfg,
            &format!(
                "[chat]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
                 [limits]\nmax_accounts = 1000000\nmax_connections = 100000\n\n\
                 [[integrators]]\nid = 1\nbase_url = \"{partner_url}\"\nissuer = \"{partner_url}\"\naudience = \"whatsapp\"\n"
            ),
        )?;
        let sim_cfg_s = sim_cfg.to_string_lossy().into_owned();
        let mut sim = spawn("chatd-sim", &bin("chatd-sim"), &["--config", &sim_cfg_s], &dir.join("chatd-sim.log"))?;
        let b = read_banner("chatd-sim", &mut sim, &["chat_addr=", "http_url=", "root_public_key="]).await?;
        let sim_chat = parse_addr("chatd-sim", &b[0])?;
        let sim_http = b[1].clone();
        let root_hex = b[2].clone();

        let proxy_cfg = dir.join("interop-proxy.toml");
        write(
            &proxy_cfg,
            &format!(
                "[edge]\nlisten = \"127.0.0.1:0\"\n\n\
                 [upstream]\naddr = \"{sim_chat}\"\nproxy_protocol = \"v1\"\nroot_public_key = \"{root_hex}\"\n\n\
                 [auth]\njwks_url = \"{jwks_url}\"\nissuer = \"{partner_url}\"\naudience = \"whatsapp\"\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\n\
                 # Every load client is local: no per-IP connection rate limit.\n\
                 [limits]\nmax_sessions = 100000\nmax_concurrent_handshakes = 1024\nper_ip_connections_per_sec = 0\n\n\
                 [drain]\nwindow_secs = 1\ndeadline_secs = 3\n"
            ),
        )?;
        let proxy_cfg_s = proxy_cfg.to_string_lossy().into_owned();
        let mut proxy = spawn_wrapped(
            "interop-proxy",
            &opts.proxy_wrapper,
            &bin("interop-proxy"),
            &["--config", &proxy_cfg_s, "run"],
            &dir.join("interop-proxy.log"),
        )?;
        let b =
            read_banner("interop-proxy", &mut proxy, &["clients connect to   tcp://", "metrics at           http://"])
                .await?;
        let proxy_addr = parse_addr("interop-proxy", &b[0])?;
        let proxy_admin = parse_addr("interop-proxy", b[1].split_whitespace().next().unwrap_or_default())?;

        let root = hex::decode(&root_hex)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or(Error::Startup { what: "chatd-sim", detail: "bad root_public_key".into() })?;
        let mut env = Env {
            sim_http,
            sim_chat,
            root,
            partner_url,
            proxy_addr,
            proxy_admin: Some(proxy_admin),
            proxy_pid: proxy.id(),
            sim_pid: sim.id(),
            haproxy: None,
            haproxy_skipped: None,
            http: Http::default(),
            children: vec![proxy, sim, partner],
        };
        if opts.haproxy {
            env.start_haproxy(dir).await?;
        } else {
            env.haproxy_skipped = Some("turned off with --no-haproxy".into());
        }
        Ok(env)
    }

    /// Targets running services.
    pub async fn external(ext: &External, haproxy: bool, work_dir: &Path) -> Result<Env> {
        let http = Http::default();
        let info = http.json("GET", &format!("{}/admin/info", ext.sim_http), None).await?;
        let root = info["root_public_key"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| Error::Invalid("the simulator's /admin/info has no root_public_key".into()))?;
        let mut env = Env {
            sim_http: ext.sim_http.trim_end_matches('/').to_owned(),
            sim_chat: ext.sim_chat,
            root,
            partner_url: ext.partner_url.trim_end_matches('/').to_owned(),
            proxy_addr: ext.proxy_addr,
            proxy_admin: ext.proxy_admin,
            proxy_pid: ext.proxy_pid,
            sim_pid: None,
            haproxy: None,
            haproxy_skipped: None,
            http,
            children: Vec::new(),
        };
        if haproxy {
            std::fs::create_dir_all(work_dir).map_err(|e| Error::io(format!("creating {}", work_dir.display()), e))?;
            env.start_haproxy(work_dir).await?;
        } else {
            env.haproxy_skipped = Some("turned off with --no-haproxy".into());
        }
        Ok(env)
    }

    /// HAProxy with WhatsApp's published proxy settings: TCP mode, 4 KiB buffers, the client
    /// address forwarded to chatd in a PROXY v1 header (as the proxy does).
    async fn start_haproxy(&mut self, dir: &Path) -> Result<()> {
        let Some(bin) = find_on_path("haproxy") else {
            let why = "haproxy is not installed (run loadtest/install-deps.sh); skipping the HAProxy baseline";
            eprintln!("loadtest: {why}");
            self.haproxy_skipped = Some(why.into());
            return Ok(());
        };
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // Two fds per relayed connection, under this process's limit (which HAProxy inherits).
        let maxconn = (crate::procfs::raise_fd_limit()?.saturating_sub(200) / 2).max(100);
        let cfg = dir.join("haproxy.cfg");
        write(
            &cfg,
            &format!(
                "global\n    maxconn {maxconn}\n    tune.bufsize 4096\n\n\
                 defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 200s\n    timeout server 200s\n\
                 \x20   timeout client-fin 1s\n    timeout server-fin 1s\n\n\
                 frontend chat\n    bind {addr}\n    maxconn {maxconn}\n    default_backend chatd\n\n\
                 backend chatd\n    server sim {} send-proxy\n",
                self.sim_chat
            ),
        )?;
        let version = std::process::Command::new(&bin)
            .arg("-v")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_default();
        let cfg_s = cfg.to_string_lossy().into_owned();
        let child = spawn("haproxy", &bin, &["-f", &cfg_s, "-db"], &dir.join("haproxy.log"))?;
        let pid = child.id().ok_or(Error::Startup { what: "haproxy", detail: "exited at once".into() })?;
        self.children.push(child);
        wait_connectable("haproxy", addr).await?;
        self.haproxy = Some(Haproxy { addr, pid, version });
        Ok(())
    }

    /// Waits until the simulator has no live connection (between phases that reuse accounts).
    pub async fn wait_sim_idle(&self, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let stats = self.http.json("GET", &format!("{}/admin/stats", self.sim_http), None).await?;
            if stats["live_connections"].as_u64() == Some(0) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Invalid(format!(
                    "the simulator still has live connections after {limit:?}: {stats}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the children: SIGTERM, then SIGKILL after a few seconds.
    pub async fn shutdown(mut self) {
        for child in &mut self.children {
            if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}
