//! The simulator's HTTP side: the enlistment API, the push JWKS, media, and the observation and
//! admin API that tests and the load harness use. HTTP/1.1 and HTTP/2 on one port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use error_report::Report;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jwks::SigningKeys;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::debug;

use crate::account::{Account, AccountKind, Device, KeyBundle, MAX_DEVICES, SignedPreKey};
use crate::auth::TokenVerifier;
use crate::chat::handler::signed_prekey_valid;
use crate::clock::ShiftedClock;
use crate::enlist;
use crate::media::MediaStore;
use crate::sim::Sim;

/// What the HTTP handlers share.
pub struct HttpState {
    pub sim: Arc<Sim>,
    pub verifier: Arc<dyn TokenVerifier>,
    pub push_keys: Arc<SigningKeys>,
    pub media: MediaStore,
    /// Set when the clock can be moved through the admin API.
    pub clock: Option<Arc<ShiftedClock>>,
    pub client: PartnerClient,
}

/// The client the simulator reaches Partner servers with (push, media): HTTPS or HTTP by URL.
pub type PartnerClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Time a client gets to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Resp = Response<Full<Bytes>>;

/// Serves HTTP (HTTPS with `tls`: TLS 1.3, HTTP/1.1 or HTTP/2 by ALPN) until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, state: Arc<HttpState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                None => builder.serve_connection(TokioIo::new(stream), service).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => builder.serve_connection(TokioIo::new(stream), service).await,
                    Ok(Err(e)) => {
                        debug!(error = %Report(&e), "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        debug!("TLS handshake timed out");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                debug!(error = %Report(e.as_ref()), "http connection ended");
            }
        });
    }
}

fn respond(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, reason: &str) -> Resp {
    respond(status, json!({ "error": reason }))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn body(state: &HttpState, req: Request<Incoming>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), state.sim.config.http.max_body_bytes).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large")),
    }
}

async fn handle(state: &HttpState, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::POST, ["3p", "interop_reg"]) => match body(state, req).await {
            Ok(b) => {
                let answer = enlist::enlist(&state.sim, state.verifier.as_ref(), &b).await;
                respond(StatusCode::OK, serde_json::to_value(answer).unwrap_or_default())
            }
            Err(r) => r,
        },
        (Method::GET, [".well-known", "jwks"]) => respond(StatusCode::OK, state.push_keys.jwks()),
        (Method::GET, ["livez"]) => respond(StatusCode::OK, json!({ "status": "ok" })),
        (Method::GET, ["admin", "info"]) => respond(
            StatusCode::OK,
            json!({
                "root_public_key": hex::encode(state.sim.root_public),
                "server_static_public_key": hex::encode(state.sim.server_static_public),
                "now": state.sim.clock.now(),
            }),
        ),
        (Method::GET, ["admin", "stats"]) => {
            let t = &state.sim.totals;
            let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            respond(
                StatusCode::OK,
                json!({
                    "accounts": state.sim.store.len(),
                    "live_connections": state.sim.live_count(),
                    "connections_accepted": get(&t.connections_accepted),
                    "handshakes_failed": get(&t.handshakes_failed),
                    "handshakes": {
                        "XX": get(&t.handshakes_xx),
                        "IK": get(&t.handshakes_ik),
                        "XXfallback": get(&t.handshakes_xx_fallback),
                    },
                    "logins_ok": get(&t.logins_ok),
                    "logins_failed": get(&t.logins_failed),
                    "stanzas_routed": get(&t.stanzas_routed),
                    "pushes_sent": get(&t.pushes_sent),
                    "pushes_failed": get(&t.pushes_failed),
                    "enlistments": get(&t.enlistments),
                    "partner_tls_failures": get(&t.partner_tls_failures),
                    "partner_jwks_tls_failures": state.verifier.jwks_tls_failures(),
                }),
            )
        }
        (Method::GET, ["admin", "accounts", jid, "connections"]) => {
            respond(StatusCode::OK, serde_json::to_value(state.sim.observed(&percent_decode(jid))).unwrap_or_default())
        }
        (Method::GET, ["admin", "accounts", jid, "mailbox"]) => {
            let mut entries = None;
            state.sim.store.with(&percent_decode(jid), &mut |a| entries = Some(a.mailbox_entries()));
            match entries {
                Some(n) => respond(StatusCode::OK, json!({ "entries": n })),
                None => error(StatusCode::NOT_FOUND, "no such account"),
            }
        }
        (Method::POST, ["admin", "wa-users"]) => match body(state, req).await {
            Ok(b) => provision_wa_user(&state.sim, &b),
            Err(r) => r,
        },
        (Method::POST, ["admin", "interop-users"]) => match body(state, req).await {
            Ok(b) => enlist_interop_users(&state.sim, &b),
            Err(r) => r,
        },
        (Method::POST, ["admin", "sweep"]) => respond(StatusCode::OK, json!({ "removed": state.sim.sweep() })),
        (Method::POST, ["admin", "clock", "advance"]) => {
            let Some(clock) = &state.clock else {
                return error(StatusCode::CONFLICT, "this simulator runs on the system clock");
            };
            let secs = match body(state, req).await.map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
                Ok(Ok(v)) => v["secs"].as_u64(),
                _ => None,
            };
            let Some(secs) = secs else { return error(StatusCode::BAD_REQUEST, "expected {\"secs\": N}") };
            clock.advance(secs);
            respond(StatusCode::OK, json!({ "now": state.sim.clock.now(), "removed": state.sim.sweep() }))
        }
        // `/mms/{type}` (this repository's clients) or WhatsApp's `/mms/{type}/{token}?auth=..&token=..`
        // (Baileys, whatsmeow), where the token is base64url(SHA-256(body)) and is checked.
        (Method::POST, ["mms", _kind] | ["mms", _kind, _]) => {
            let token = segments.get(2).map(|t| percent_decode(t));
            let content_type = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            match body(state, req).await {
                Ok(b) if token.is_some_and(|t| !upload_token_matches(&t, &b)) => {
                    error(StatusCode::BAD_REQUEST, "upload token is not the body's base64url SHA-256")
                }
                Ok(b) => match state.media.put(content_type, b) {
                    Some(direct_path) => {
                        let base = state.sim.config.http.public_url.clone().unwrap_or_default();
                        respond(
                            StatusCode::OK,
                            json!({ "direct_path": direct_path, "url": format!("{base}{direct_path}") }),
                        )
                    }
                    None => error(StatusCode::PAYLOAD_TOO_LARGE, "object too large"),
                },
                Err(r) => r,
            }
        }
        (Method::GET, ["v", ..]) => match state.media.get(&path) {
            Some(o) => {
                let mut r = Response::new(Full::new(o.bytes.clone()));
                let headers = r.headers_mut();
                if let Ok(v) = o.content_type.parse() {
                    headers.insert("content-type", v);
                }
                headers.insert("content-length", o.bytes.len().into());
                r
            }
            None => error(StatusCode::NOT_FOUND, "no such media"),
        },
        (Method::GET, ["interop", "whatsapp", "download", integrator, reference, ..]) => {
            partner_media(state, integrator, reference).await
        }
        (_, ["3p", ..] | ["admin", ..] | ["mms", ..]) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Fetches `{partner base}/{storage_reference}` and passes it back with its type and length.
/// WhatsApp's upload token: the encrypted body's SHA-256, base64url (padding optional).
fn upload_token_matches(token: &str, body: &[u8]) -> bool {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).is_ok_and(|t| t == digest.as_ref())
}

async fn partner_media(state: &HttpState, integrator: &str, reference: &str) -> Resp {
    let Some(cfg) =
        integrator.parse::<u16>().ok().and_then(|id| state.sim.config.integrators.iter().find(|i| i.id == id))
    else {
        return error(StatusCode::NOT_FOUND, "unknown integrator");
    };
    if reference.is_empty() || !reference.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return error(StatusCode::BAD_REQUEST, "bad storage reference");
    }
    let url = format!("{}/{}", cfg.base_url.trim_end_matches('/'), reference);
    let Ok(request) = Request::get(&url).body(Full::new(Bytes::new())) else {
        return error(StatusCode::BAD_REQUEST, "bad storage reference");
    };
    let response = match tokio::time::timeout(Duration::from_secs(10), state.client.request(request)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if tls_config::find_tls_error(&e).is_some() => {
            state.sim.totals.partner_tls_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(url, error = %Report(&e), "partner media: TLS with the Partner failed");
            return error(StatusCode::BAD_GATEWAY, "partner server certificate refused");
        }
        _ => return error(StatusCode::BAD_GATEWAY, "partner server unreachable"),
    };
    if !response.status().is_success() {
        return error(StatusCode::NOT_FOUND, "partner has no such object");
    }
    let content_type = response.headers().get("content-type").cloned();
    match Limited::new(response.into_body(), state.sim.config.http.max_body_bytes).collect().await {
        Ok(b) => {
            let b = b.to_bytes();
            let mut r = Response::new(Full::new(b.clone()));
            if let Some(ct) = content_type {
                r.headers_mut().insert("content-type", ct);
            }
            r.headers_mut().insert("content-length", b.len().into());
            r
        }
        Err(_) => error(StatusCode::BAD_GATEWAY, "partner object too large"),
    }
}

/// The body of `POST /admin/wa-users`; binary values are base64url without padding.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaUser {
    phone: u64,
    #[serde(default)]
    device: u32,
    noise_public: String,
    registration_id: u32,
    identity: String,
    signed_prekey: WaSignedPreKey,
    #[serde(default)]
    prekeys: Vec<WaPreKey>,
    /// The device's `ADVSignedDeviceIdentity` (optional), carried in retry receipts' `<keys>`.
    #[serde(default)]
    device_identity: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaSignedPreKey {
    id: u32,
    public: String,
    signature: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaPreKey {
    id: u32,
    public: String,
}

fn b64<const N: usize>(s: &str) -> Option<[u8; N]> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()?.try_into().ok()
}

/// Largest `device_identity` accepted (an `ADVSignedDeviceIdentity` is a few hundred bytes).
const MAX_DEVICE_IDENTITY: usize = 4096;

/// Registers a device of a WhatsApp-side user (what registration on a phone, or linking a
/// companion, would do). The first device creates the account; another device id for the same
/// phone adds a companion; a device id already registered is registered anew (new keys, empty
/// mailbox, and its connection, if any, is closed).
fn provision_wa_user(sim: &Sim, body: &[u8]) -> Resp {
    let user: WaUser = match serde_json::from_slice(body) {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad user: {}", Report(&e))),
    };
    let Ok(device_id) = u16::try_from(user.device) else {
        return error(StatusCode::BAD_REQUEST, "device must be 0-65535");
    };
    let (Some(noise_public), Some(identity), Some(public), Some(signature)) = (
        b64::<32>(&user.noise_public),
        b64::<32>(&user.identity),
        b64::<32>(&user.signed_prekey.public),
        b64::<64>(&user.signed_prekey.signature),
    ) else {
        return error(StatusCode::BAD_REQUEST, "keys must be base64url: 32-byte keys, 64-byte signature");
    };
    if !signed_prekey_valid(&identity, &public, &signature) {
        return error(StatusCode::BAD_REQUEST, "bad_signature");
    }
    let device_identity = match user.device_identity.as_deref().map(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')))
    {
        None => None,
        Some(Ok(b)) if b.len() <= MAX_DEVICE_IDENTITY => Some(b),
        Some(_) => return error(StatusCode::BAD_REQUEST, "device_identity must be base64url, at most 4 KiB"),
    };
    let mut one_time = std::collections::VecDeque::new();
    for p in user.prekeys.iter().take(sim.config.limits.max_prekeys) {
        let Some(k) = b64::<32>(&p.public) else { return error(StatusCode::BAD_REQUEST, "bad prekey") };
        one_time.push_back((p.id, k));
    }
    let keys = KeyBundle {
        registration_id: user.registration_id,
        identity,
        signed_prekey: SignedPreKey { id: user.signed_prekey.id, public, signature },
        one_time,
    };
    let device = Device { device_identity, ..Device::new(noise_public, keys) };
    let jid = format!("{}@s.whatsapp.net", user.phone);
    let device_jid = sim.device_jid(&jid, device_id).to_string();
    let answer = json!({ "jid": jid, "device": device_jid });
    let mut device = Some(device);
    let mut outcome = None;
    sim.store.with(&jid, &mut |a| {
        outcome = Some(if a.devices.contains_key(&device_id) || a.devices.len() < MAX_DEVICES {
            let replaced = a.devices.insert(device_id, device.take().expect("taken once")).is_some();
            Ok(replaced)
        } else {
            Err(())
        });
    });
    match outcome {
        Some(Ok(replaced)) => {
            if replaced {
                sim.close_device(&jid, device_id);
            }
            respond(StatusCode::OK, answer)
        }
        Some(Err(())) => error(StatusCode::CONFLICT, &format!("at most {MAX_DEVICES} devices per account")),
        None => {
            let Some(device) = device.take() else { return error(StatusCode::INTERNAL_SERVER_ERROR, "device lost") };
            let kind = AccountKind::WhatsApp { phone: user.phone };
            let account = Account::new(jid.clone(), user.phone, kind, device_id, device, sim.clock.now());
            match sim.store.put(account) {
                Ok(()) => respond(StatusCode::OK, answer),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &Report(&e).to_string()),
            }
        }
    }
}

/// Most users one `POST /admin/interop-users` request may enlist.
const MAX_BULK_USERS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InteropUsers {
    integrator: u16,
    registration_id: u32,
    /// One Signal identity and signed prekey shared by every user of the batch: load accounts
    /// exercise connections, not key distribution, and one signature check covers them all.
    identity: String,
    signed_prekey: WaSignedPreKey,
    users: Vec<InteropUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InteropUser {
    user_identifier: String,
    noise_public: String,
}

/// Enlists many Partner users at once without their Partner tokens (what a batch of
/// `/3p/interop_reg` calls would do), so a load harness's setup does not dominate its run. A user
/// already enlisted keeps its login and gets the new keys. Answers the logins in request order.
fn enlist_interop_users(sim: &Sim, body: &[u8]) -> Resp {
    let batch: InteropUsers = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad batch: {}", Report(&e))),
    };
    if !sim.config.integrators.iter().any(|i| i.id == batch.integrator) {
        return error(StatusCode::BAD_REQUEST, "unknown integrator");
    }
    if batch.users.len() > MAX_BULK_USERS {
        return error(StatusCode::BAD_REQUEST, &format!("at most {MAX_BULK_USERS} users per request"));
    }
    let (Some(identity), Some(public), Some(signature)) =
        (b64::<32>(&batch.identity), b64::<32>(&batch.signed_prekey.public), b64::<64>(&batch.signed_prekey.signature))
    else {
        return error(StatusCode::BAD_REQUEST, "keys must be base64url: 32-byte keys, 64-byte signature");
    };
    if !signed_prekey_valid(&identity, &public, &signature) {
        return error(StatusCode::BAD_REQUEST, "bad_signature");
    }
    // Validate the whole batch first, so a bad entry enlists nobody.
    let mut users = Vec::with_capacity(batch.users.len());
    for (i, u) in batch.users.iter().enumerate() {
        let n = u.user_identifier.chars().count();
        if !(1..=40).contains(&n) || u.user_identifier.chars().any(char::is_control) {
            return error(StatusCode::BAD_REQUEST, &format!("users[{i}]: user_identifier must be 1-40 characters"));
        }
        let Some(noise_public) = b64::<32>(&u.noise_public) else {
            return error(StatusCode::BAD_REQUEST, &format!("users[{i}]: noise_public must be 32 bytes base64url"));
        };
        users.push((u.user_identifier.as_str(), noise_public));
    }
    let signed_prekey = SignedPreKey { id: batch.signed_prekey.id, public, signature };
    let now = sim.clock.now();
    let mut logins = Vec::with_capacity(users.len());
    for (user_identifier, noise_public) in users {
        if let Some(jid) = sim.store.jid_by_user(batch.integrator, user_identifier) {
            sim.store.with(&jid, &mut |a| {
                a.last_active = now;
                if let Some(device) = a.primary_mut() {
                    device.noise_public = noise_public;
                }
            });
            logins.push(jid);
            continue;
        }
        let account_id = sim.next_account_id();
        let jid = format!("{}-{}@interop", batch.integrator, account_id);
        let keys = KeyBundle {
            registration_id: batch.registration_id,
            identity,
            signed_prekey: signed_prekey.clone(),
            one_time: Default::default(),
        };
        let kind = AccountKind::Interop { integrator: batch.integrator, user_identifier: user_identifier.to_owned() };
        let account = Account::new(jid.clone(), account_id, kind, 0, Device::new(noise_public, keys), now);
        if let Err(e) = sim.store.put(account) {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": Report(&e).to_string(), "enlisted": logins.len(), "logins": logins }),
            );
        }
        sim.totals.enlistments.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        logins.push(jid);
    }
    respond(StatusCode::OK, json!({ "logins": logins }))
}
