//! Deciding a login from the `ClientPayload` and the client's authenticated static key.

use wire::proto::{ClientPayload, Product};

use crate::account::AccountKind;
use crate::auth::TokenVerifier;
use crate::config::parse_version;
use crate::sim::Sim;

/// An accepted login.
#[derive(Debug, Clone)]
pub struct LoginOk {
    pub jid: String,
    /// The device that logged in: 0 for Partner users, the payload's `device` for WhatsApp-side
    /// users.
    pub device: u16,
}

/// A refused login: the `<failure reason>` code, and the account it named, if any, so the
/// observation API counts the attempt against it.
#[derive(Debug, Clone)]
pub struct LoginFailure {
    pub reason: u16,
    pub account: Option<String>,
    pub why: String,
}

fn fail(reason: u16, account: Option<String>, why: impl Into<String>) -> LoginFailure {
    LoginFailure { reason, account, why: why.into() }
}

/// The account a payload names, before any check: what the observation API counts.
pub fn claimed_account(sim: &Sim, payload: &ClientPayload) -> Option<String> {
    if payload.product == Some(Product::Interop as i32) {
        payload.interop_data.as_ref()?.account_id.and_then(|id| sim.store.jid_by_account_id(id))
    } else {
        payload.username.map(|phone| format!("{phone}@s.whatsapp.net"))
    }
}

/// Checks a login: protocol version (405), then the account, the device, its static key and, for
/// Partner users, the token (401). Each device of a WhatsApp-side account logs in with its own
/// static key; a Partner account has one device, 0.
pub async fn check(
    sim: &Sim,
    verifier: &dyn TokenVerifier,
    payload: &ClientPayload,
    client_static: &[u8; 32],
) -> Result<LoginOk, LoginFailure> {
    let account = claimed_account(sim, payload);
    let min = parse_version(&sim.config.chat.min_app_version).unwrap_or((0, 0, 0));
    let version = payload
        .user_agent
        .as_ref()
        .and_then(|ua| ua.app_version.as_ref())
        .map(|v| (v.primary.unwrap_or(0), v.secondary.unwrap_or(0), v.tertiary.unwrap_or(0)))
        .unwrap_or((0, 0, 0));
    if version < min {
        return Err(fail(405, account, format!("app version {version:?} is older than {min:?}")));
    }
    let Some(jid) = account.clone() else {
        return Err(fail(401, None, "no such account"));
    };
    let device = match payload.product {
        Some(p) if p == Product::Interop as i32 => 0,
        _ => payload.device.unwrap_or(0),
    };
    let Ok(device) = u16::try_from(device) else {
        return Err(fail(401, account, "no such device"));
    };
    let mut found = None;
    sim.store.with(&jid, &mut |a| {
        let device = match a.kind {
            AccountKind::Interop { .. } => a.devices.get(&a.primary()),
            AccountKind::WhatsApp { .. } => a.devices.get(&device),
        };
        found = Some((a.kind.clone(), device.map(|d| d.noise_public)));
    });
    let Some((kind, noise_public)) = found else {
        return Err(fail(401, account, "no such account"));
    };
    let Some(noise_public) = noise_public else {
        return Err(fail(401, account, format!("the account has no device {device}")));
    };
    if &noise_public != client_static {
        return Err(fail(401, account, "static key is not the account's"));
    }
    match kind {
        AccountKind::Interop { integrator, user_identifier } => {
            if payload.product != Some(Product::Interop as i32) {
                return Err(fail(401, account, "Partner accounts log in with product INTEROP"));
            }
            let Some(cfg) = sim.config.integrators.iter().find(|i| i.id == integrator) else {
                return Err(fail(401, account, "integrator no longer configured"));
            };
            let token = payload.interop_data.as_ref().and_then(|d| d.token.as_deref()).unwrap_or_default();
            let token = std::str::from_utf8(token).map_err(|_| fail(401, account.clone(), "token is not UTF-8"))?;
            let verified = verifier.verify(cfg, token).await.map_err(|e| fail(401, account.clone(), e.0))?;
            if verified.subject != user_identifier {
                return Err(fail(401, account, "token names another user"));
            }
        }
        AccountKind::WhatsApp { .. } => {
            if payload.product.is_some_and(|p| p != Product::Whatsapp as i32) {
                return Err(fail(401, account, "WhatsApp accounts log in with product WHATSAPP"));
            }
        }
    }
    Ok(LoginOk { jid, device })
}
