//! The token check against a real JWKS server on loopback: the cache of verified tokens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge::auth::{AuthConfig, AuthError, Authenticator, TokenCheck};
use jwks::{JwksServer, PartnerClaims, RunningJwksServer, SigningKeys, VerifierConfig, VerifyError, unix_now};
use wire::InteropAccount;
use wire::login::Login;
use wire::noise::StaticKeypair;
use zeroize::Zeroizing;

const ISS: &str = "http://partner.test";
const AUD: &str = "whatsapp";

async fn serve(keys: &Arc<SigningKeys>) -> RunningJwksServer {
    JwksServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), "/jwks", keys.clone()).await.expect("JWKS server")
}

fn authenticator(server: &RunningJwksServer, refresh: Duration, entries: usize) -> Authenticator {
    Authenticator::new(AuthConfig {
        jwks_url: server.url(),
        issuer: ISS.into(),
        audience: AUD.into(),
        account_claim: "wa_account".into(),
        verifier: VerifierConfig {
            refresh_interval: refresh,
            min_refetch_interval: Duration::from_millis(1),
            ..VerifierConfig::default()
        },
        token_cache_entries: entries,
    })
    .expect("authenticator")
}

fn account(number: u64) -> InteropAccount {
    InteropAccount::parse(&format!("1-{number}@interop")).expect("account")
}

/// A token for `number`, expiring `ttl_secs` from now (negative: in the past).
fn token(keys: &SigningKeys, number: u64, ttl_secs: i64) -> String {
    let mut claims = PartnerClaims::new(ISS, AUD, "user", Duration::ZERO, Some(format!("1-{number}@interop")));
    claims.exp = unix_now().saturating_add_signed(ttl_secs);
    keys.sign(&claims).expect("sign")
}

fn login(number: u64, token: &str) -> Login {
    Login {
        account: account(number),
        static_key: StaticKeypair::generate().expect("key"),
        client_payload: Zeroizing::new(Vec::new()),
        token: Zeroizing::new(token.to_owned()),
    }
}

#[tokio::test]
async fn a_token_reused_within_its_lifetime_is_answered_from_the_cache() {
    let keys = Arc::new(SigningKeys::generate().expect("keys"));
    let server = serve(&keys).await;
    let auth = authenticator(&server, Duration::from_secs(300), 16);
    let token = token(&keys, 42, 300);
    auth.check(&login(42, &token)).await.expect("first login verifies");
    assert_eq!((auth.token_cache_hits(), auth.token_cache_len()), (0, 1));
    for _ in 0..3 {
        auth.check(&login(42, &token)).await.expect("reconnect");
    }
    assert_eq!(auth.token_cache_hits(), 3);
    // A hit still binds only the account the token named.
    let other = auth.check(&login(43, &token)).await;
    assert!(matches!(other, Err(AuthError::NotBound { .. })), "{other:?}");
    assert_eq!(auth.token_cache_hits(), 4);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn an_expired_token_is_refused_and_one_in_its_leeway_is_never_cached() {
    let keys = Arc::new(SigningKeys::generate().expect("keys"));
    let server = serve(&keys).await;
    let auth = authenticator(&server, Duration::from_secs(300), 16);
    // Past `exp` but within the verifier's 60 s leeway: accepted by full verification each time,
    // never answered from the cache.
    let in_leeway = token(&keys, 42, -10);
    for _ in 0..2 {
        auth.check(&login(42, &in_leeway)).await.expect("within the leeway");
    }
    assert_eq!((auth.token_cache_hits(), auth.token_cache_len()), (0, 0));
    let expired = token(&keys, 42, -120);
    let refused = auth.check(&login(42, &expired)).await;
    assert!(matches!(refused, Err(AuthError::Token(VerifyError::Expired))), "{refused:?}");
}

#[tokio::test]
async fn a_cached_token_expires_with_its_exp() {
    let keys = Arc::new(SigningKeys::generate().expect("keys"));
    let server = serve(&keys).await;
    let auth = authenticator(&server, Duration::from_secs(300), 16);
    let short = token(&keys, 42, 1);
    auth.check(&login(42, &short)).await.expect("verifies");
    // `exp` is in whole seconds and the cache answers only before it: at most 2 s from now.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    auth.check(&login(42, &short)).await.expect("still in the leeway, verified again");
    assert_eq!(auth.token_cache_hits(), 0);
}

#[tokio::test]
async fn a_key_set_refetch_empties_the_cache_and_a_revoked_key_stops_working() {
    // One published key: rotating revokes the old one.
    let keys = Arc::new(SigningKeys::with_max_published(1).expect("keys"));
    let server = serve(&keys).await;
    let auth = authenticator(&server, Duration::from_millis(300), 16);
    let old = token(&keys, 42, 300);
    auth.check(&login(42, &old)).await.expect("verifies");
    auth.check(&login(42, &old)).await.expect("cached");
    assert_eq!(auth.token_cache_hits(), 1);

    keys.rotate().expect("rotate");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let refused = auth.check(&login(42, &old)).await;
    assert!(matches!(refused, Err(AuthError::Token(VerifyError::UnknownKid { .. }))), "{refused:?}");
    assert_eq!(auth.token_cache_hits(), 1);
    assert_eq!(auth.token_cache_len(), 0);
    // Tokens under the new key are cached again.
    let new = token(&keys, 42, 300);
    auth.check(&login(42, &new)).await.expect("verifies");
    auth.check(&login(42, &new)).await.expect("cached");
    assert_eq!(auth.token_cache_hits(), 2);
}

#[tokio::test]
async fn hostile_tokens_never_enter_the_cache_and_errors_never_show_them() {
    let keys = Arc::new(SigningKeys::generate().expect("keys"));
    let server = serve(&keys).await;
    let auth = authenticator(&server, Duration::from_secs(300), 64);
    let good = token(&keys, 42, 300);
    let (header, rest) = good.split_once('.').expect("jwt");
    for i in 0..100_000u32 {
        // Well-formed header with the real kid, junk claims and signature: parsed, then refused.
        let bad = format!("{header}.{rest}{i:08}");
        let error = auth.check(&login(42, &bad)).await.expect_err("refused");
        if i % 10_000 == 0 {
            for shown in [error.to_string(), format!("{error:?}"), error_report::Report(&error).to_string()] {
                assert!(!shown.contains(&bad) && !shown.contains(rest), "error shows the token: {shown}");
            }
        }
    }
    assert_eq!(auth.token_cache_len(), 0);
    // Bounded under many valid tokens too.
    for number in 0..200 {
        auth.check(&login(number, &token(&keys, number, 300))).await.expect("verifies");
        assert!(auth.token_cache_len() <= 64);
    }
    assert_eq!(auth.token_cache_len(), 64);
}

#[tokio::test]
async fn capacity_zero_turns_the_cache_off() {
    let keys = Arc::new(SigningKeys::generate().expect("keys"));
    let server = serve(&keys).await;
    let auth = authenticator(&server, Duration::from_secs(300), 0);
    let token = token(&keys, 42, 300);
    for _ in 0..2 {
        auth.check(&login(42, &token)).await.expect("verifies");
    }
    assert_eq!((auth.token_cache_hits(), auth.token_cache_len()), (0, 0));
}
