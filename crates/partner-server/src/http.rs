//! Routing and the endpoint handlers.

use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use error_report::Report;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION,
};
use hyper::{Method, Request, Response, StatusCode};
use jwks::{Expectations, JwksVerifier, PartnerClaims, PushClaims, SigningKeys};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::media::{MediaError, MediaStore, is_reference};
use crate::push::{Pushes, WaitOutcome};

pub(crate) type Resp = Response<Full<Bytes>>;

/// Path of the JWKS endpoint (seed 1.3).
pub const JWKS_PATH: &str = "/.well-known/oauth/openid/jwks";
/// Longest accepted `wa_account`; interop JIDs are ~30 characters.
const MAX_WA_ACCOUNT_CHARS: usize = 128;
/// Longest Content-Type kept with an upload.
const MAX_CONTENT_TYPE_LEN: usize = 256;
/// `timeout_ms` of `/push/wait` when the client gives none.
const DEFAULT_WAIT_MS: u64 = 30_000;

/// Everything the handlers share.
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) issuer: String,
    pub(crate) push_audience: String,
    pub(crate) keys: Arc<SigningKeys>,
    pub(crate) push_verifier: RwLock<Option<JwksVerifier>>,
    pub(crate) pushes: Pushes,
    pub(crate) media: Arc<MediaStore>,
    pub(crate) shutdown: CancellationToken,
}

impl AppState {
    fn verifier(&self) -> Option<JwksVerifier> {
        self.push_verifier.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Livez,
    Jwks,
    Token,
    RotateKeys,
    Pushes,
    Push,
    PushWait,
    MediaUpload,
    MediaDownload,
    NotFound,
}

impl Route {
    fn of(path: &str) -> Self {
        match path {
            "/livez" => Self::Livez,
            JWKS_PATH => Self::Jwks,
            "/oauth/token" => Self::Token,
            "/admin/rotate-keys" => Self::RotateKeys,
            "/admin/pushes" => Self::Pushes,
            "/push" => Self::Push,
            "/push/wait" => Self::PushWait,
            "/media" => Self::MediaUpload,
            _ if reference_of(path).is_some() => Self::MediaDownload,
            _ => Self::NotFound,
        }
    }

    fn method(self) -> Method {
        match self {
            Self::Token | Self::RotateKeys | Self::Push | Self::MediaUpload => Method::POST,
            _ => Method::GET,
        }
    }

    /// For logs: the route, never the raw path (a storage reference is a download capability).
    fn name(self) -> &'static str {
        match self {
            Self::Livez => "livez",
            Self::Jwks => "jwks",
            Self::Token => "token",
            Self::RotateKeys => "rotate_keys",
            Self::Pushes => "pushes",
            Self::Push => "push",
            Self::PushWait => "push_wait",
            Self::MediaUpload => "media_upload",
            Self::MediaDownload => "media_download",
            Self::NotFound => "not_found",
        }
    }
}

/// `/{reference}` or `/{reference}/` (the seed's download paths end in a slash on WhatsApp's side).
fn reference_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let reference = rest.strip_suffix('/').unwrap_or(rest);
    is_reference(reference).then_some(reference)
}

pub(crate) async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let route = Route::of(req.uri().path());
    let method = req.method().clone();
    let response = if route == Route::NotFound {
        error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    } else if method != route.method() {
        let allowed = if route.method() == Method::POST { "POST" } else { "GET" };
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("use {allowed}"));
        r.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
        r
    } else {
        match route {
            Route::Livez => json(StatusCode::OK, &json!({"status": "ok"})),
            Route::Jwks => jwks(&state),
            Route::Token => token(&state, req).await,
            Route::RotateKeys => rotate_keys(&state, &req).await,
            Route::Pushes => pushes(&state, &req),
            Route::Push => push(&state, req).await,
            Route::PushWait => push_wait(&state, &req).await,
            Route::MediaUpload => media_upload(&state, req).await,
            Route::MediaDownload => media_download(&state, &req),
            Route::NotFound => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    };
    tracing::debug!(route = route.name(), %method, status = response.status().as_u16(), "request");
    Ok(response)
}

fn jwks(state: &AppState) -> Resp {
    let mut r = json(StatusCode::OK, &state.keys.jwks());
    // Short: verifiers refetch on an unknown kid anyway, and rotations should show up quickly.
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    r
}

#[derive(Deserialize)]
struct TokenRequest {
    user_identifier: String,
    #[serde(default)]
    wa_account: Option<String>,
}

/// `POST /oauth/token`: issue a Partner token for a user. This reference server does not
/// authenticate the user; a real Partner issues tokens only to users it has logged in.
async fn token(state: &AppState, req: Request<Incoming>) -> Resp {
    let body = match read_body(req, state.config.limits.max_json_body_bytes as u64, state).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("expected {{\"user_identifier\"}}: {}", Report(&e)),
            );
        }
    };
    if !valid_user_identifier(&request.user_identifier) {
        return error(StatusCode::BAD_REQUEST, "bad_user_identifier", "user_identifier must be 1-40 UTF-8 characters");
    }
    if let Some(account) = &request.wa_account {
        let n = account.chars().count();
        if n == 0 || n > MAX_WA_ACCOUNT_CHARS || account.chars().any(char::is_control) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_wa_account",
                format!("wa_account must be 1-{MAX_WA_ACCOUNT_CHARS} printable characters"),
            );
        }
    }
    let ttl = state.config.token_ttl_secs;
    let claims = PartnerClaims::new(
        state.issuer.clone(),
        state.config.audience.clone(),
        request.user_identifier,
        Duration::from_secs(ttl),
        request.wa_account,
    );
    match state.keys.sign(&claims) {
        Ok(access_token) => {
            tracing::debug!(sub = ?claims.sub, "token issued");
            let mut r =
                json(StatusCode::OK, &json!({"access_token": access_token, "token_type": "Bearer", "expires_in": ttl}));
            // RFC 6749 5.1: token responses must not be cached.
            r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => {
            tracing::error!(error = %Report(&e), "signing a token failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "signing_failed", "could not sign the token")
        }
    }
}

async fn rotate_keys(state: &AppState, req: &Request<Incoming>) -> Resp {
    if let Some(denied) = check_admin(state, req.headers()) {
        return denied;
    }
    let keys = state.keys.clone();
    // RSA key generation takes tens of milliseconds of CPU: keep it off the I/O threads.
    match tokio::task::spawn_blocking(move || keys.rotate()).await {
        Ok(Ok(kid)) => {
            tracing::info!(kid = %kid, "signing key rotated");
            json(StatusCode::OK, &json!({"kid": kid}))
        }
        Ok(Err(e)) => {
            tracing::error!(error = %Report(&e), "key rotation failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "rotation_failed", Report(&e).to_string())
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "rotation_failed", "key generation task failed"),
    }
}

fn pushes(state: &AppState, req: &Request<Incoming>) -> Resp {
    if let Some(denied) = check_admin(state, req.headers()) {
        return denied;
    }
    let list = serde_json::to_value(state.pushes.history()).unwrap_or(Value::Array(Vec::new()));
    json(StatusCode::OK, &list)
}

#[derive(Deserialize)]
struct PushRequest {
    to: String,
}

/// `POST /push` (seed 3.2.2): WhatsApp tells us a user has messages waiting.
async fn push(state: &AppState, req: Request<Incoming>) -> Resp {
    let Some(verifier) = state.verifier() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "push_not_configured", "push.jwks_url is not set");
    };
    let Some(token) = bearer(req.headers()) else {
        return unauthorized("missing_token", "Authorization: Bearer <JWT> required");
    };
    let expect = Expectations {
        issuer: state.config.push.issuer.clone(),
        audience: state.push_audience.clone(),
        leeway: Duration::from_secs(state.config.push.leeway_secs),
    };
    let claims: PushClaims = match verifier.verify(&token, &expect).await {
        Ok(c) => c,
        Err(e @ jwks::VerifyError::JwksUnavailable { .. }) => {
            // Not the pusher's fault: 503 so it retries, rather than 401 which says "your token is bad".
            tracing::warn!(error = %Report(&e), "push refused: JWKS unavailable");
            return error(StatusCode::SERVICE_UNAVAILABLE, "jwks_unavailable", "cannot verify push tokens right now");
        }
        Err(e) => {
            tracing::info!(reason = e.code(), "push refused");
            return unauthorized(e.code(), Report(&e).to_string());
        }
    };
    let body = match read_body(req, state.config.limits.max_json_body_bytes as u64, state).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request: PushRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", format!("expected {{\"to\"}}: {}", Report(&e))),
    };
    if !valid_user_identifier(&request.to) {
        return error(StatusCode::BAD_REQUEST, "bad_user_identifier", "to must be 1-40 UTF-8 characters");
    }
    if claims.sub.as_deref().is_some_and(|sub| sub != request.to) {
        return unauthorized("subject_mismatch", "token sub does not match to");
    }
    state.pushes.record(&request.to);
    tracing::debug!(to = ?request.to, "push received");
    no_content()
}

/// `GET /push/wait?user=X&timeout_ms=N`: long-poll until a push for X (or one already pending).
async fn push_wait(state: &AppState, req: &Request<Incoming>) -> Resp {
    let query = req.uri().query().unwrap_or("");
    let user = match query_param(query, "user") {
        Ok(Some(u)) if valid_user_identifier(&u) => u,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "bad_user", "user must be 1-40 UTF-8 characters"),
        Err(()) => return error(StatusCode::BAD_REQUEST, "bad_query", "query is not valid percent-encoding"),
    };
    let timeout_ms = match query_param(query, "timeout_ms") {
        Ok(None) => DEFAULT_WAIT_MS,
        Ok(Some(v)) => match v.parse::<u64>() {
            Ok(ms) => ms,
            Err(_) => return error(StatusCode::BAD_REQUEST, "bad_timeout", "timeout_ms must be an integer"),
        },
        Err(()) => return error(StatusCode::BAD_REQUEST, "bad_query", "query is not valid percent-encoding"),
    };
    let timeout = Duration::from_millis(timeout_ms.min(state.config.limits.max_wait_ms));
    match state.pushes.wait(&user, timeout, &state.shutdown).await {
        WaitOutcome::Pushed => json(StatusCode::OK, &json!({"to": user})),
        WaitOutcome::TimedOut => no_content(),
        WaitOutcome::ShuttingDown => error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "server is stopping"),
    }
}

/// `POST /media`: store the raw body; 201 with its storage reference.
async fn media_upload(state: &AppState, req: Request<Incoming>) -> Resp {
    let max = state.config.media.max_object_bytes;
    let declared = declared_length(req.headers());
    if declared.is_some_and(|n| n > max) {
        return too_large(max);
    }
    let content_type = match req.headers().get(CONTENT_TYPE) {
        None => HeaderValue::from_static("application/octet-stream"),
        Some(v) if v.len() <= MAX_CONTENT_TYPE_LEN && v.to_str().is_ok() => v.clone(),
        Some(_) => return error(StatusCode::BAD_REQUEST, "bad_content_type", "Content-Type too long or not ASCII"),
    };
    let reservation = match state.media.reserve(declared.unwrap_or(max)) {
        Ok(r) => r,
        Err(e) => return storage_error(&e),
    };
    let body = match read_body(req, declared.unwrap_or(max), state).await {
        Ok(b) => b,
        // A body over the declared length is a protocol error hyper reports; over the max is 413.
        Err(r) => return r,
    };
    match state.media.commit(reservation, content_type, body) {
        Ok(reference) => {
            let mut r = json(StatusCode::CREATED, &json!({"storage_reference": reference}));
            if let Ok(location) = HeaderValue::from_str(&format!("/{reference}")) {
                r.headers_mut().insert(LOCATION, location);
            }
            r
        }
        Err(e) => storage_error(&e),
    }
}

/// `GET /{storage_reference}`: the bytes, with their Content-Type and Content-Length.
fn media_download(state: &AppState, req: &Request<Incoming>) -> Resp {
    let Some(object) = reference_of(req.uri().path()).and_then(|r| state.media.get(r)) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such media");
    };
    let mut r = Response::new(Full::new(object.bytes.clone()));
    r.headers_mut().insert(CONTENT_TYPE, object.content_type.clone());
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(object.bytes.len()));
    r
}

fn storage_error(e: &MediaError) -> Resp {
    match e {
        MediaError::FullBytes { .. } | MediaError::FullObjects { .. } => {
            error(StatusCode::INSUFFICIENT_STORAGE, "storage_full", Report(e).to_string())
        }
        MediaError::Random => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "could not store the media"),
    }
}

/// Read a request body of at most `limit` bytes within the configured body timeout.
async fn read_body(req: Request<Incoming>, limit: u64, state: &AppState) -> Result<Bytes, Resp> {
    if declared_length(req.headers()).is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let timeout = Duration::from_secs(state.config.limits.body_timeout_secs);
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit_usize).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(_)) => Err(error(StatusCode::BAD_REQUEST, "bad_body", "request body could not be read")),
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "body_timeout", "request body took too long")),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// `Authorization: Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// `None` if the admin endpoints are open or the request carries the admin token.
fn check_admin(state: &AppState, headers: &HeaderMap) -> Option<Resp> {
    let expected = state.config.admin_token.as_ref()?;
    let given = bearer(headers).unwrap_or_default();
    // Constant-time comparison: the token must not leak through response timing.
    let ok = aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), expected.expose().as_bytes()).is_ok();
    (!ok).then(|| unauthorized("admin_token_required", "Authorization: Bearer <admin_token> required"))
}

/// The seed's rule for `user_identifier`: 1 to 40 UTF-8 characters.
fn valid_user_identifier(s: &str) -> bool {
    (1..=40).contains(&s.chars().count())
}

/// The value of `name` in an `application/x-www-form-urlencoded` query (`+` is a space). `Err` if
/// the encoding is broken.
fn query_param(query: &str, name: &str) -> Result<Option<String>, ()> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key)? == name {
            return percent_decode(value).map(Some);
        }
    }
    Ok(None)
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(())?;
                let hex = std::str::from_utf8(hex).map_err(|_| ())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ())
}

fn json(status: StatusCode, value: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error": code, "message": ...}`: short, and never containing a token or key.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Resp {
    json(status, &json!({"error": code, "message": message.into()}))
}

fn unauthorized(code: &str, message: impl Into<String>) -> Resp {
    let mut r = error(StatusCode::UNAUTHORIZED, code, message);
    r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn too_large(limit: u64) -> Resp {
    error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("body larger than {limit} bytes"))
}

fn no_content() -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/livez"), Route::Livez);
        assert_eq!(Route::of(JWKS_PATH), Route::Jwks);
        assert_eq!(Route::of("/AAAAAAAAAAAAAAAAAAAAAA"), Route::MediaDownload);
        assert_eq!(Route::of("/AAAAAAAAAAAAAAAAAAAAAA/"), Route::MediaDownload);
        assert_eq!(Route::of("/AAAAAAAAAAAAAAAAAAAAAA/x"), Route::NotFound);
        assert_eq!(Route::of("/nope"), Route::NotFound);
        assert_eq!(Route::of("/"), Route::NotFound);
    }

    #[test]
    fn query_decoding() {
        assert_eq!(query_param("user=alice&timeout_ms=5", "user"), Ok(Some("alice".into())));
        assert_eq!(query_param("timeout_ms=5&user=%2B1%20650", "user"), Ok(Some("+1 650".into())));
        assert_eq!(query_param("user=a+b", "user"), Ok(Some("a b".into())));
        assert_eq!(query_param("user=%C3%A9", "user"), Ok(Some("é".into())));
        assert_eq!(query_param("x=1", "user"), Ok(None));
        assert_eq!(query_param("user=%E", "user"), Err(()));
        assert_eq!(query_param("user=%ZZ", "user"), Err(()));
        assert_eq!(query_param("user=%FF", "user"), Err(()));
        assert_eq!(query_param("", "user"), Ok(None));
    }

    #[test]
    fn bearer_parsing_and_identifiers() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc.def.ghi"));
        assert_eq!(bearer(&h).as_deref(), Some("abc.def.ghi"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
        assert!(valid_user_identifier("alice") && valid_user_identifier(&"é".repeat(40)));
        assert!(!valid_user_identifier("") && !valid_user_identifier(&"a".repeat(41)));
    }
}
