//! JwksVerifier against a real JWKS server on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jwks::{
    Expectations, FetchError, JwksServer, JwksVerifier, PartnerClaims, RunningJwksServer, SigningKeys, VerifierConfig,
    VerifyError, unix_now,
};

const ISS: &str = "http://partner.test";
const AUD: &str = "whatsapp";
const JWKS_PATH: &str = "/.well-known/oauth/openid/jwks";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn claims(sub: &str) -> PartnerClaims {
    PartnerClaims::new(ISS, AUD, sub, Duration::from_secs(300), Some("1-42@interop".into()))
}

fn expect() -> Expectations {
    Expectations::new(ISS, AUD)
}

fn config(min_refetch: Duration) -> VerifierConfig {
    VerifierConfig {
        min_refetch_interval: min_refetch,
        fetch_timeout: Duration::from_secs(2),
        ..VerifierConfig::default()
    }
}

async fn serve(keys: &Arc<SigningKeys>) -> RunningJwksServer {
    JwksServer::start(loopback(), JWKS_PATH, keys.clone()).await.expect("start JWKS server")
}

/// Bounded test time: every test body runs under this.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("test timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_then_verify() {
    within(async {
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let server = serve(&keys).await;
        let verifier = JwksVerifier::new(&server.url(), VerifierConfig::default()).expect("verifier");

        let token = keys.sign(&claims("alice")).expect("sign");
        let got: PartnerClaims = verifier.verify(&token, &expect()).await.expect("verifies");
        assert_eq!(got.sub, "alice");
        assert_eq!(got.wa_account.as_deref(), Some("1-42@interop"));

        // Cached: a second verification does not fetch again.
        let again: PartnerClaims = verifier.verify(&token, &expect()).await.expect("verifies");
        assert_eq!(again, got);
        assert_eq!(server.requests(), 1);
        let stats = verifier.stats();
        assert_eq!((stats.refreshes, stats.refresh_failures, stats.keys), (1, 0, 1));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_use_fetches_once() {
    within(async {
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let server = serve(&keys).await;
        let verifier = JwksVerifier::new(&server.url(), VerifierConfig::default()).expect("verifier");
        let token = keys.sign(&claims("bob")).expect("sign");
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (v, t) = (verifier.clone(), token.clone());
            tasks.spawn(async move { v.verify::<PartnerClaims>(&t, &expect()).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.expect("task").expect("verifies").sub, "bob");
        }
        assert_eq!(server.requests(), 1);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_new_kid_refetched_old_kid_verifies_while_published() {
    within(async {
        let min_refetch = Duration::from_millis(200);
        let keys = Arc::new(SigningKeys::with_max_published(2).expect("keygen"));
        let server = serve(&keys).await;
        let verifier = JwksVerifier::new(&server.url(), config(min_refetch)).expect("verifier");

        let old = keys.sign(&claims("alice")).expect("sign");
        verifier.verify::<PartnerClaims>(&old, &expect()).await.expect("old key verifies");

        keys.rotate().expect("rotate");
        let new = keys.sign(&claims("alice")).expect("sign");
        tokio::time::sleep(min_refetch + Duration::from_millis(50)).await;
        verifier.verify::<PartnerClaims>(&new, &expect()).await.expect("new kid verifies after refetch");
        assert_eq!(server.requests(), 2);
        assert_eq!(verifier.stats().unknown_kid_refetches, 1);
        // The previous key is still published: its tokens still verify, from the cache.
        verifier.verify::<PartnerClaims>(&old, &expect()).await.expect("old kid still verifies");
        assert_eq!(server.requests(), 2);

        // Two more rotations push the first key out of the published set (max 2).
        keys.rotate().expect("rotate");
        let newest = keys.sign(&claims("alice")).expect("sign");
        tokio::time::sleep(min_refetch + Duration::from_millis(50)).await;
        verifier.verify::<PartnerClaims>(&newest, &expect()).await.expect("newest verifies");
        let r = verifier.verify::<PartnerClaims>(&old, &expect()).await;
        assert!(matches!(r, Err(VerifyError::UnknownKid { .. })), "{r:?}");
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetch_is_rate_limited() {
    within(async {
        // Generous, so the 100 verifications of a round surely fit in one interval on a busy machine.
        let min_refetch = Duration::from_millis(800);
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let foreign = SigningKeys::generate().expect("keygen");
        let server = serve(&keys).await;
        let verifier = JwksVerifier::new(&server.url(), config(min_refetch)).expect("verifier");
        let junk = foreign.sign(&claims("mallory")).expect("sign");

        // First use: the initial fetch just happened, so the unknown kid does not refetch at once.
        let r = verifier.verify::<PartnerClaims>(&junk, &expect()).await;
        assert!(matches!(r, Err(VerifyError::UnknownKid { .. })), "{r:?}");
        assert_eq!(server.requests(), 1);

        for round in 1..=2u64 {
            tokio::time::sleep(min_refetch + Duration::from_millis(50)).await;
            // A burst of junk tokens, concurrent and then sequential: one refetch per interval.
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..50 {
                let (v, t) = (verifier.clone(), junk.clone());
                tasks.spawn(async move { v.verify::<PartnerClaims>(&t, &expect()).await });
            }
            while let Some(r) = tasks.join_next().await {
                assert!(matches!(r.expect("task"), Err(VerifyError::UnknownKid { .. })));
            }
            for _ in 0..50 {
                let r = verifier.verify::<PartnerClaims>(&junk, &expect()).await;
                assert!(matches!(r, Err(VerifyError::UnknownKid { .. })));
            }
            assert_eq!(server.requests(), 1 + round, "one refetch per min_refetch_interval");
            assert_eq!(verifier.stats().unknown_kid_refetches, round);
        }
        let stats = verifier.stats();
        assert_eq!(stats.refetches_suppressed, 1 + 2 * 99);
        // Valid tokens are unaffected by the junk.
        let good = keys.sign(&claims("alice")).expect("sign");
        verifier.verify::<PartnerClaims>(&good, &expect()).await.expect("verifies");
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_and_signature_failures_have_their_variants() {
    within(async {
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let server = serve(&keys).await;
        let verifier = JwksVerifier::new(&server.url(), VerifierConfig::default()).expect("verifier");
        let verify = |token: String| {
            let v = verifier.clone();
            async move { v.verify::<PartnerClaims>(&token, &expect()).await }
        };

        let mut expired = claims("alice");
        expired.iat = unix_now() - 3600;
        expired.exp = unix_now() - 600;
        let r = verify(keys.sign(&expired).expect("sign")).await;
        assert!(matches!(r, Err(VerifyError::Expired)), "{r:?}");

        let mut wrong_iss = claims("alice");
        wrong_iss.iss = "http://someone-else.test".into();
        let r = verify(keys.sign(&wrong_iss).expect("sign")).await;
        assert!(matches!(r, Err(VerifyError::WrongIssuer { .. })), "{r:?}");

        let mut wrong_aud = claims("alice");
        wrong_aud.aud = "not-whatsapp".into();
        let r = verify(keys.sign(&wrong_aud).expect("sign")).await;
        assert!(matches!(r, Err(VerifyError::WrongAudience { .. })), "{r:?}");

        let mut not_yet = serde_json::to_value(claims("alice")).expect("json");
        not_yet["nbf"] = serde_json::json!(unix_now() + 3600);
        let r = verify(keys.sign(&not_yet).expect("sign")).await;
        assert!(matches!(r, Err(VerifyError::NotYetValid)), "{r:?}");

        // Flip one character in the middle of the signature.
        let token = keys.sign(&claims("alice")).expect("sign");
        let sig_start = token.rfind('.').expect("three parts") + 1;
        let mut bytes = token.clone().into_bytes();
        let i = sig_start + (bytes.len() - sig_start) / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        let r = verify(tampered).await;
        assert!(matches!(r, Err(VerifyError::BadSignature { .. })), "{r:?}");

        // Swap in another payload under the original signature.
        let parts: Vec<&str> = token.split('.').collect();
        let other = keys.sign(&claims("mallory")).expect("sign");
        let other_payload = other.split('.').nth(1).expect("payload");
        let r = verify(format!("{}.{}.{}", parts[0], other_payload, parts[2])).await;
        assert!(matches!(r, Err(VerifyError::BadSignature { .. })), "{r:?}");

        // Missing required claim.
        let r = verify(keys.sign(&serde_json::json!({"iss": ISS, "aud": AUD, "sub": "a"})).expect("sign")).await;
        assert!(matches!(r, Err(VerifyError::Malformed { .. })), "{r:?}");

        // Errors never echo the token (its signature is what makes it a credential).
        let expired_token = keys.sign(&expired).expect("sign");
        let signature = expired_token.rsplit('.').next().expect("signature").to_owned();
        let err = verify(expired_token).await.expect_err("expired");
        assert!(!format!("{err} {err:?}").contains(&signature[..40]));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_gives_unavailable_then_recovers() {
    within(async {
        let min_refetch = Duration::from_millis(300);
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let server = serve(&keys).await;
        let addr = server.local_addr();
        let url = server.url();
        server.shutdown().await;

        let verifier = JwksVerifier::new(&url, config(min_refetch)).expect("verifier");
        let token = keys.sign(&claims("alice")).expect("sign");
        let r = verifier.verify::<PartnerClaims>(&token, &expect()).await;
        match r {
            Err(VerifyError::JwksUnavailable { cause, .. }) => assert!(matches!(*cause, FetchError::Request(_))),
            other => panic!("expected JwksUnavailable, got {other:?}"),
        }
        // Retries inside min_refetch_interval do not hit the network.
        let r = verifier.verify::<PartnerClaims>(&token, &expect()).await;
        assert!(matches!(r, Err(VerifyError::JwksUnavailable { .. })), "{r:?}");
        let stats = verifier.stats();
        assert_eq!((stats.refresh_failures, stats.refetches_suppressed), (1, 1));

        let server = JwksServer::start(addr, JWKS_PATH, keys.clone()).await.expect("restart on the same port");
        tokio::time::sleep(min_refetch + Duration::from_millis(50)).await;
        verifier.verify::<PartnerClaims>(&token, &expect()).await.expect("recovers");
        assert_eq!(server.requests(), 1);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_set_is_served_while_refresh_fails() {
    within(async {
        let keys = Arc::new(SigningKeys::generate().expect("keygen"));
        let server = serve(&keys).await;
        let cfg = VerifierConfig {
            refresh_interval: Duration::from_millis(300),
            min_refetch_interval: Duration::from_millis(100),
            max_stale: Duration::from_millis(1500),
            ..config(Duration::from_millis(100))
        };
        let verifier = JwksVerifier::new(&server.url(), cfg).expect("verifier");
        let token = keys.sign(&claims("alice")).expect("sign");
        verifier.verify::<PartnerClaims>(&token, &expect()).await.expect("verifies");
        server.shutdown().await;

        tokio::time::sleep(Duration::from_millis(400)).await;
        verifier.verify::<PartnerClaims>(&token, &expect()).await.expect("stale set still used");
        assert_eq!(verifier.stats().refresh_failures, 1);

        // Past refresh_interval + max_stale the cached set is no longer trusted.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = verifier.verify::<PartnerClaims>(&token, &expect()).await;
        assert!(matches!(r, Err(VerifyError::JwksUnavailable { .. })), "{r:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_jwks_are_bounded() {
    within(async {
        // 16 published keys make a JWKS of several KiB; allow 1 KiB.
        let keys = Arc::new(SigningKeys::with_max_published(16).expect("keygen"));
        for _ in 0..15 {
            keys.rotate().expect("rotate");
        }
        let server = serve(&keys).await;
        let cfg = VerifierConfig { max_response_bytes: 1024, ..config(Duration::from_millis(100)) };
        let verifier = JwksVerifier::new(&server.url(), cfg).expect("verifier");
        let token = keys.sign(&claims("alice")).expect("sign");
        match verifier.verify::<PartnerClaims>(&token, &expect()).await {
            Err(VerifyError::JwksUnavailable { cause, .. }) => {
                assert!(matches!(*cause, FetchError::TooLarge { limit: 1024 }), "{cause:?}")
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        server.shutdown().await;

        // A server that accepts and never answers: the fetch times out.
        let silent = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
        let url = format!("http://{}/jwks", silent.local_addr().expect("addr"));
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let cfg = VerifierConfig { fetch_timeout: Duration::from_millis(300), ..config(Duration::from_millis(100)) };
        let verifier = JwksVerifier::new(&url, cfg).expect("verifier");
        let started = std::time::Instant::now();
        match verifier.verify::<PartnerClaims>(&token, &expect()).await {
            Err(VerifyError::JwksUnavailable { cause, .. }) => assert!(matches!(*cause, FetchError::Timeout(_))),
            other => panic!("expected Timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        hold.abort();
    })
    .await;
}
