//! Pre-enlisting load users in bulk (`POST /admin/interop-users` on the simulator) and fetching
//! their account-bound Partner tokens from the partner server, so setup does not dominate a run.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use error_report::Report;
use futures_util::StreamExt;
use wire::Jid;
use wire::noise::StaticKeypair;

use crate::client::{User, client_ip};
use crate::env::Env;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Users per bulk request (the simulator takes at most 10,000).
const BATCH: usize = 5_000;
/// Token requests in flight at once.
const TOKEN_CONCURRENCY: usize = 32;

fn random32() -> Result<[u8; 32]> {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).map_err(|_| Error::Invalid("no OS randomness".into()))?;
    Ok(k)
}

/// A tag unique to this run, so user names never collide with earlier runs on the same simulator.
pub fn run_tag() -> String {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

/// Enlists `n` users named `{prefix}-{i}` (source addresses from `first_ip` on) and gets each a
/// token bound to its account.
pub async fn provision(
    env: &Env,
    prefix: &str,
    n: usize,
    first_ip: usize,
    progress: &Arc<Progress>,
) -> Result<Vec<User>> {
    progress.phase(format!("setup {prefix}: enlisting {n}"));
    let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    // One Signal identity for the batch: load accounts exercise connections, not key fetches.
    let identity_private = random32()?;
    let spk = random32()?;
    let mut signed = [0u8; 33];
    signed[0] = 5;
    signed[1..].copy_from_slice(&spk);
    let signature = wire::xeddsa::sign_with_os_rng(&identity_private, &signed)
        .map_err(|e| Error::Invalid(format!("signing the prekey: {}", Report(&e))))?;
    let identity = wire::xeddsa::public_key(&identity_private);

    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let noise = random32()?;
        let public = StaticKeypair::from_private(&noise)?.public();
        keys.push((format!("{prefix}-{i}"), noise, public));
    }
    let url = format!("{}/admin/interop-users", env.sim_http);
    let mut logins = Vec::with_capacity(n);
    for chunk in keys.chunks(BATCH) {
        let body = serde_json::json!({
            "integrator": 1,
            "registration_id": 7,
            "identity": e(&identity),
            "signed_prekey": {"id": 1, "public": e(&spk), "signature": e(&signature)},
            "users": chunk.iter().map(|(name, _, public)| serde_json::json!({
                "user_identifier": name, "noise_public": e(public),
            })).collect::<Vec<_>>(),
        });
        let answer = env.http.json("POST", &url, Some(&body)).await?;
        let got = answer["logins"].as_array().ok_or_else(|| Error::Invalid(format!("bulk enlistment: {answer}")))?;
        for l in got {
            let jid =
                l.as_str().and_then(|s| Jid::parse(s).ok()).ok_or_else(|| Error::Invalid(format!("bad login {l}")))?;
            logins.push(jid);
        }
        progress.ok.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    if logins.len() != n {
        return Err(Error::Invalid(format!("asked to enlist {n} users, got {} logins", logins.len())));
    }

    progress.phase(format!("setup {prefix}: {n} tokens"));
    let token_url = format!("{}/oauth/token", env.partner_url);
    let tokens: Vec<Result<(usize, String)>> = futures_util::stream::iter(keys.iter().zip(&logins).enumerate())
        .map(|(i, ((name, _, _), jid))| {
            let (http, url, progress) = (env.http.clone(), token_url.clone(), Arc::clone(progress));
            let body = serde_json::json!({ "user_identifier": name, "wa_account": jid.to_string() });
            async move {
                let v = http.json("POST", &url, Some(&body)).await?;
                progress.ok.fetch_add(1, Ordering::Relaxed);
                let token = v["access_token"].as_str().ok_or_else(|| Error::Invalid("no access_token".into()))?;
                Ok((i, token.to_owned()))
            }
        })
        .buffer_unordered(TOKEN_CONCURRENCY)
        .collect()
        .await;
    let mut by_index = vec![String::new(); n];
    for t in tokens {
        let (i, token) = t?;
        by_index[i] = token;
    }
    let mut users = Vec::with_capacity(n);
    for (i, (((name, noise, _), jid), token)) in keys.into_iter().zip(logins).zip(by_index).enumerate() {
        let account_id = jid.user.parse().map_err(|_| Error::Invalid(format!("login {jid} has no account id")))?;
        users.push(User { name, noise, jid, account_id, token, ip: client_ip(first_ip + i) });
    }
    Ok(users)
}

/// What the simulator's observation API says about the one-upstream invariant and client IPs.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Observation {
    pub accounts_checked: usize,
    pub max_concurrent_seen: u64,
    pub over_one: usize,
    pub ip_missing: usize,
}

impl Observation {
    pub fn violations(&self, what: &str) -> Vec<String> {
        let mut v = Vec::new();
        if self.over_one > 0 {
            v.push(format!(
                "{what}: {} accounts had more than one chatd connection at once (max {})",
                self.over_one, self.max_concurrent_seen
            ));
        }
        if self.ip_missing > 0 {
            v.push(format!("{what}: {} accounts lack their client's IP in the simulator's record", self.ip_missing));
        }
        v
    }
}

/// Checks every user's `/admin/accounts/{jid}/connections`: `max_concurrent` at most 1, and the
/// client's source address recorded.
pub async fn observe(env: &Env, users: &[User]) -> Result<Observation> {
    let results: Vec<Result<serde_json::Value>> = futures_util::stream::iter(users)
        .map(|u| {
            let (http, url) = (env.http.clone(), format!("{}/admin/accounts/{}/connections", env.sim_http, u.jid));
            async move { http.json("GET", &url, None).await }
        })
        .buffered(TOKEN_CONCURRENCY)
        .collect()
        .await;
    let mut o = Observation::default();
    for (u, r) in users.iter().zip(results) {
        let v = r?;
        let max = v["max_concurrent"].as_u64().unwrap_or(0);
        o.accounts_checked += 1;
        o.max_concurrent_seen = o.max_concurrent_seen.max(max);
        if max > 1 {
            o.over_one += 1;
        }
        let ip = u.ip.to_string();
        let has_ip = v["client_ips"].as_array().is_some_and(|ips| ips.iter().any(|i| i.as_str() == Some(&ip)));
        if !has_ip {
            o.ip_missing += 1;
        }
    }
    Ok(o)
}
