//! Claim sets used on both sides of the interop flow.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch (0 if the clock is before 1970, which only a broken host has).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Claims of the token a Partner server issues to its user, which the user's client presents to
/// WhatsApp at enlistment and at chat login (seed Part 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerClaims {
    /// The Partner server that issued the token.
    pub iss: String,
    /// Who the token is for (WhatsApp).
    pub aud: String,
    /// The Partner's user-visible identifier of the user (`user_identifier`, 1-40 UTF-8 chars).
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds.
    pub iat: u64,
    /// The interop account JID (e.g. `1-10853634039893@interop`) once the user is enlisted; the proxy
    /// binds a login to the account it claims through this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_account: Option<String>,
}

impl PartnerClaims {
    /// Claims issued now, valid for `ttl`.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        user_identifier: impl Into<String>,
        ttl: Duration,
        wa_account: Option<String>,
    ) -> Self {
        let iat = unix_now();
        Self {
            iss: issuer.into(),
            aud: audience.into(),
            sub: user_identifier.into(),
            exp: iat.saturating_add(ttl.as_secs()),
            iat,
            wa_account,
        }
    }
}

/// Claims of the token WhatsApp (here: the chatd simulator) sends with a push to the Partner's
/// `/push` endpoint (seed 3.2.2).
///
/// `sub` is optional because the seed's sample push token carries none (`iss`, `aud`, `iat`, `exp`
/// only); the simulator sets it to the pushed user, and a receiver that gets one should check that it
/// matches the body's `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushClaims {
    /// WhatsApp's issuer (`"WHATSAPP"` in the seed's sample).
    pub iss: String,
    /// The Partner (its base URL in the seed's sample).
    pub aud: String,
    /// The pushed user's `user_identifier`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issue time, Unix seconds.
    pub iat: u64,
}

impl PushClaims {
    /// Claims issued now, valid for `ttl`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, sub: Option<String>, ttl: Duration) -> Self {
        let iat = unix_now();
        Self { iss: issuer.into(), aud: audience.into(), sub, exp: iat.saturating_add(ttl.as_secs()), iat }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_claims_are_omitted_and_accepted_missing() {
        let c = PushClaims::new("WHATSAPP", "https://integrator.com", None, Duration::from_secs(60));
        let json = serde_json::to_value(&c).unwrap_or_default();
        assert!(json.get("sub").is_none());
        let sample = r#"{"iss":"WHATSAPP","aud":"https://integrator.com","iat":1688669232,"exp":1688672832}"#;
        let parsed: PushClaims = serde_json::from_str(sample).expect("seed sample parses");
        assert_eq!(parsed.sub, None);

        let p = PartnerClaims::new("i", "whatsapp", "alice", Duration::from_secs(10), None);
        assert_eq!(p.exp - p.iat, 10);
        let json = serde_json::to_value(&p).unwrap_or_default();
        assert!(json.get("wa_account").is_none());
    }
}
