//! The HTTP services around the chat channel: Partner tokens and push wake-up (the partner
//! server), enlistment (the seed's Part 1 request to chatd), WhatsApp-side provisioning (the
//! simulator's admin API), and media upload and download.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use error_report::Report;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tls_config::ClientTls;

use crate::store::Store;

/// Largest HTTP answer read (media included).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
const WAIT: Duration = Duration::from_secs(30);

/// Why an HTTP call failed, with the service's own words when it gave some.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url} answered something unexpected: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("enlistment refused: {0}")]
    Enlist(String),
    #[error("TLS settings")]
    Tls(#[from] tls_config::TlsError),
}

/// An HTTPS client for the services: certificates checked against the platform's roots and an
/// optional CA file, TLS 1.3 preferred, HTTP/2 or HTTP/1.1 by ALPN; plain `http://` URLs work too.
#[derive(Clone)]
pub struct Services {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for Services {
    /// The platform's roots only.
    fn default() -> Self {
        // No file to read: building on the platform store cannot fail (an empty store is a
        // warning, and https requests then fail with an unknown-issuer error).
        Services::new(&ClientTls::default()).expect("a TLS client on the platform's roots needs no file")
    }
}

impl Services {
    /// Trusting `tls`.
    pub fn new(tls: &ClientTls) -> Result<Services, ServiceError> {
        Ok(Services { http: tls_config::https_client(tls)? })
    }

    /// The platform's roots plus `ca_file` when given.
    pub fn with_ca_file(ca_file: Option<&std::path::Path>) -> Result<Services, ServiceError> {
        Services::new(&ClientTls::with_ca_file(ca_file))
    }

    /// Trusting what the device's store says (`Endpoints::ca_file`).
    pub fn for_store(store: &Store) -> Result<Services, ServiceError> {
        Services::with_ca_file(store.endpoints().ca_file.as_deref())
    }
}

/// A Partner user's enlisted identity.
#[derive(Debug, Clone)]
pub struct Enlisted {
    pub jid: String,
    pub account_id: u64,
}

/// With the whole cause chain: a refused certificate says why (unknown issuer, wrong name, expired).
fn unreachable(url: &str, e: &dyn std::error::Error) -> ServiceError {
    ServiceError::Unreachable { url: url.to_owned(), reason: Report(e).to_string() }
}

fn e64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

impl Services {
    /// One request; returns status, content type and body.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        wait: Duration,
    ) -> Result<(u16, String, Bytes), ServiceError> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(url, &e))?;
        let resp = tokio::time::timeout(wait, self.http.request(req))
            .await
            .map_err(|_| ServiceError::Unreachable { url: url.to_owned(), reason: "timed out".into() })?;
        let resp = resp.map_err(|e| unreachable(url, &e))?;
        let status = resp.status().as_u16();
        let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let body =
            Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| unreachable(url, e.as_ref()))?;
        Ok((status, ctype, body.to_bytes()))
    }

    async fn json(&self, method: &str, url: &str, ctype: &str, body: Vec<u8>) -> Result<Value, ServiceError> {
        let (status, _, body) = self.request(method, url, ctype, body, WAIT).await?;
        if !(200..300).contains(&status) {
            return Err(ServiceError::Status {
                url: url.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&body)
            .map_err(|e| ServiceError::BadAnswer { url: url.to_owned(), reason: Report(&e).to_string() })
    }

    /// A Partner JWT for `user` (bound to `account` when given) from the partner server.
    pub async fn token(&self, partner: &str, user: &str, account: Option<&str>) -> Result<String, ServiceError> {
        let url = format!("{}/oauth/token", partner.trim_end_matches('/'));
        let mut req = json!({ "user_identifier": user });
        if let Some(a) = account {
            req["wa_account"] = a.into();
        }
        let v = self.json("POST", &url, "application/json", req.to_string().into_bytes()).await?;
        v["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ServiceError::BadAnswer { url, reason: "no access_token".into() })
    }

    /// The seed's enlistment request, built from the device's own keys.
    pub async fn enlist(
        &self,
        chatd: &str,
        store: &Store,
        integrator: u16,
        user: &str,
        token: &str,
    ) -> Result<Enlisted, ServiceError> {
        let (spk_id, spk, signature) =
            store.signed_prekey().map_err(|e| ServiceError::Enlist(Report(&e).to_string()))?;
        let noise_public = wire::noise::StaticKeypair::from_private(store.noise_private())
            .map_err(|e| ServiceError::Enlist(Report(&e).to_string()))?
            .public();
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("authkey", &e64(&noise_public))
            .append_pair("e_keytype", &e64(&[5]))
            .append_pair("e_regid", &e64(&store.registration_id().to_be_bytes()))
            .append_pair("e_ident", &e64(store.identity().public_key().public_key_bytes()))
            .append_pair("e_skey_id", &e64(&wire::node::be_bytes(spk_id, 3)))
            .append_pair("e_skey_val", &e64(&spk))
            .append_pair("e_skey_sig", &e64(&signature))
            .append_pair("integrator_id", &integrator.to_string())
            .append_pair("user_identifier", user)
            .append_pair("token", token)
            .finish();
        let url = format!("{}/3p/interop_reg", chatd.trim_end_matches('/'));
        let v = self.json("POST", &url, "application/x-www-form-urlencoded", form.into_bytes()).await?;
        if v["status"] != "ok" {
            return Err(ServiceError::Enlist(v["reason"].as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())));
        }
        let jid = v["login"].as_str().ok_or_else(|| ServiceError::Enlist(format!("no login in {v}")))?.to_owned();
        let account_id = jid
            .split_once('-')
            .and_then(|(_, rest)| rest.trim_end_matches("@interop").parse().ok())
            .ok_or_else(|| ServiceError::Enlist(format!("login {jid} is not an interop JID")))?;
        Ok(Enlisted { jid, account_id })
    }

    /// Registers a WhatsApp-side user with the simulator (what phone registration does on the
    /// real service), with this device's keys and a first batch of one-time prekeys.
    pub async fn provision_whatsapp(&self, chatd: &str, store: &mut Store, phone: u64) -> Result<String, ServiceError> {
        let bad = |e: crate::store::StoreError| ServiceError::Enlist(Report(&e).to_string());
        let (spk_id, spk, signature) = store.signed_prekey().map_err(bad)?;
        let noise_public = wire::noise::StaticKeypair::from_private(store.noise_private())
            .map_err(|e| ServiceError::Enlist(Report(&e).to_string()))?
            .public();
        let prekeys: Vec<Value> = store
            .new_prekeys(crate::store::PREKEY_BATCH)
            .map_err(bad)?
            .into_iter()
            .map(|(id, k)| json!({"id": id, "public": e64(&k)}))
            .collect();
        let url = format!("{}/admin/wa-users", chatd.trim_end_matches('/'));
        let body = json!({
            "phone": phone,
            "noise_public": e64(&noise_public),
            "registration_id": store.registration_id(),
            "identity": e64(store.identity().public_key().public_key_bytes()),
            "signed_prekey": {"id": spk_id, "public": e64(&spk), "signature": e64(&signature)},
            "prekeys": prekeys,
        });
        let v = self.json("POST", &url, "application/json", body.to_string().into_bytes()).await?;
        v["jid"].as_str().map(str::to_owned).ok_or_else(|| ServiceError::BadAnswer { url, reason: format!("{v}") })
    }

    /// chatd's certificate root key as the simulator publishes it (`/admin/info`); a production
    /// client ships WhatsApp's root built in instead.
    pub async fn chatd_root(&self, chatd: &str) -> Result<[u8; 32], ServiceError> {
        let url = format!("{}/admin/info", chatd.trim_end_matches('/'));
        let v = self.json("GET", &url, "application/json", Vec::new()).await?;
        v["root_public_key"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ServiceError::BadAnswer { url, reason: "no 32-byte root_public_key".into() })
    }

    /// Uploads an encrypted Partner media object; returns its storage reference.
    pub async fn upload_partner_media(&self, partner: &str, body: Vec<u8>) -> Result<String, ServiceError> {
        let url = format!("{}/media", partner.trim_end_matches('/'));
        let v = self.json("POST", &url, "application/octet-stream", body).await?;
        v["storage_reference"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ServiceError::BadAnswer { url, reason: "no storage_reference".into() })
    }

    /// Uploads encrypted media to the WhatsApp media host as WhatsApp clients do,
    /// `POST {host}/mms/{kind}/{token}?auth={auth}&token={token}` with `token` the body's
    /// SHA-256 in base64url; returns its `/v/t...` direct path.
    pub async fn upload_whatsapp_media(
        &self,
        host: &str,
        auth: &str,
        kind: &str,
        body: Vec<u8>,
        file_enc_sha256: &[u8],
    ) -> Result<String, ServiceError> {
        let token = URL_SAFE_NO_PAD.encode(file_enc_sha256);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("auth", auth)
            .append_pair("token", &token)
            .finish();
        let url = format!("{}/mms/{kind}/{token}?{query}", host.trim_end_matches('/'));
        let v = self.json("POST", &url, "application/octet-stream", body).await?;
        v["direct_path"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ServiceError::BadAnswer { url, reason: "no direct_path".into() })
    }

    /// Downloads `{host}{direct_path}` (the WhatsApp media host serves both `/v/t...` and the
    /// `/interop/whatsapp/download/...` paths).
    pub async fn download(&self, host: &str, direct_path: &str) -> Result<Bytes, ServiceError> {
        let url = format!("{}{direct_path}", host.trim_end_matches('/'));
        let (status, _, body) = self.request("GET", &url, "application/octet-stream", Vec::new(), WAIT).await?;
        if status != 200 {
            return Err(ServiceError::Status { url, status, body: String::from_utf8_lossy(&body).into() });
        }
        Ok(body)
    }

    /// Waits up to `wait` for a push for `user` at the partner server: `true` when one came.
    pub async fn wait_for_push(&self, partner: &str, user: &str, wait: Duration) -> Result<bool, ServiceError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("user", user)
            .append_pair("timeout_ms", &wait.as_millis().to_string())
            .finish();
        let url = format!("{}/push/wait?{query}", partner.trim_end_matches('/'));
        let (status, _, body) =
            self.request("GET", &url, "application/json", Vec::new(), wait + Duration::from_secs(5)).await?;
        match status {
            200 => Ok(true),
            204 => Ok(false),
            _ => Err(ServiceError::Status { url, status, body: String::from_utf8_lossy(&body).into() }),
        }
    }
}
