//! The enlistment API, `POST /3p/interop_reg`: a Partner client opts its user in to WhatsApp.
//!
//! Arguments (form-urlencoded, binary values base64url without padding) and sizes are the seed's:
//! `authkey` 32, `e_keytype` 1 (0x05), `e_regid` 4, `e_ident` 32, `e_skey_id` 3, `e_skey_val` 32,
//! `e_skey_sig` 64, `integrator_id` (decimal 1-999), `user_identifier` (UTF-8, 1-40 characters),
//! `token` (the Partner JWT, at most 4 KiB), and optionally `version` (the client's interop
//! protocol version, "2.3000.0" style). The answer is `{"login": JID, "status": "ok"}` or
//! `{"reason": ..., "status": "fail"}`.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use error_report::Report;
use serde::Serialize;

use crate::account::{Account, AccountKind, Device, KeyBundle, SignedPreKey};
use crate::auth::TokenVerifier;
use crate::chat::handler::{Handler, signed_prekey_valid};
use crate::config::parse_version;
use crate::sim::Sim;

/// Failure reasons, as the `reason` of a failed enlistment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Unknown or malformed `integrator_id`.
    BadIntegrator,
    /// The token is missing, malformed, not signed by the integrator, expired, or names another
    /// user.
    BadToken,
    /// A key argument is missing, not base64url, or the wrong size; or `e_keytype` is not 0x05.
    BadParam,
    /// `user_identifier` is missing, not UTF-8, or not 1-40 characters.
    BadUserIdentifier,
    /// `e_skey_sig` is not the identity key's signature over the signed prekey.
    BadSignature,
    /// `version` is older than the simulator's minimum.
    OldVersion,
    /// The simulator has no room for another account.
    Overloaded,
}

/// The JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Ok { login: String, status: &'static str },
    Fail { reason: Reason, status: &'static str },
}

impl Answer {
    fn fail(reason: Reason) -> Answer {
        Answer::Fail { reason, status: "fail" }
    }
}

/// A well-formed enlistment request.
#[derive(Debug, Clone)]
pub struct Request {
    pub authkey: [u8; 32],
    pub registration_id: u32,
    pub identity: [u8; 32],
    pub signed_prekey: SignedPreKey,
    pub integrator: u16,
    pub user_identifier: String,
    pub token: String,
    pub version: Option<String>,
}

fn b64<const N: usize>(form: &HashMap<String, String>, key: &str) -> Result<[u8; N], Reason> {
    let v = form.get(key).ok_or(Reason::BadParam)?;
    let bytes = URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).map_err(|_| Reason::BadParam)?;
    bytes.try_into().map_err(|_| Reason::BadParam)
}

/// Parses the form body; pure, so every rule is unit-testable.
pub fn parse(body: &[u8]) -> Result<Request, Reason> {
    let mut form = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        // A repeated argument is ambiguous: refuse rather than pick one.
        if form.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(Reason::BadParam);
        }
    }
    let integrator = form
        .get("integrator_id")
        .filter(|s| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|i| (1..=999).contains(i))
        .ok_or(Reason::BadIntegrator)?;
    let user_identifier = form.get("user_identifier").ok_or(Reason::BadUserIdentifier)?.clone();
    if !(1..=40).contains(&user_identifier.chars().count()) || user_identifier.chars().any(char::is_control) {
        return Err(Reason::BadUserIdentifier);
    }
    let token = form.get("token").filter(|t| !t.is_empty() && t.len() <= 4096).ok_or(Reason::BadToken)?.clone();
    if b64::<1>(&form, "e_keytype")? != [0x05] {
        return Err(Reason::BadParam);
    }
    Ok(Request {
        authkey: b64(&form, "authkey")?,
        registration_id: u32::from_be_bytes(b64(&form, "e_regid")?),
        identity: b64(&form, "e_ident")?,
        signed_prekey: SignedPreKey {
            id: {
                let [a, b, c] = b64::<3>(&form, "e_skey_id")?;
                u32::from_be_bytes([0, a, b, c])
            },
            public: b64(&form, "e_skey_val")?,
            signature: b64(&form, "e_skey_sig")?,
        },
        integrator,
        user_identifier,
        token,
        version: form.get("version").cloned(),
    })
}

/// Runs an enlistment: checks, then creates the account or re-keys the existing one.
pub async fn enlist(sim: &Sim, verifier: &dyn TokenVerifier, body: &[u8]) -> Answer {
    let req = match parse(body) {
        Ok(r) => r,
        Err(reason) => return Answer::fail(reason),
    };
    let Some(integrator) = sim.config.integrators.iter().find(|i| i.id == req.integrator) else {
        return Answer::fail(Reason::BadIntegrator);
    };
    if let Some(v) = &req.version {
        let min = parse_version(&sim.config.chat.min_app_version).unwrap_or((0, 0, 0));
        if parse_version(v).is_none_or(|v| v < min) {
            return Answer::fail(Reason::OldVersion);
        }
    }
    if !signed_prekey_valid(&req.identity, &req.signed_prekey.public, &req.signed_prekey.signature) {
        return Answer::fail(Reason::BadSignature);
    }
    match verifier.verify(integrator, &req.token).await {
        Ok(t) if t.subject == req.user_identifier => {}
        Ok(_) => return Answer::fail(Reason::BadToken),
        Err(e) => {
            // The answer keeps the seed's reason; the log says why (a JWKS TLS failure included).
            tracing::info!(integrator = integrator.id, reason = %Report(&e), "enlistment token refused");
            return Answer::fail(Reason::BadToken);
        }
    }
    let now = sim.clock.now();
    if let Some(jid) = sim.store.jid_by_user(req.integrator, &req.user_identifier) {
        // Re-enlisting is idempotent: same login, keys replaced (rotation).
        let mut identity_changed = false;
        sim.store.with(&jid, &mut |a| {
            a.last_active = now;
            let Some(device) = a.primary_mut() else { return };
            identity_changed = device.keys.identity != req.identity;
            device.noise_public = req.authkey;
            device.keys.registration_id = req.registration_id;
            device.keys.identity = req.identity;
            device.keys.signed_prekey = req.signed_prekey.clone();
            if identity_changed {
                device.keys.one_time.clear();
            }
        });
        if identity_changed {
            Handler { sim, jid: &jid, device: 0 }.announce_identity_change();
        }
        return Answer::Ok { login: jid, status: "ok" };
    }
    let account_id = sim.next_account_id();
    let jid = format!("{}-{}@interop", req.integrator, account_id);
    let keys = KeyBundle {
        registration_id: req.registration_id,
        identity: req.identity,
        signed_prekey: req.signed_prekey,
        one_time: Default::default(),
    };
    let kind = AccountKind::Interop { integrator: req.integrator, user_identifier: req.user_identifier };
    let account = Account::new(jid.clone(), account_id, kind, 0, Device::new(req.authkey, keys), now);
    if sim.store.put(account).is_err() {
        return Answer::fail(Reason::Overloaded);
    }
    sim.totals.enlistments.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Answer::Ok { login: jid, status: "ok" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, String)]) -> Vec<u8> {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k, v);
        }
        s.finish().into_bytes()
    }

    fn good() -> Vec<(&'static str, String)> {
        let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        vec![
            ("authkey", e(&[1; 32])),
            ("e_keytype", e(&[5])),
            ("e_regid", e(&[0, 0, 1, 2])),
            ("e_ident", e(&[2; 32])),
            ("e_skey_id", e(&[0, 0, 7])),
            ("e_skey_val", e(&[3; 32])),
            ("e_skey_sig", e(&[4; 64])),
            ("integrator_id", "1".into()),
            ("user_identifier", "alice".into()),
            ("token", "eyJ.x.y".into()),
        ]
    }

    #[test]
    fn parses_the_seed_arguments() {
        let r = parse(&form(&good())).unwrap();
        assert_eq!((r.integrator, r.user_identifier.as_str(), r.registration_id), (1, "alice", 258));
        assert_eq!(r.signed_prekey.id, 7);
    }

    #[test]
    fn each_bad_argument_has_its_reason() {
        let with = |k: &str, v: &str| {
            let mut f = good();
            f.retain(|(key, _)| *key != k);
            if !v.is_empty() {
                f.push((Box::leak(k.to_owned().into_boxed_str()), v.to_owned()));
            }
            parse(&form(&f)).unwrap_err()
        };
        assert_eq!(with("integrator_id", "1000"), Reason::BadIntegrator);
        assert_eq!(with("integrator_id", "x"), Reason::BadIntegrator);
        assert_eq!(with("user_identifier", ""), Reason::BadUserIdentifier);
        assert_eq!(with("user_identifier", &"a".repeat(41)), Reason::BadUserIdentifier);
        assert_eq!(with("token", ""), Reason::BadToken);
        assert_eq!(with("token", &"t".repeat(4097)), Reason::BadToken);
        assert_eq!(with("authkey", "AAAA"), Reason::BadParam);
        assert_eq!(with("e_keytype", "Bg"), Reason::BadParam);
        assert_eq!(with("e_skey_sig", "!!"), Reason::BadParam);
        // 40 characters of 4-byte UTF-8 are fine.
        assert!(
            parse(&form(
                &[good(), vec![]]
                    .concat()
                    .into_iter()
                    .map(|(k, v)| if k == "user_identifier" { (k, "🙂".repeat(40)) } else { (k, v) })
                    .collect::<Vec<_>>()
            ))
            .is_ok()
        );
    }
}
